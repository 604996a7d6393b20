"""Reading image datasets through fsspec: Parquet shards or folders of image files.

Paths are fsspec URLs (local folder, ``s3://``, ``gs://``, ``memory://``). Listing is sorted,
so sharding is deterministic.
"""

from __future__ import annotations

import posixpath
from collections.abc import Generator, Iterator
from typing import Any

import fsspec
import pyarrow.parquet as pq

from restore_core.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".ppm", ".pgm")


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and the path inside it for ``url``."""
    try:
        return fsspec.core.url_to_fs(url, **(storage_options or {}))
    except (ImportError, ValueError) as exc:
        raise UserError(f"cannot open {url!r}: {exc}") from None


def list_files(url: str, fmt: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Sorted full paths (without protocol) of the dataset's files; a UserError if none."""
    fs, root = filesystem(url, storage_options)
    if not fs.exists(root):
        raise UserError(f"input path does not exist: {url} (check input.path)")
    suffixes = (".parquet",) if fmt == "parquet" else IMAGE_SUFFIXES
    if fs.isfile(root):
        files = [root]
    else:
        files = [
            p
            for p in fs.find(root)
            if p.lower().endswith(suffixes) and not posixpath.basename(p).startswith((".", "_"))
        ]
    files.sort()
    if not files:
        kind = "*.parquet files" if fmt == "parquet" else "image files"
        raise UserError(f"no {kind} under {url} (check input.path and input.format)")
    return files


def iter_rows(
    url: str,
    fmt: str,
    storage_options: dict[str, Any] | None = None,
    id_column: str = "id",
    image_column: str = "image",
    limit: int = 0,
) -> Iterator[dict[str, Any]]:
    """Rows as dicts with at least ``id`` and ``image`` (bytes), in a deterministic order."""
    fs, root = filesystem(url, storage_options)
    count = 0
    for path in list_files(url, fmt, storage_options):
        if fmt == "images":
            rel = posixpath.relpath(path, root) if path != root else posixpath.basename(path)
            with fs.open(path, "rb") as f:
                rows: Iterator[dict[str, Any]] = iter([{id_column: rel, image_column: f.read()}])
                count = yield from _take(rows, count, limit)
        else:
            # Streamed in small record batches: a caller that wants a few rows reads a few.
            with fs.open(path, "rb") as f:
                parquet = pq.ParquetFile(f)
                names = parquet.schema_arrow.names
                missing = {id_column, image_column} - set(names)
                if missing:
                    raise UserError(f"{path} has no column(s) {sorted(missing)} (columns: {names})")
                rows = (row for batch in parquet.iter_batches(batch_size=64) for row in batch.to_pylist())
                count = yield from _take(rows, count, limit)
        if limit and count >= limit:
            return


def _take(rows: Iterator[dict[str, Any]], count: int, limit: int) -> Generator[dict[str, Any], None, int]:
    for row in rows:
        if limit and count >= limit:
            break
        yield row
        count += 1
    return count
