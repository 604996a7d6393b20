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
import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
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

log = logging.getLogger("restore_core.io.shards")

#: Internal columns the job adds to rows while they are in flight; never written to shards.
SHARD_COL = "__shard"
ROW_COL = "__row"
INTERNAL_PREFIX = "__"

DATA_DIR = "data"
IMAGES_DIR = "images"  # output.format images: the restored files, in the input's folder tree
TMP_DIR = "_tmp"
PLAN_FILE = "_plan.json"
MANIFEST_FILE = "_manifest.json"
PLAN_WRITER = "imrestore restore"  # in _plan.json: the folder's marker
STATS_KEY = b"imrestore.stats"
IMAGES_PER_SHARD = 256  # image folders with rows_per_shard 0: this many files a shard
_PART_RE = re.compile(r"part-(\d{5,})\.parquet$")
_FRAGMENT_RE = re.compile(TMP_DIR + r"/part-\d{5,}/[0-9a-f]{32}\.parquet")

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


# ----------------------------------------------------------------------------- resume fingerprint

#: Config keys (dotted prefixes) that do not change a restored row: where things are, how Ray
#: runs, and the keys whose *content* is fingerprinted instead of the path (see
#: :func:`settings_document`). Everything else - every fit/mask/decode/sr setting, the method,
#: rows_per_shard, limit, and any key added later - is part of the resume fingerprint.
NOT_RESULT_KEYS = (
    "ray",
    "device",
    "output.path",
    "output.overwrite",
    "input.path",
    "bases",
    "sr.model",
    "refiner",
    "only_flagged",
)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): node}


def settings_document(
    config: dict[str, Any], artifacts: dict[str, str], exclude: Sequence[str] = NOT_RESULT_KEYS
) -> dict[str, Any]:
    """What the output depends on, as flat ``{"fit.max_iter": 300, ..., "artifact.bases": hash}``.

    Parameters
    ----------
    config : dict
        The job's config as plain data (``dataclasses.asdict``). Every key is kept unless it
        equals or lies under one of ``exclude``, or is a ``storage_options`` entry (credentials
        and endpoints: where the data is, not what it is).
    artifacts : dict
        Content identities that replace paths: artifact content hashes (``"bases"``,
        ``"sr_model"``, a refiner...), the normalised input location, the ids restored. A new
        learned artifact joins the fingerprint by adding its hash here.
    """
    flat = _flatten(config)
    keep = {
        k: v
        for k, v in flat.items()
        if ".storage_options" not in f".{k}" and not any(k == e or k.startswith(e + ".") for e in exclude)
    }
    keep.update({f"artifact.{name}": value for name, value in artifacts.items()})
    return dict(sorted(keep.items()))


