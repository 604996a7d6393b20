"""Deterministic shard plans, atomic shard commits and the output manifest (pure: no ray).

A restore job's output is a folder (any fsspec URL)::

    data/part-00000.parquet ...   one per shard, committed atomically (temp name, then rename)
    _plan.json                    the shard plan the folder was made with (written first)
    _tmp/part-00000/<uuid>.parquet fragments written by the workers, merged into the shard
    _manifest.json                written last: config, fingerprints, counts, timings, versions

A shard is a fixed slice of the input: one Parquet file, a fixed row range of one Parquet file
(``output.rows_per_shard``), or a fixed run of image files. The plan depends only on the
sorted input listing and the config, so a rerun maps every row to the same shard, skips the
shards already committed and writes the others; nothing is duplicated or lost. Each shard's
row counts travel in its Parquet footer (key ``imrestore.stats``), so the manifest can be
rebuilt from the committed shards alone.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import posixpath
import re
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from restore_core.config import InputConfig
from restore_core.errors import UserError
from restore_core.io import datasets
from restore_core.io.paths import UnsafePathError, safe_join, safe_relpath

#: Internal columns the job adds to rows while they are in flight; never written to shards.
SHARD_COL = "__shard"
ROW_COL = "__row"
INTERNAL_PREFIX = "__"

DATA_DIR = "data"
IMAGES_DIR = "images"  # output.format images: the restored files, in the input's folder tree
TMP_DIR = "_tmp"
PLAN_FILE = "_plan.json"
MANIFEST_FILE = "_manifest.json"
STATS_KEY = b"imrestore.stats"
IMAGES_PER_SHARD = 256  # image folders with rows_per_shard 0: this many files a shard
_PART_RE = re.compile(r"part-(\d{5,})\.parquet$")

#: Types of the columns every shard has, so that shards read together as one table even when a
#: shard has no error at all (an all-null column would otherwise be typed null).
OUTPUT_SCHEMA = {
    "id": pa.string(),
    "image": pa.binary(),
    "status": pa.string(),
    "error": pa.string(),
    "method": pa.string(),
    "mask_source": pa.string(),
    "width": pa.int64(),
    "height": pa.int64(),
    "channels": pa.int64(),
    "dead_fraction_in": pa.float64(),
    "dead_fraction_out": pa.float64(),
    "psnr_in": pa.float64(),
    "psnr_out": pa.float64(),
    "psnr_dead_out": pa.float64(),
    "ssim_in": pa.float64(),
    "ssim_out": pa.float64(),
    "bytes_in": pa.int64(),
    "bytes_out": pa.int64(),
    "seconds": pa.float64(),
}


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


# ----------------------------------------------------------------------------- planning


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
    files = datasets.list_files(input_cfg.path, input_cfg.format, input_cfg.storage_options)
    fs, _ = datasets.filesystem(input_cfg.path, input_cfg.storage_options)
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
    return datasets.parquet_input_schema(icfg.path, icfg.storage_options, icfg.id_column, icfg.image_column)


def plan_document(plan: Sequence[Shard], input_cfg: InputConfig, rows_per_shard: int) -> dict[str, Any]:
    """The JSON that identifies a plan (input URL, format, shards); compared on resume."""
    return {
        "input": input_cfg.path,
        "format": input_cfg.format,
        "rows_per_shard": rows_per_shard,
        "shards": [[s.index, list(s.files), s.row_start, s.row_end] for s in plan],
    }


def plan_fingerprint(doc: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- reading a shard


def read_shard(shard: Shard, input_cfg: InputConfig, schema: pa.Schema | None = None) -> pa.Table:
    """The shard's rows with two extra columns: ``__shard`` (its index) and ``__row`` (the row's
    position in the shard). Parquet: only the row groups overlapping the range are read, then
    cast to ``schema`` (the input's :func:`~restore_core.io.datasets.unified_schema`) when given,
    so that files whose column types differ give rows of one schema."""
    fs, root = datasets.filesystem(input_cfg.path, input_cfg.storage_options)
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
        table = datasets.embed_path_cells(table, image_columns, input_cfg.path, input_cfg.storage_options)
    n = table.num_rows
    table = table.append_column(SHARD_COL, pa.array(np.full(n, shard.index, np.int64)))
    return table.append_column(ROW_COL, pa.array(np.arange(n, dtype=np.int64)))


# ----------------------------------------------------------------------------- output folder


class OutputFolder:
    """The restore job's output folder (an fsspec URL) and its commit protocol."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        if not url:
            raise UserError("output.path is empty: set it to the folder (or s3://bucket/prefix) to write")
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = datasets.filesystem(self.url, self.storage_options)
        self.root = self.root.rstrip("/")

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def makedirs(self, path: str) -> None:
        """Folders exist on local-like filesystems only; on object stores a ``mkdir`` could
        create a bucket, which a job must never do behind the user's back."""
        protocols = (self.fs.protocol,) if isinstance(self.fs.protocol, str) else tuple(self.fs.protocol)
        if {"file", "local"} & set(protocols):
            self.fs.makedirs(path, exist_ok=True)

    def check_writable(self) -> None:
        """Write and delete a probe object: bad credentials or a read-only bucket fail here."""
        probe = self.path(f"_probe-{uuid.uuid4().hex}")
        try:
            self.makedirs(self.root)
            with self.fs.open(probe, "wb") as f:
                f.write(b"ok")
            self.fs.rm(probe)
        except Exception as exc:  # any backend error means the same thing to the user
            raise UserError(f"cannot write to output.path {self.url} ({type(exc).__name__}: {exc})") from None

    def clear(self) -> None:
        """Delete the job's files (data/, images/, _tmp/, _plan.json, _manifest.json) for --overwrite."""
        for name in (DATA_DIR, IMAGES_DIR, TMP_DIR):
            if self.fs.exists(self.path(name)):
                self.fs.rm(self.path(name), recursive=True)
        for name in (PLAN_FILE, MANIFEST_FILE):
            if self.fs.exists(self.path(name)):
                self.fs.rm(self.path(name))
        self.fs.invalidate_cache()

    def clear_tmp(self) -> None:
        """Fragments of a killed run: their shard was never committed, so it is redone."""
        if self.fs.exists(self.path(TMP_DIR)):
            self.fs.rm(self.path(TMP_DIR), recursive=True)
        self.fs.invalidate_cache()

    def committed(self) -> set[int]:
        """Indexes of the shards already committed under ``data/``."""
        self.fs.invalidate_cache()
        data = self.path(DATA_DIR)
        if not self.fs.exists(data):
            return set()
        out = set()
        for p in self.fs.ls(data, detail=False):
            m = _PART_RE.search(posixpath.basename(str(p)))
            if m:
                out.add(int(m.group(1)))
        return out

    def read_json(self, name: str) -> dict[str, Any] | None:
        p = self.path(name)
        if not self.fs.exists(p):
            return None
        with self.fs.open(p, "r") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None

    def write_json(self, name: str, doc: dict[str, Any]) -> None:
        """Write via a temporary name then rename, so a reader never sees half a file."""
        self._atomic_write(self.path(name), json.dumps(doc, indent=2, default=str, allow_nan=True).encode())

    def _atomic_write(self, final: str, payload: bytes) -> None:
        parent = posixpath.dirname(final)
        tmp = posixpath.join(parent, f".{posixpath.basename(final)}.tmp-{uuid.uuid4().hex}")
        self.makedirs(parent)
        with self.fs.open(tmp, "wb") as f:
            f.write(payload)
        self.fs.mv(tmp, final)

    # --------------------------------------------------------------- fragments and commits
    def write_fragment(self, table: pa.Table) -> list[dict[str, Any]]:
        """Write rows (with ``__shard``/``__row``) as one fragment per shard; returns per-shard
        row counts ``[{"shard", "rows"}]`` for the driver's bookkeeping."""
        out = []
        shard_ids = table.column(SHARD_COL).to_numpy()
        for s in np.unique(shard_ids):
            part = table.filter(pa.array(shard_ids == s))
            folder = self.path(TMP_DIR, posixpath.splitext(part_name(int(s)))[0])
            self.makedirs(folder)
            with self.fs.open(posixpath.join(folder, f"{uuid.uuid4().hex}.parquet"), "wb") as f:
                pq.write_table(part, f)
            out.append({"shard": int(s), "rows": part.num_rows})
        return out

    def commit_shard(self, shard: Shard, images: bool = False) -> dict[str, Any]:
        """Merge a shard's fragments in input order, write ``data/part-NNNNN.parquet`` atomically,
        delete the fragments; returns the shard's stats. Refuses a shard with rows missing or
        repeated (a bug or a concurrent writer), so a bad shard is never committed.

        ``images``: the restored images are written as files first (:meth:`write_images`), and
        the Parquet shard, committed last, holds the rest of the row and ``output_path``."""
        folder = self.path(TMP_DIR, posixpath.splitext(shard.name)[0])
        self.fs.invalidate_cache()
        paths = sorted(str(p) for p in self.fs.find(folder) if str(p).endswith(".parquet"))
        tables = []
        for p in paths:
            with self.fs.open(p, "rb") as f:
                tables.append(pq.read_table(f))
        table = concat(tables) if tables else None
        rows = table.column(ROW_COL).to_numpy() if table is not None else np.empty(0, np.int64)
        if table is not None and len(np.unique(rows)) < len(rows):
            # A write task retried after its fragment landed leaves the same rows twice; the
            # copies are the same input row restored the same way, so keep the first.
            _, first = np.unique(rows, return_index=True)
            table = table.take(pa.array(np.sort(first)))
            rows = table.column(ROW_COL).to_numpy()
        if len(rows) != shard.n_rows or len(np.unique(rows)) != shard.n_rows:
            raise RuntimeError(
                f"shard {shard.index}: {len(rows)} rows ({len(np.unique(rows))} distinct) in fragments, "
                f"expected {shard.n_rows}"
            )
        assert table is not None
        table = table.take(pa.array(np.argsort(rows, kind="stable")))
        if images:
            table = self.write_images(table)
        table = finalize(table)
        stats = shard_stats(table)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), STATS_KEY: json.dumps(stats).encode()})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self._atomic_write(self.path(DATA_DIR, shard.name), sink.getvalue().to_pybytes())
        self.fs.rm(folder, recursive=True)
        return {"shard": shard.index, **stats}

    def write_images(self, table: pa.Table) -> pa.Table:
        """Write each ok row's restored image to ``images/<id>`` (each file atomically), the id's
        suffix changed when the image's format is another; return the rows without the image
        bytes and with ``output_path`` (relative to the output folder). An id that cannot be a
        path under ``images/`` makes its row an error row. A rerun rewrites the same files."""
        ids = table.column("id").to_pylist()
        blobs = table.column("image").to_pylist()
        status = table.column("status").to_pylist()
        errors = table.column("error").to_pylist()
        paths: list[str | None] = [None] * table.num_rows
        for i, (row_id, blob) in enumerate(zip(ids, blobs, strict=True)):
            if status[i] != "ok" or not blob:
                continue
            try:
                rel = image_relpath(row_id, blob)
                self._atomic_write(safe_join(self.path(IMAGES_DIR), rel), blob)
            except UnsafePathError as exc:
                status[i], errors[i] = "error", f"UnsafePathError: {exc}"[:500]
                continue
            paths[i] = f"{IMAGES_DIR}/{rel}"
        table = table.drop_columns(["image"])
        for name, values in (("status", status), ("error", errors)):
            table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, pa.string()))
        return table.append_column("output_path", pa.array(paths, pa.string()))

    def shard_stats(self, indexes: Iterable[int]) -> dict[int, dict[str, Any]]:
        """Stats of committed shards from their footers (nothing else is read)."""

        def one(i: int) -> tuple[int, dict[str, Any]]:
            with self.fs.open(self.path(DATA_DIR, part_name(i)), "rb") as f:
                meta = pq.ParquetFile(f).schema_arrow.metadata or {}
            raw = meta.get(STATS_KEY)
            return i, (json.loads(raw) if raw else {})

        idx = sorted(indexes)
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(16, len(idx)))) as pool:
            return dict(pool.map(one, idx))


