"""Atomic shard commits in a restore job's output folder, and its manifest (pure: no ray).

A restore job's output is a folder (any fsspec URL)::

    data/part-00000.parquet ...   one per shard, committed atomically (temp name, then rename)
    _plan.json                    the shard plan the folder was made with (written first)
    _tmp/part-00000/<uuid>.parquet fragments written by the workers, merged into the shard
    _manifest.json                written last: config, fingerprints, counts, timings, versions

The plan (``restore_core.io.shard_plan``) maps every input row to a fixed shard, so a rerun
skips the shards already committed and writes the others; nothing is duplicated or lost. Each
shard's row counts travel in its Parquet footer (key ``imrestore.stats``), so the manifest can be
rebuilt from the committed shards alone. This module also re-exports the plan, the resume
fingerprint (``resume``), the write probe (``probe``) and the image names (``image_names``), the
names the restore job uses as ``shards.*``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import posixpath
import re
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from restore_core.errors import UserError
from restore_core.io.folder import Folder
from restore_core.io.image_names import image_relpath, sniff_format
from restore_core.io.paths import UnsafePathError, safe_join
from restore_core.io.probe import probe_writable, write_problem
from restore_core.io.resume import NOT_RESULT_KEYS, changed_settings, settings_document, settings_fingerprint
from restore_core.io.shard_plan import (
    IMAGES_PER_SHARD,
    INTERNAL_PREFIX,
    PLAN_WRITER,
    ROW_COL,
    SHARD_COL,
    Shard,
    input_schema,
    is_plan_document,
    merge_plans,
    parquet_row_counts,
    part_name,
    plan_document,
    plan_shards,
    read_shard,
    shards_from_document,
)

__all__ = [
    "DATA_DIR",
    "IMAGES_DIR",
    "IMAGES_PER_SHARD",
    "INTERNAL_PREFIX",
    "MANIFEST_FILE",
    "NOT_RESULT_KEYS",
    "OUTPUT_SCHEMA",
    "PLAN_FILE",
    "PLAN_WRITER",
    "ROW_COL",
    "SHARD_COL",
    "STATS_KEY",
    "TMP_DIR",
    "OutputFolder",
    "Shard",
    "changed_settings",
    "concat",
    "finalize",
    "image_relpath",
    "input_schema",
    "is_plan_document",
    "merge_plans",
    "parquet_row_counts",
    "part_name",
    "plan_document",
    "plan_shards",
    "probe_writable",
    "read_shard",
    "settings_document",
    "settings_fingerprint",
    "shard_stats",
    "shards_from_document",
    "sniff_format",
    "write_problem",
]

log = logging.getLogger("restore_core.io.shards")

DATA_DIR = "data"
IMAGES_DIR = "images"  # output.format images: the restored files, in the input's folder tree
TMP_DIR = "_tmp"
PLAN_FILE = "_plan.json"
MANIFEST_FILE = "_manifest.json"
STATS_KEY = b"imrestore.stats"
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


class OutputFolder(Folder):
    """The restore job's output folder (an fsspec URL) and its commit protocol."""

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
        for f in self.find(DATA_DIR):
            rel = self.relative(f)
            name = rel[len(DATA_DIR) + 1 :]
            if name in parts or (name.startswith(".part-") and name.split(".tmp-")[0] + ".tmp-" in ours_data):
                continue
            out.append(rel)
        for f in self.find(TMP_DIR):
            rel = self.relative(f)
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

    def clear(self, plan_doc: dict[str, Any] | None) -> int:
        """Delete what an earlier run wrote (for --overwrite): the parts and fragments its plan
        names, ``_plan.json`` and ``_manifest.json``; nothing else. Refuses (UserError) when
        ``data/`` or ``_tmp/`` hold anything else. Returns the number of files deleted."""
        self.refuse_foreign(plan_doc, "clear it for --overwrite")
        images, left = _own_images(self)
        if left:
            log.warning(
                "--overwrite: %d files under %s/%s/ are not named by any shard; left in place",
                left,
                self.url,
                IMAGES_DIR,
            )
        ours = self.find(DATA_DIR) + self.find(TMP_DIR) + images
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
        self.atomic_write(self.path(DATA_DIR, shard.name), sink.getvalue().to_pybytes())
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
                self.atomic_write(safe_join(self.path(IMAGES_DIR), rel), blob)
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


def _own_images(out: OutputFolder) -> tuple[list[str], int]:
    """Files under ``images/`` named by the committed parts' ``output_path`` (output.format
    images), and how many other files are there (a crashed commit's, or someone else's)."""
    files = out.find(IMAGES_DIR)
    if not files:
        return [], 0
    named: set[str] = set()
    for f in out.find(DATA_DIR):
        if not _PART_RE.search(posixpath.basename(f)):
            continue
        with out.fs.open(f, "rb") as fh:
            pf = pq.ParquetFile(fh)
            if "output_path" in pf.schema_arrow.names:
                named.update(p for p in pf.read(columns=["output_path"]).column(0).to_pylist() if p)
    ours = [f for f in files if out.relative(f) in named]
    return ours, len(files) - len(ours)


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
