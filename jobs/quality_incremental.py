"""Incremental quality runs: reuse the previous finished run's rows for unchanged input files.

:func:`prepare` runs before scoring. It lists the input with each file's identity
(:mod:`restore_core.io.file_identity`), finds the latest finished run of this date or before
(``_SUCCESS``) and its ``files.parquet``, and, when the scoring settings are the same,

- copies that run's per-image shards into ``<staging>/data/reused-*.parquet``: a large shard
  holding no row of a changed or removed file is copied as it is (a server-side copy on object
  stores); small shards (the actors write one a batch) are merged into shards of up to
  ``COMPACT_ROWS`` rows, and rows of changed or removed files are filtered out, streamed batch by
  batch (never all rows in memory), so later passes over the run open a few files, not hundreds;
- returns the new and changed files, which alone are scored;
- writes ``<staging>/files.parquet`` for the next run.

Otherwise (``full: true`` / ``--full``, no earlier run, other settings, ``input.limit``, a
``memory://`` input, image cells that point at other files, a previous run whose shards do not
match its file table) it plans a full rescan and says why. Run-wide columns (duplicates, odd
size) are not in the shards: the aggregation computes them over all rows, old and new.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import posixpath
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import imrestore_report as report
from jobs.config_quality import QualityJobConfig
from jobs.ray_utils import is_process_local
from restore_core.config import QualityConfig, to_dict
from restore_core.io import datasets
from restore_core.io import file_identity as fid

log = logging.getLogger("jobs.quality")

#: Name prefix of the shards copied from the previous run into ``<staging>/data``.
REUSED_PREFIX = "reused-"


@dataclasses.dataclass
class Plan:
    """What this run scores and what it reuses."""

    mode: str  # "full" or "incremental"
    reason: str  # why full (or what incremental reused), one sentence
    files: list[fid.FileIdentity]
    settings: dict[str, Any]
    base_run: str | None = None
    changes: fid.FileChanges | None = None
    rows_reused: int = 0
    rows_scored: int = 0
    seconds: float = 0.0
    #: Every input file's path, in listing order (None: not listed, a ``memory://`` input). Kept
    #: for the scoring step (no second listing); ``files`` is emptied once files.parquet holds it.
    listed: list[str] | None = None
    n_files: int = 0

    @property
    def to_score(self) -> list[str] | None:
        """The files to score (None = all of them)."""
        return self.changes.to_score if self.changes is not None else None

    def as_dict(self) -> dict[str, Any]:
        counts = (
            self.changes.counts()
            if self.changes is not None
            else {"unchanged": 0, "changed": 0, "added": self.n_files, "removed": 0}
        )
        return {
            "mode": self.mode,
            "reason": self.reason,
            "base_run": self.base_run,
            "files": counts,
            "rows_reused": self.rows_reused,
            "rows_scored": self.rows_scored,
            "settings_fingerprint": fid.settings_fingerprint(self.settings),
            "seconds": self.seconds,
        }

    def sentence(self) -> str:
        return fid.scan_sentence(self.as_dict())


def _full(plan: Plan, reason: str) -> Plan:
    log.info("quality: full rescan: %s", reason)
    plan.mode, plan.reason, plan.changes = "full", reason, None
    return plan


def prepare(cfg: QualityJobConfig, date: str, fs: Any, root: str, staging: str) -> Plan:
    """Plan the run, copy the reused rows into ``<staging>/data`` and write ``<staging>/files.parquet``."""
    t0 = time.perf_counter()
    icfg = cfg.input
    settings = fid.scoring_settings(to_dict(cfg))
    plan = Plan("full", "", [], settings)
    if is_process_local(icfg.path):
        plan = _full(plan, f"{icfg.path.split('://')[0]}:// inputs live in one process; they are scored in full")
        plan.seconds = time.perf_counter() - t0
        return plan  # nothing recorded: the next run could not read this input's files either
    plan.files = fid.list_identities(icfg.location, icfg.format)
    plan.listed, plan.n_files = [f.path for f in plan.files], len(plan.files)
    _plan(cfg, date, fs, root, staging, plan)
    _write_files_table(cfg, fs, root, staging, plan)
    # The identities are in files.parquet now: not held through scoring (~300 bytes a file)
    plan.files = []
    plan.seconds = time.perf_counter() - t0
    if plan.mode == "incremental" and plan.changes is not None:
        c = plan.changes.counts()
        log.info(
            "quality: incremental from run=%s: %d files added, %d changed, %d removed; %d rows reused",
            plan.base_run, c["added"], c["changed"], c["removed"], plan.rows_reused,
        )  # fmt: skip
    return plan


def _plan(cfg: QualityJobConfig, date: str, fs: Any, root: str, staging: str, plan: Plan) -> None:
    icfg = cfg.input
    if cfg.full:
        _full(plan, "a full rescan was asked for (--full / full: true)")
        return
    if icfg.limit:
        _full(plan, "input.limit is set: a limited run reads the first rows only")
        return
    runs = [d for d in report.list_runs(fs, root) if d <= date]
    if not runs:
        _full(plan, "no earlier finished run to reuse")
        return
    base = runs[-1]
    plan.base_run = base
    base_dir = posixpath.join(root, f"{report.RUN_PREFIX}{base}")
    files_path = posixpath.join(base_dir, fid.FILES_NAME)
    if not fs.exists(files_path):
        _full(plan, f"run={base} has no {fid.FILES_NAME} (it was made before incremental runs)")
        return
    with fs.open(files_path, "rb") as f:
        prev_file = pq.ParquetFile(f)
        fingerprint, prev_settings = fid.read_metadata(prev_file.schema_arrow)
        if fingerprint != fid.settings_fingerprint(plan.settings):
            keys = fid.changed_keys(prev_settings, plan.settings) if prev_settings else []
            named = f" ({', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''})" if keys else ""
            _full(plan, f"the scoring settings or scorer changed since run={base}{named}")
            return
        prev = prev_file.read(columns=["file", "size", "token", "rows"])
    previous = {
        p: (int(s), str(t))
        for p, s, t in zip(
            prev.column("file").to_pylist(),
            prev.column("size").to_pylist(),
            prev.column("token").to_pylist(),
            strict=True,
        )
    }
    rows_before = dict(zip(prev.column("file").to_pylist(), prev.column("rows").to_pylist(), strict=True))
    changes = fid.compare(plan.files, previous)
    if icfg.format == "parquet" and points_at_files(cfg, [plan.files[0].path, *changes.to_score]):
        _full(plan, "the image cells point at other files, whose changes a file listing does not see")
        return
    if not changes.unchanged:
        _full(plan, f"no input file is unchanged since run={base}")
        return
    gone = [f.path for f in changes.changed] + changes.removed
    drop = _ids_of(fs, files_path, gone)
    if drop.null_count:
        _full(plan, f"a changed or removed file had rows without an id in run={base}")
        return
    expected = sum(int(rows_before[f.path]) for f in changes.unchanged)
    reused = _copy_reused(fs, posixpath.join(base_dir, "data"), posixpath.join(staging, "data"), drop)
    if reused != expected:
        for path in fs.glob(posixpath.join(staging, "data", REUSED_PREFIX + "*")):
            fs.rm(path)
        _full(plan, f"run={base}'s shards hold {reused} rows of unchanged files, its file table {expected}")
        return
    plan.mode, plan.changes, plan.rows_reused = "incremental", changes, reused
    plan.reason = f"reused run={base}'s rows of {len(changes.unchanged)} unchanged files"


def points_at_files(cfg: QualityConfig, files: list[str]) -> bool:
    icfg = cfg.input
    fs, _ = icfg.location.filesystem()
    columns = (icfg.image_column, icfg.reference_column, icfg.mask_column)
    for schema in datasets.parquet_schemas(sorted(set(files)), fs):
        if any(c in schema.names and datasets.is_path_struct(schema.field(c).type) for c in columns):
            return True
    return False


def _ids_of(fs: Any, files_path: str, paths: list[str]) -> pa.Array:
    """The ids the earlier run read from ``paths`` (flattened; nulls kept)."""
    if not paths:
        return pa.array([], pa.string())
    with fs.open(files_path, "rb") as f:
        table = pq.read_table(f, columns=["file", "ids"], filters=[("file", "in", paths)])
    return pc.list_flatten(table.column("ids")).combine_chunks() if table.num_rows else pa.array([], pa.string())


#: A reused shard with fewer rows than this is merged with its small neighbours (the actors
#: write one shard a batch of ``ray.batch_size`` rows; every later pass over the run would open
#: each of them), into shards of up to ``COMPACT_ROWS`` rows; larger ones are copied as they are.
SMALL_SHARD_ROWS = 2048
COMPACT_ROWS = 32768


@dataclasses.dataclass
class _Shard:
    path: str
    rows: int
    schema: pa.Schema
    dropped: int  # rows whose id is in the drop set


def _copy_reused(fs: Any, src_dir: str, dst_dir: str, drop: pa.Array) -> int:
    """Copy the rows of ``src_dir``'s shards whose id is not in ``drop`` to ``dst_dir``; the row
    count. A large shard with nothing to drop is copied whole (server-side on object stores);
    small shards of the same columns are merged, streamed batch by batch (never all rows in memory)."""
    paths = sorted(p for p in fs.find(src_dir) if p.endswith(".parquet")) if fs.exists(src_dir) else []
    drop_set = pa.array(drop.to_pylist(), pa.string()) if len(drop) else None

    def inspect(src: str) -> _Shard:
        with fs.open(src, "rb") as f:
            pf = pq.ParquetFile(f)
            hits = 0
            if drop_set is not None:
                ids = pf.read(columns=["id"]).column("id")
                hits = int(pc.sum(pc.is_in(ids, value_set=drop_set)).as_py() or 0)
            return _Shard(src, pf.metadata.num_rows, pf.schema_arrow, hits)

    def write(k: int, group: list[_Shard]) -> int:
        dst = posixpath.join(dst_dir, f"{REUSED_PREFIX}{k:05d}.parquet")
        if len(group) == 1 and not group[0].dropped:
            fs.copy(group[0].path, dst)
            return group[0].rows
        kept, pending = 0, []
        with fs.open(dst, "wb") as out, pq.ParquetWriter(out, group[0].schema) as writer:
            for shard in group:
                with fs.open(shard.path, "rb") as f:
                    for batch in pq.ParquetFile(f).iter_batches(batch_size=4096):
                        if shard.dropped:
                            batch = batch.filter(pc.invert(pc.is_in(batch.column("id"), value_set=drop_set)))
                        pending.append(batch)
                        kept += batch.num_rows
                        if sum(b.num_rows for b in pending) >= 4096:
                            writer.write_table(pa.Table.from_batches(pending, group[0].schema))
                            pending = []
            if pending:
                writer.write_table(pa.Table.from_batches(pending, group[0].schema))
        return kept

    if not paths:
        return 0
    fs.makedirs(dst_dir, exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(paths))) as pool:
        shards = [s for s in pool.map(inspect, paths) if s.rows > s.dropped]  # all dropped: no file
        groups = _groups(shards)
        return sum(pool.map(write, range(len(groups)), groups))


def _groups(shards: list[_Shard]) -> list[list[_Shard]]:
    """Neighbouring small shards of the same columns together (up to ``COMPACT_ROWS`` rows); a
    large one alone."""
    groups: list[list[_Shard]] = []
    rows = 0
    for shard in shards:
        last = groups[-1] if groups else None
        small = shard.rows < SMALL_SHARD_ROWS
        if (
            small
            and last is not None
            and last[0].rows < SMALL_SHARD_ROWS
            and last[0].schema.equals(shard.schema)
            and rows + shard.rows <= COMPACT_ROWS
        ):
            last.append(shard)
            rows += shard.rows
        else:
            groups.append([shard])
            rows = shard.rows
    return groups


def _new_ids(cfg: QualityConfig, paths: list[str]) -> list[list[str | None]]:
    """The ids each of ``paths`` gives, as the scorer writes them (``str`` of the value read)."""
    icfg = cfg.input
    if not paths:
        return []
    if icfg.format == "images":
        return [[i] for i in fid.image_ids(icfg.location, paths)]
    fs, _ = icfg.location.filesystem()
    schema = datasets.parquet_input_schema(icfg.location, icfg.id_column, icfg.image_column, paths)
    target = schema.field(icfg.id_column).type if schema is not None else None

    def one(path: str) -> list[str | None]:
        out: list[str | None] = []
        with fs.open(path, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=65536, columns=[icfg.id_column]):
                col = batch.column(0)
                if target is not None and col.type != target:
                    col = col.cast(target)
                out += [None if v is None else str(v) for v in col.to_pylist()]
        return out

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(paths))) as pool:
        return list(pool.map(one, paths))


def _write_files_table(cfg: QualityConfig, fs: Any, root: str, staging: str, plan: Plan) -> None:
    """``<staging>/files.parquet``: every file of today's listing, its identity and its ids."""
    schema = fid.FILES_SCHEMA.with_metadata(fid.files_metadata(plan.settings))
    fresh = plan.to_score if plan.to_score is not None else [f.path for f in plan.files]
    by_path = {f.path: f for f in plan.files}
    fs.makedirs(staging, exist_ok=True)
    with fs.open(posixpath.join(staging, fid.FILES_NAME), "wb") as out, pq.ParquetWriter(out, schema) as writer:
        step = 512
        for start in range(0, len(fresh), step):
            chunk = fresh[start : start + step]
            ids = _new_ids(cfg, chunk)
            writer.write_batch(fid.files_batch((by_path[p], i) for p, i in zip(chunk, ids, strict=True)))
        if plan.changes is not None and plan.changes.unchanged:
            keep = pa.array([f.path for f in plan.changes.unchanged], pa.string())
            base = posixpath.join(root, f"{report.RUN_PREFIX}{plan.base_run}", fid.FILES_NAME)
            with fs.open(base, "rb") as f:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=4096, columns=fid.FILES_SCHEMA.names):
                    part = batch.filter(pc.is_in(batch.column(0), value_set=keep))
                    if part.num_rows:
                        writer.write_batch(pa.RecordBatch.from_arrays(part.columns, schema=fid.FILES_SCHEMA))
