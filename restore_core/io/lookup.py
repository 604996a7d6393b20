"""A few rows of an input dataset, found by id: the images the quality report shows beside each
other in a duplicate group (only flagged rows keep a thumbnail in the shards).

Image folders are read file by file (an id is the path under ``input.path``). Parquet files are
searched one row group at a time: the id column first, the image column only of the row groups
that hold a wanted id, so memory stays at one row group whatever the dataset's size.
"""

from __future__ import annotations

import posixpath
from collections.abc import Collection
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from restore_core.config import InputConfig
from restore_core.io.paths import UnsafePathError, safe_relpath


def images_in_parquet(path: str, input_cfg: InputConfig, wanted: Collection[str]) -> dict[str, Any]:
    """``{id: image cell}`` for the rows of one Parquet file whose id (as a string) is in ``wanted``."""
    fs, _ = input_cfg.location.filesystem()
    ids = pa.array(sorted(set(wanted)), pa.string())
    found: dict[str, Any] = {}
    with fs.open(path, "rb") as f:
        parquet = pq.ParquetFile(f)
        if not {input_cfg.id_column, input_cfg.image_column} <= set(parquet.schema_arrow.names):
            return found
        for rg in range(parquet.num_row_groups):
            col = parquet.read_row_group(rg, columns=[input_cfg.id_column]).column(0).cast(pa.string())
            hit = pc.is_in(col, value_set=ids)
            if not pc.any(hit).as_py():
                continue
            rows = parquet.read_row_group(rg, columns=[input_cfg.id_column, input_cfg.image_column])
            rows = rows.filter(hit)
            for i, cell in zip(rows.column(0).to_pylist(), rows.column(1).to_pylist(), strict=True):
                found[str(i)] = cell
            if len(found) >= len(ids):
                break
    return found


def images_in_folder(input_cfg: InputConfig, wanted: Collection[str]) -> dict[str, bytes]:
    """``{id: file bytes}`` for ids that are image files under ``input.path``; unreadable ones are left out."""
    fs, root = input_cfg.location.filesystem()
    base = posixpath.dirname(root) if fs.isfile(root) else root
    found: dict[str, bytes] = {}
    for row_id in wanted:
        try:
            found[row_id] = bytes(fs.cat_file(posixpath.join(base, safe_relpath(row_id))))
        except (OSError, UnsafePathError):
            continue  # gone since the run read it: no thumbnail
    return found
