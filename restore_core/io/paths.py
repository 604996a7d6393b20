"""Turning row ids into output paths that cannot leave the output root.

Row ids come from the data (for ``input.format: images`` they are paths relative to the input
root), so they are untrusted: ``../../etc/x``, ``/abs/path``, ``s3://other-bucket/key``,
``C:\\x``, NUL bytes or a thousand-character name must never become a write outside the
output folder. Every place that builds a path from an id calls :func:`safe_join` (or
:func:`safe_relpath`); a refused id becomes that row's error, never a write elsewhere.

Pure string work on POSIX-style (``/``) paths, as fsspec uses for every backend.
"""

from __future__ import annotations

import posixpath
import re

#: Longest accepted path component, in UTF-8 bytes (the common filesystem limit).
MAX_COMPONENT_BYTES = 255
#: Longest accepted relative path, in UTF-8 bytes (S3 keys stop at 1024).
MAX_PATH_BYTES = 1000

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # s3:, file:, C: (a drive letter) ...
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UnsafePathError(ValueError):
    """An id that cannot be used as a path under the output root. Per-row: an error row."""


def safe_relpath(row_id: object) -> str:
    """A normalised relative POSIX path for ``row_id``, or :class:`UnsafePathError`.

    Accepted: ids made of ordinary path components, like ``a/b/c.png`` or ``./a//b.png``
    (normalised to ``a/b.png``). Refused: empty ids, absolute paths, URLs and drive letters,
    backslashes (a separator on Windows and in some object-store tools), ``..`` components,
    control characters (NUL included), components over 255 bytes, paths over 1000 bytes.
    """
    rid = str(row_id)
    if not rid.strip():
        raise UnsafePathError("id is empty; cannot be used as an output path")
    shown = repr(rid[:80])
    if _CONTROL.search(rid):
        raise UnsafePathError(f"id {shown} holds control characters; cannot be used as an output path")
    if "\\" in rid:
        raise UnsafePathError(f"id {shown} holds a backslash; use '/' between folders")
    if rid.startswith("/") or _SCHEME.match(rid):
        raise UnsafePathError(f"id {shown} is absolute or a URL; ids must be paths relative to the root")
    parts = [p for p in rid.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafePathError(f"id {shown} climbs out of its folder with '..'")
    if not parts:
        raise UnsafePathError(f"id {shown} names no file")
    for part in parts:
        if len(part.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES:
            raise UnsafePathError(f"id {shown}: a path component is over {MAX_COMPONENT_BYTES} bytes")
    rel = "/".join(parts)
    if len(rel.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise UnsafePathError(f"id {shown} is over {MAX_PATH_BYTES} bytes as a path")
    return rel


def safe_join(root: str, row_id: object, suffix: str = "") -> str:
    """``root/<safe_relpath(row_id)><suffix>``: a path that is always inside ``root``.

    Parameters
    ----------
    root : str
        The output folder (an fsspec URL or a path inside a filesystem); used as given.
    row_id : object
        The row's id (converted with ``str``).
    suffix : str
        Appended to the file name, e.g. ``".png"``; must not contain ``/``.
    """
    if "/" in suffix or "\\" in suffix or _CONTROL.search(suffix):
        raise ValueError(f"suffix {suffix!r} must be a plain file-name ending")
    rel = safe_relpath(row_id) + suffix
    base = root.rstrip("/")
    joined = f"{base}/{rel}" if base else rel
    # Belt and braces: the normalised result must still sit under the root.
    if base and not posixpath.normpath(joined).startswith(posixpath.normpath(base) + "/"):
        raise UnsafePathError(f"id {str(row_id)[:80]!r} would leave the output root")
    return joined