def settings_fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def changed_settings(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The keys whose values differ between two settings documents (sorted)."""
    keys = set(before) | set(now)
    return sorted(k for k in keys if json.dumps(before.get(k), default=str) != json.dumps(now.get(k), default=str))


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
    merged: list[Shard] = []
    if fmt == "images":
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

    @property
    def is_local(self) -> bool:
        protocols = (self.fs.protocol,) if isinstance(self.fs.protocol, str) else tuple(self.fs.protocol)
        return bool({"file", "local"} & set(protocols))

    def makedirs(self, path: str) -> None:
        """Folders exist on local-like filesystems only; on object stores a ``mkdir`` could
        create a bucket, which a job must never do behind the user's back."""
        if self.is_local:
            self.fs.makedirs(path, exist_ok=True)

    def check_writable(self) -> None:
        """Write and delete a probe object: bad credentials or a read-only bucket fail here."""
        probe_writable(self.url, self.storage_options)

    def _relative(self, path: str) -> str:
        return posixpath.relpath(str(path), self.root)

    def _find(self, name: str) -> list[str]:
        p = self.path(name)
        if not self.fs.exists(p):
            return []
        return sorted(str(f) for f in self.fs.find(p))

    def foreign_files(self, plan_doc: dict[str, Any] | None) -> list[str]:
        """Files under ``data/`` and ``_tmp/`` this project did not write (relative paths).

        Ours: the parts ``plan_doc`` names (``data/part-NNNNN.parquet``, and their temporary
        names during an atomic write) and workers' fragments (``_tmp/part-NNNNN/<hex>.parquet``).
        Without a ``_plan.json`` of ours nothing there is ours: the folder was not made by a
        restore run (an input dataset, say), so it is neither resumed nor cleared.
        """
        shards = shards_from_document(plan_doc) if plan_doc is not None and is_plan_document(plan_doc) else []
        parts = {part_name(s.index) for s in shards}
        ours_data = parts | {f".{p}.tmp-" for p in parts}
        out = []
        for f in self._find(DATA_DIR):
            rel = self._relative(f)
            name = rel[len(DATA_DIR) + 1 :]
            if name in parts or (name.startswith(".part-") and name.split(".tmp-")[0] + ".tmp-" in ours_data):
                continue
            out.append(rel)
        for f in self._find(TMP_DIR):
            rel = self._relative(f)
            if not (shards and _FRAGMENT_RE.fullmatch(rel)):
                out.append(rel)
        return out

    def refuse_foreign(self, plan_doc: dict[str, Any] | None, what: str) -> None:
        """A one-line UserError when ``data/`` or ``_tmp/`` hold files this project did not write."""
        foreign = self.foreign_files(plan_doc)
        if foreign:
            more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
            marker = "" if is_plan_document(plan_doc) else f" and no {PLAN_FILE} of a restore run"
            raise UserError(
                f"output.path {self.url} holds files restore did not write ({foreign[0]}{more}{marker}); "
                f"refusing to {what}: choose an empty output folder, or move those files away yourself"
            )

    def _own_images(self) -> tuple[list[str], int]:
        """Files under ``images/`` named by the committed parts' ``output_path`` (output.format
        images), and how many other files are there (a crashed commit's, or someone else's)."""
        files = self._find(IMAGES_DIR)
        if not files:
            return [], 0
        named: set[str] = set()
        for f in self._find(DATA_DIR):
            if not _PART_RE.search(posixpath.basename(f)):
                continue
            with self.fs.open(f, "rb") as fh:
                pf = pq.ParquetFile(fh)
                if "output_path" in pf.schema_arrow.names:
                    named.update(p for p in pf.read(columns=["output_path"]).column(0).to_pylist() if p)
        ours = [f for f in files if self._relative(f) in named]
        return ours, len(files) - len(ours)

    def clear(self, plan_doc: dict[str, Any] | None) -> int:
        """Delete what an earlier run wrote (for --overwrite): the parts and fragments its plan
        names, ``_plan.json`` and ``_manifest.json``; nothing else. Refuses (UserError) when
        ``data/`` or ``_tmp/`` hold anything else. Returns the number of files deleted."""
        self.refuse_foreign(plan_doc, "clear it for --overwrite")
        images, left = self._own_images()
        if left:
            log.warning(
                "--overwrite: %d files under %s/%s/ are not named by any shard; left in place",
                left,
                self.url,
                IMAGES_DIR,
            )
        ours = self._find(DATA_DIR) + self._find(TMP_DIR) + images
        ours += [self.path(n) for n in (MANIFEST_FILE, PLAN_FILE) if self.fs.exists(self.path(n))]
        if ours:
            self.fs.rm(ours)
        for name in (TMP_DIR, IMAGES_DIR, DATA_DIR) if self.is_local else ():  # local folders, if left empty
            top = self.path(name)
            if not self.fs.exists(top):
                continue
            dirs = [
                str(p)
                for p, info in self.fs.find(top, withdirs=True, detail=True).items()
                if info["type"] == "directory"
            ]
            for d in [*sorted(dirs, key=len, reverse=True), top]:
                with contextlib.suppress(OSError):  # not empty: something else lives there
                    self.fs.rmdir(d)
        self.fs.invalidate_cache()
        return len(ours)

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


def write_problem(exc: BaseException) -> str:
    """What a failed write means for the user, in a few words (errno first, then the storage's text)."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text:
        return "the disk is full: free space or point it at a larger disk"
    if code == errno.EROFS:
        return "the filesystem is read-only: point it at a writable folder"
    if "does not exist in our records" in text or "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text:
        return "the S3 credentials were refused: fix storage_options key/secret (or AWS_ACCESS_KEY_ID...)"
    if isinstance(exc, PermissionError) or code in (errno.EACCES, errno.EPERM) or "Forbidden" in text:
        return "permission denied: point it at a folder (or bucket) these credentials may write"
    if isinstance(exc, (NotADirectoryError, FileExistsError)):
        return "a file is in the way of the folder: choose another path"
    if isinstance(exc, FileNotFoundError):
        return "its bucket or parent folder does not exist: create it first"
    return "check the path and its credentials"


def probe_writable(url: str, storage_options: dict[str, Any] | None = None, key: str = "output.path") -> None:
    """Write and delete a small probe under ``url`` before any work; a UserError naming ``key``,
    the cause and the fix when that fails (read-only folder, full disk, refused credentials)."""
    fs, root = datasets.filesystem(url, storage_options)
    root = root.rstrip("/")
    probe = posixpath.join(root, f"_probe-{uuid.uuid4().hex}")
    local = bool({"file", "local"} & set((fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol))
    created = []  # folders the probe made: removed again, so a run refused later leaves nothing behind
    try:
        if local:
            parent = root
            while parent and not fs.exists(parent) and parent != posixpath.dirname(parent):
                created.append(parent)
                parent = posixpath.dirname(parent)
            fs.makedirs(root, exist_ok=True)
        with fs.open(probe, "wb") as f:
            f.write(b"ok" * 2048)  # a few KiB: a disk with no room at all fails here
        fs.rm(probe)
        for folder in created:
            fs.rmdir(folder)
    except Exception as exc:  # any backend error means the same thing to the user
        first = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise UserError(f"cannot write to {key} {url}: {write_problem(exc)} ({type(exc).__name__}: {first})") from None


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
