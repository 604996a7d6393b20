"""The deterministic shard plan of an input, and reading one shard's rows (pure: no ray).

A shard is a fixed slice of the input: one Parquet file, a fixed row range of one Parquet file
(``output.rows_per_shard``), or a fixed run of image files. The plan depends only on the
sorted input listing and the config, so a rerun maps every row to the same shard; a resumed
output extends its plan with the input that arrived since (:func:`merge_plans`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import posixpath
from collections.abc import Sequence
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from restore_core.config import InputConfig
from restore_core.errors import UserError
from restore_core.io import datasets

#: Internal columns the job adds to rows while they are in flight; never written to shards.
SHARD_COL = "__shard"
ROW_COL = "__row"
INTERNAL_PREFIX = "__"

PLAN_WRITER = "imrestore restore"  # in _plan.json: the folder's marker
IMAGES_PER_SHARD = 256  # image folders with rows_per_shard 0: this many files a shard


@dataclasses.dataclass(frozen=True)
class Shard:
    """Rows ``[row_start, row_end)`` of ``files`` (one Parquet file, or a run of image files)."""

    index: int
    files: tuple[str, ...]
    row_start: int
    row_end: int

    @property
    def n_rows(self) -> int:
        return self.row_end - self.row_start

    @property
    def name(self) -> str:
        return part_name(self.index)


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def parquet_row_counts(files: Sequence[str], fs: fsspec.AbstractFileSystem, max_workers: int = 16) -> list[int]:
    """Row counts from the Parquet footers (only the footers are read), in parallel threads."""

    def count(path: str) -> int:
        try:
            with fs.open(path, "rb") as f:
                return int(pq.ParquetFile(f).metadata.num_rows)
        except (OSError, pa.ArrowInvalid) as exc:
            raise UserError(f"cannot read the Parquet footer of {path} ({exc}); is it a Parquet file?") from None

    if len(files) <= 1:
        return [count(p) for p in files]
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(max_workers, len(files))) as pool:
        return list(pool.map(count, files))


def plan_shards(input_cfg: InputConfig, rows_per_shard: int = 0) -> list[Shard]:
    """The deterministic shard plan of the input.

    Parquet: one shard per file (``rows_per_shard`` 0), else consecutive ranges of
    ``rows_per_shard`` rows within each file. Image folders: runs of ``rows_per_shard`` (0:
    ``IMAGES_PER_SHARD``) files in sorted order. ``input_cfg.limit`` keeps the first rows.
    Empty Parquet files give no shard. Missing paths are a UserError.
    """
    files = datasets.list_files(input_cfg.location, input_cfg.format)
    fs, _ = input_cfg.location.filesystem()
    shards: list[Shard] = []
    budget = input_cfg.limit or -1
    if input_cfg.format == "images":
        step = rows_per_shard or IMAGES_PER_SHARD
        if budget >= 0:
            files = files[:budget]
        for start in range(0, len(files), step):
            run = tuple(files[start : start + step])
            shards.append(Shard(len(shards), run, 0, len(run)))
        return shards
    for path, n in zip(files, parquet_row_counts(files, fs), strict=True):
        if budget >= 0:
            n = min(n, budget)
            budget -= n
        step = rows_per_shard or max(n, 1)
        for start in range(0, n, step):
            shards.append(Shard(len(shards), (path,), start, min(n, start + step)))
        if budget == 0:
            break
    return shards


def input_schema(input_cfg: InputConfig) -> pa.Schema | None:
    """The unified schema of a Parquet input whose files disagree (None when they agree, and for
    image folders); see :func:`restore_core.io.datasets.parquet_input_schema`."""
    if input_cfg.format != "parquet":
        return None
    icfg = input_cfg
    return datasets.parquet_input_schema(icfg.location, icfg.id_column, icfg.image_column)


def plan_document(plan: Sequence[Shard], input_cfg: InputConfig, rows_per_shard: int) -> dict[str, Any]:
    """The JSON of a plan (what ``_plan.json`` holds besides the settings): its shards."""
    return {
        "writer": PLAN_WRITER,
        "format": input_cfg.format,
        "rows_per_shard": rows_per_shard,
        "shards": [[s.index, list(s.files), s.row_start, s.row_end] for s in plan],
    }


def shards_from_document(doc: dict[str, Any]) -> list[Shard]:
    """The shards a ``_plan.json`` lists (empty when it lists none or is not ours)."""
    try:
        return [Shard(int(i), tuple(str(f) for f in files), int(a), int(b)) for i, files, a, b in doc.get("shards", [])]
    except (TypeError, ValueError):
        return []


def is_plan_document(doc: dict[str, Any] | None) -> bool:
    """True when ``doc`` is a ``_plan.json`` this project wrote (this version or the one before)."""
    return isinstance(doc, dict) and "fingerprint" in doc and isinstance(doc.get("shards"), list)


def merge_plans(
    previous: Sequence[Shard], current: Sequence[Shard], committed: set[int], fmt: str, images_per_shard: int
) -> list[Shard]:
    """Extend a resumed plan with the input that arrived since, keeping every earlier shard's index.

    ``previous`` is the plan the output was started with, ``current`` the plan of today's
    listing. Shards of files already planned keep their index (their committed parts stay valid);
    files that are new get new shards after the last index, planned as ``current`` planned them;
    a planned file that is gone keeps its shard if committed and drops out otherwise. A Parquet
    file whose row ranges changed (rewritten in place) is a UserError: the committed part would
    no longer match it.
    """
    planned = {f for s in previous for f in s.files}
    next_index = max((s.index for s in previous), default=-1) + 1
    now_files = {f for s in current for f in s.files}
    if fmt == "images":
        return _merge_image_plans(previous, current, committed, images_per_shard, planned, next_index, now_files)
    return _merge_parquet_plans(previous, current, committed, planned, next_index, now_files)


def _merge_image_plans(
    previous: Sequence[Shard],
    current: Sequence[Shard],
    committed: set[int],
    images_per_shard: int,
    planned: set[str],
    next_index: int,
    now_files: set[str],
) -> list[Shard]:
    """Image folders: earlier shards keep the files still there; new files make new runs."""
    merged: list[Shard] = []
    for s in previous:
        files = tuple(f for f in s.files if f in now_files)
        if s.index in committed or files == s.files:
            merged.append(s)
        elif files:
            merged.append(Shard(s.index, files, 0, len(files)))
    new = [f for s in current for f in s.files if f not in planned]
    step = max(1, images_per_shard)
    for start in range(0, len(new), step):
        run = tuple(new[start : start + step])
        merged.append(Shard(next_index, run, 0, len(run)))
        next_index += 1
    return merged


def _merge_parquet_plans(
    previous: Sequence[Shard],
    current: Sequence[Shard],
    committed: set[int],
    planned: set[str],
    next_index: int,
    now_files: set[str],
) -> list[Shard]:
    """Parquet: a file planned before must have the same row ranges; new files make new shards."""
    ranges_now: dict[str, list[tuple[int, int]]] = {}
    for s in current:
        ranges_now.setdefault(s.files[0], []).append((s.row_start, s.row_end))
    ranges_before: dict[str, list[tuple[int, int]]] = {}
    for s in previous:
        ranges_before.setdefault(s.files[0], []).append((s.row_start, s.row_end))
    for f, before in ranges_before.items():
        if f in ranges_now and ranges_now[f] != before:
            raise UserError(
                f"input file {f} changed since this output was started (its rows were {before[-1][1]}, now "
                f"{ranges_now[f][-1][1]}): rerun with --overwrite (or output.overwrite: true) to start afresh"
            )
    merged = [s for s in previous if s.files[0] in now_files or s.index in committed]
    for s in current:
        if s.files[0] not in planned:
            merged.append(Shard(next_index, s.files, s.row_start, s.row_end))
            next_index += 1
    return merged


def read_shard(shard: Shard, input_cfg: InputConfig, schema: pa.Schema | None = None) -> pa.Table:
    """The shard's rows with two extra columns: ``__shard`` (its index) and ``__row`` (the row's
    position in the shard). Parquet: only the row groups overlapping the range are read, then
    cast to ``schema`` (the input's :func:`~restore_core.io.datasets.unified_schema`) when given,
    so that files whose column types differ give rows of one schema."""
    fs, root = input_cfg.location.filesystem()
    if input_cfg.format == "images":
        base = root if not fs.isfile(root) else posixpath.dirname(root)
        ids, blobs = [], []
        for path in shard.files:
            with fs.open(path, "rb") as f:
                blobs.append(f.read())
            ids.append(posixpath.relpath(path, base) if path != base else posixpath.basename(path))
        table = pa.table({input_cfg.id_column: pa.array(ids, pa.string()), input_cfg.image_column: blobs})
    else:
        (path,) = shard.files
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            groups, first, offset = [], None, 0
            for g in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(g).num_rows
                if offset + n > shard.row_start and offset < shard.row_end:
                    groups.append(g)
                    first = offset if first is None else first
                offset += n
            table = pf.read_row_groups(groups) if groups else pf.schema_arrow.empty_table()
        start = shard.row_start - (first or 0)
        table = datasets.conform(table.slice(start, shard.n_rows), schema, where=path)
        missing = {input_cfg.id_column, input_cfg.image_column} - set(table.column_names)
        if missing:
            raise UserError(f"{path} has no column(s) {sorted(missing)} (columns: {table.column_names})")
        image_columns = (input_cfg.image_column, input_cfg.reference_column, input_cfg.mask_column)
        table = datasets.embed_path_cells(table, image_columns, input_cfg.location)
    n = table.num_rows
    table = table.append_column(SHARD_COL, pa.array(np.full(n, shard.index, np.int64)))
    return table.append_column(ROW_COL, pa.array(np.arange(n, dtype=np.int64)))
