"""Write a benchmark's table into a docs page, between ``<!-- name:begin -->`` and ``<!-- name:end -->``.

One helper for every benchmark's ``--write-docs``: the block is replaced where the markers are,
else appended at the end (under ``heading`` when given); the rest of the page is kept as it is.
"""

from __future__ import annotations

import re
from pathlib import Path


def replace_block(path: str | Path, name: str, text: str, heading: str = "") -> None:
    page = Path(path)
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{text}\n{end}"
    body = page.read_text(encoding="utf-8") if page.exists() else ""
    if begin in body and end in body:
        body = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, body, count=1, flags=re.S)
    else:
        lead = f"{heading}\n\n" if heading else ""
        body = body.rstrip("\n") + ("\n\n" if body else "") + lead + block + "\n"
    page.write_text(body, encoding="utf-8")