#: File-name endings of the formats the restore job writes, the first one being the one given.
_SUFFIXES = {"PNG": (".png",), "JPEG": (".jpg", ".jpeg"), "WEBP": (".webp",), "TIFF": (".tif", ".tiff")}


def sniff_format(data: bytes) -> str:
    """PNG, JPEG, WEBP or TIFF from the first bytes; "" for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return ""


def image_relpath(row_id: object, data: bytes) -> str:
    """The restored file's path under ``images/``: the id (a safe relative path), its suffix
    replaced when it does not name the format of ``data`` (``a/b.bmp`` written as PNG: ``a/b.png``)."""
    rel = safe_relpath(row_id)
    suffixes = _SUFFIXES.get(sniff_format(data))
    if suffixes is None or rel.lower().endswith(suffixes):
        return rel
    stem, ext = posixpath.splitext(rel)
    return (stem if ext else rel) + suffixes[0]


def concat(tables: Sequence[pa.Table]) -> pa.Table:
    """Concatenate fragments whose inferred types differ (e.g. an all-null error column)."""
    return pa.concat_tables(tables, promote_options="permissive")


def finalize(table: pa.Table) -> pa.Table:
    """Drop the in-flight columns and give the known columns their fixed types."""
    keep = [c for c in table.column_names if not c.startswith(INTERNAL_PREFIX)]
    table = table.select(keep)
    fields = [pa.field(f.name, OUTPUT_SCHEMA[f.name]) if f.name in OUTPUT_SCHEMA else f for f in table.schema]
    return table.cast(pa.schema(fields))


def shard_stats(table: pa.Table) -> dict[str, Any]:
    """Counts and sums the manifest adds up: rows, ok, error, dead fraction in/out sums over ok rows."""
    status = np.asarray(table.column("status").to_pylist(), dtype=object)
    ok = status == "ok"

    def ok_sum(col: str) -> float:
        if col not in table.column_names:
            return 0.0
        v = table.column(col).to_numpy(zero_copy_only=False).astype(np.float64)[ok]
        v = v[np.isfinite(v)]
        return float(v.sum())

    return {
        "rows": int(table.num_rows),
        "ok": int(ok.sum()),
        "error": int((status == "error").sum()),
        "dead_in_sum": ok_sum("dead_fraction_in"),
        "dead_out_sum": ok_sum("dead_fraction_out"),
        # the dataset's size change, over the rows that were restored
        "bytes_in_sum": ok_sum("bytes_in"),
        "bytes_out_sum": ok_sum("bytes_out"),
    }
