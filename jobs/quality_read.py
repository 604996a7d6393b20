"""Image folders read by the scoring actors themselves, not by Ray Data read tasks.

For ``input.format: images`` the dataset handed to the quality actor pool holds file paths
only: blocks of about ``ray.batch_size`` rows of ``(id, path)`` made in the driver from the
listing (:func:`path_blocks`). No read task opens a file and no image bytes pass through the
object store; each actor reads its batch's files with fsspec (:class:`FileReader`, one
filesystem per actor; an object store reads a batch's files concurrently) and scores them. A
file that cannot be read (gone since the listing, no permission) becomes an error row
(:func:`mark_unreadable`): every listed file gives exactly one row.

Measured on 2 CPUs (issue #15): Ray Data's ``read_binary_files`` through pyarrow's fsspec
wrapper, its row-conversion stage and the read tasks' share of the CPUs cost more than the
scoring of a 64x64 PNG itself.

The driver path (``quality_score.score_in_driver``) reads the same way, so both score a
vanishing file alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from restore_core.config import InputConfig
from restore_core.io import datasets
from restore_core.io import file_identity as fid

#: The column of full file paths in the path-only blocks (dropped before scoring).
PATH_COLUMN = "__imrestore_path"


def path_blocks(icfg: InputConfig, files: Sequence[str] | None, rows_per_block: int) -> list[pa.Table]:
    """``(id, path)`` tables of ``rows_per_block`` rows for an image folder's ``files`` (None:
    every file listed; ``input.limit``: the first ``limit`` in listing order). Ids are the paths
    relative to ``input.path``, as a full read gives them (``file_identity.image_ids``)."""
    if files is None:
        files = datasets.list_files(icfg.location, icfg.format)
    files = list(files)
    if icfg.limit:
        files = files[: icfg.limit]
    if not files:
        return []
    ids = fid.image_ids(icfg.location, files)
    step = max(1, rows_per_block)
    return [
        pa.table(
            {
                icfg.id_column: pa.array(ids[s : s + step], pa.string()),
                PATH_COLUMN: pa.array(files[s : s + step], pa.string()),
            }
        )
        for s in range(0, len(files), step)
    ]


def path_batches(icfg: InputConfig, files: Sequence[str], rows_per_batch: int) -> list[dict[str, np.ndarray]]:
    """:func:`path_blocks` as numpy batches, as Ray Data hands them to the scoring actor."""
    return [
        {name: _objects(t.column(name).to_pylist()) for name in t.column_names}
        for t in path_blocks(icfg, files, rows_per_batch)
    ]


#: Read errors that belong to the file (vanished, a folder, no permission), not to the store.
_GONE = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


class FileReader:
    """Fills a path-only batch's image column with its files' bytes, in the actor."""

    def __init__(self, icfg: InputConfig) -> None:
        self.icfg = icfg
        self.fs, _ = icfg.location.filesystem()

    def read(self, batch: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[int, str]]:
        """``(batch with the image column instead of the paths, {row: why its file could not be
        read})``; an unreadable file's image cell is None (the scorer makes it an error row)."""
        paths = [str(p) for p in batch[PATH_COLUMN]]
        # cat_ranges, not cat: the paths are taken literally (cat globs names holding [ ] * ?),
        # the results come back in order, and async stores (s3fs, gcsfs) read them concurrently.
        got = self.fs.cat_ranges(paths, None, None, on_error="return") if paths else []
        images: list[Any] = []
        unread: dict[int, str] = {}
        for i, value in enumerate(got):
            if isinstance(value, BaseException) and not isinstance(value, _GONE):
                # A store that fails (timeouts, throttling, an outage past the client's retries)
                # fails the task, which Ray retries; only a file that is not there or not ours
                # to read is the file's own fault, and becomes its error row.
                raise value
            if isinstance(value, bytes | bytearray | memoryview):
                images.append(bytes(value))
            else:
                images.append(None)
                what = f"{type(value).__name__}: {value}" if isinstance(value, BaseException) else repr(value)[:100]
                unread[i] = f"the file could not be read ({what})"[:500]
        out = {k: v for k, v in batch.items() if k != PATH_COLUMN}
        out[self.icfg.image_column] = _objects(images)
        return out, unread


def mark_unreadable(columns: dict[str, np.ndarray], unread: dict[int, str]) -> None:
    """Make the scored rows of unreadable files error rows that say so (in place)."""
    for i, message in unread.items():
        columns["status"][i] = "error"
        columns["error"][i] = message
        columns["decode_error"][i] = 1.0


def _objects(values: list[Any]) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr
