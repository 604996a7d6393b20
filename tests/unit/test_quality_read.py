"""The quality actors' own reading of image folders (jobs/quality_read.py), without Ray: path-only
blocks with the ids a full read gives, and a reader that takes names literally and turns a file
it cannot read into a reason, not an exception."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jobs import quality_read
from restore_core.config import InputConfig
from restore_core.io import file_identity as fid


def _folder(root: Path) -> list[str]:
    names = ["a.png", "img[1].png", "st*r.png", "sub/b.png", "sub/c?.png"]
    for k, n in enumerate(names):
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_bytes(f"bytes of {k}".encode())
    return names


def test_blocks_hold_ids_and_paths_in_listing_order(tmp_path: Path):
    names = _folder(tmp_path)
    icfg = InputConfig(path=str(tmp_path), format="images")
    blocks = quality_read.path_blocks(icfg, None, 2)
    assert [b.num_rows for b in blocks] == [2, 2, 1]
    ids = [i for b in blocks for i in b.column("id").to_pylist()]
    paths = [p for b in blocks for p in b.column(quality_read.PATH_COLUMN).to_pylist()]
    assert ids == sorted(names) == fid.image_ids(icfg.location, paths)
    limited = quality_read.path_blocks(InputConfig(path=str(tmp_path), format="images", limit=3), None, 2)
    assert [i for b in limited for i in b.column("id").to_pylist()] == ids[:3]
    subset = quality_read.path_blocks(icfg, [str(tmp_path / "sub" / "b.png")], 64)
    assert subset[0].column("id").to_pylist() == ["sub/b.png"]  # relative to input.path, not to the subset
    one_file = quality_read.path_blocks(InputConfig(path=str(tmp_path / "a.png"), format="images"), None, 64)
    assert one_file[0].column("id").to_pylist() == ["a.png"]


def test_reader_takes_names_literally_and_reports_what_it_cannot_read(tmp_path: Path):
    _folder(tmp_path)
    icfg = InputConfig(path=str(tmp_path), format="images")
    (batch,) = quality_read.path_batches(icfg, [str(tmp_path / n) for n in ("img[1].png", "st*r.png", "gone.png")], 8)
    out, unread = quality_read.FileReader(icfg).read(batch)
    assert quality_read.PATH_COLUMN not in out and list(out["id"]) == ["img[1].png", "st*r.png", "gone.png"]
    assert list(out["image"][:2]) == [b"bytes of 1", b"bytes of 2"] and out["image"][2] is None
    assert list(unread) == [2] and "could not be read (FileNotFoundError" in unread[2]
    columns = {
        "status": np.array(["ok", "ok", "error"], dtype=object),
        "error": np.array([None, None, "ImageDecodeError: image is missing (null)"], dtype=object),
        "decode_error": np.array([0.0, 0.0, 1.0]),
    }
    quality_read.mark_unreadable(columns, unread)
    assert list(columns["status"]) == ["ok", "ok", "error"] and columns["error"][2] == unread[2]
