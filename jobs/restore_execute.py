"""The restore job's execute step, the only Ray code of the job: one Ray Data stream::

    shards ─> read shard rows (tasks) ─> Restorer (actor pool, CPU or GPU) ─> write fragments (tasks)
                                                                              │ row counts
    driver: when a shard has all its rows ─> commit task: merge fragments in input order,
            write data/part-NNNNN.parquet under a temporary name, rename

The stages (:func:`read_shards`, :class:`RestoreActor`, :func:`write_fragments`,
:func:`commit_shard`) are plain callables, tested without Ray.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from jobs import logs, ray_utils
from jobs.config_restore import RestoreJobConfig
from jobs.restore_plan import RestorePlan
from restore_core.config import RestoreConfig
from restore_core.device import keep_freed_memory, resolve_device
from restore_core.io import shards as shard_io
from restore_core.io import sr_models
from restore_core.io.locations import Location
from restore_core.io.refiners import build_from_artifact
from restore_core.pipeline import Restorer

log = logging.getLogger("jobs.restore")

NODE_COL = "__node"
ACTOR_COL = "__actor"
BASES_REF_COL = "__bases_ref"
READ_S_COL = "__read_s"


@dataclasses.dataclass
class Progress:
    """What the stream reported back: rows per shard, time spent per stage, where it ran."""

    rows: dict[int, int] = dataclasses.field(default_factory=lambda: defaultdict(int))
    read_s: float = 0.0
    restore_s: float = 0.0
    write_s: float = 0.0
    commit_s: float = 0.0
    nodes: set[str] = dataclasses.field(default_factory=set)
    actors: set[str] = dataclasses.field(default_factory=set)
    bases_refs: set[str] = dataclasses.field(default_factory=set)
    n_actors: int = 0
    bases_ref: str = ""  # the bases' object in the store, as the driver put it
    pipeline_s: float = 0.0


def sr_apply_from_artifact(artifact: Any, cfg: RestoreConfig) -> Callable[[np.ndarray], np.ndarray] | None:
    """Build the SR callable in the actor from weights shipped once through the object store."""
    if artifact is None:
        return None
    return sr_models.apply_from_artifact(artifact, cfg.sr, cfg.device)


def read_shards(
    batch: dict[str, np.ndarray], cfg: RestoreConfig, rows_per_block: int, schema: pa.Schema | None = None
) -> Iterator[pa.Table]:
    """Ray Data stage: shard descriptors in, the shards' rows out (in blocks of bounded size)."""
    for i in range(len(batch["index"])):
        t0 = time.perf_counter()
        shard = shard_io.Shard(
            int(batch["index"][i]), tuple(batch["files"][i]), int(batch["row_start"][i]), int(batch["row_end"][i])
        )
        table = shard_io.read_shard(shard, cfg.input, schema)
        per_row = (time.perf_counter() - t0) / max(table.num_rows, 1)
        table = table.append_column(READ_S_COL, pa.array(np.full(table.num_rows, per_row)))
        for start in range(0, table.num_rows, rows_per_block):
            yield table.slice(start, rows_per_block)


class RestoreActor:
    """Ray Data actor: wraps :class:`restore_core.pipeline.Restorer`, built once per actor.

    ``bases``, ``sr_artifact`` and ``refiner`` (a refiner artifact: weights + spec) arrive as
    ObjectRefs (put once by the driver) or already resolved; both are handled. The refiner
    network is built here, once per actor. Each output row is tagged with the node and actor that made
    it, and the bases object it used, so the summary can show where the work ran.
    """

    def __init__(
        self, bases: Any, sr_artifact: Any, cfg: RestoreConfig, threads: int, flagged: Any = None, refiner: Any = None
    ) -> None:
        import ray
        import torch

        torch.set_num_threads(max(1, threads))  # the actor's CPU share, not every core of the node
        keep_freed_memory()  # batch after batch of the same sizes: reuse freed memory (page faults)
        self.bases_ref = bases.hex() if isinstance(bases, ray.ObjectRef) else ""
        if isinstance(bases, ray.ObjectRef):
            bases = ray.get(bases)
        if bases is not None:
            # Objects from the store are read-only views; torch wants memory it may own.
            bases = dataclasses.replace(bases, H=np.array(bases.H))
        if isinstance(sr_artifact, ray.ObjectRef):
            sr_artifact = ray.get(sr_artifact)
        if isinstance(flagged, ray.ObjectRef):
            flagged = ray.get(flagged)
        if isinstance(refiner, ray.ObjectRef):
            refiner = ray.get(refiner)
        model = build_from_artifact(refiner, resolve_device(cfg.device)) if refiner is not None else None
        self.restorer = Restorer(
            bases, sr_apply_from_artifact(sr_artifact, cfg), cfg, flagged_ids=flagged, refiner=model
        )
        ctx = ray.get_runtime_context()
        self.node = ctx.get_node_id()
        self.actor = ctx.get_actor_id() or ""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.restorer(batch)
        n = len(out["id"])
        for col, value in ((NODE_COL, self.node), (ACTOR_COL, self.actor), (BASES_REF_COL, self.bases_ref)):
            out[col] = np.full(n, value, dtype=object)
        return out


def write_fragments(table: pa.Table, location: Location) -> pa.Table:
    """Ray Data stage: write restored rows as fragments; return per-shard bookkeeping rows."""
    t0 = time.perf_counter()
    folder = shard_io.OutputFolder(location)
    info = {
        "nodes": sorted(set(table.column(NODE_COL).to_pylist())),
        "actors": sorted(set(table.column(ACTOR_COL).to_pylist())),
        "bases_refs": sorted(set(table.column(BASES_REF_COL).to_pylist())),
    }
    shard_ids = table.column(shard_io.SHARD_COL).to_numpy()
    sums = {
        s: (
            float(np.sum(table.column("seconds").to_numpy(zero_copy_only=False)[shard_ids == s])),
            float(np.sum(table.column(READ_S_COL).to_numpy(zero_copy_only=False)[shard_ids == s])),
        )
        for s in np.unique(shard_ids)
    }
    counts = folder.write_fragment(table.drop_columns([NODE_COL, ACTOR_COL, BASES_REF_COL, READ_S_COL]))
    write_s = (time.perf_counter() - t0) / max(len(counts), 1)
    return pa.table(
        {
            "shard": [c["shard"] for c in counts],
            "rows": [c["rows"] for c in counts],
            "restore_s": [sums[c["shard"]][0] for c in counts],
            "read_s": [sums[c["shard"]][1] for c in counts],
            "write_s": [write_s] * len(counts),
            "nodes": [info["nodes"]] * len(counts),
            "actors": [info["actors"]] * len(counts),
            "bases_refs": [info["bases_refs"]] * len(counts),
        }
    )


def commit_shard(location: Location, shard: shard_io.Shard, images: bool = False) -> dict[str, Any]:
    t0 = time.perf_counter()
    stats = shard_io.OutputFolder(location).commit_shard(shard, images=images)
    stats["commit_s"] = time.perf_counter() - t0
    return stats


def execute(plan: RestorePlan, pending: list[shard_io.Shard]) -> Progress:
    """Run the Ray stream over the pending shards and commit each as soon as it is complete."""
    import ray

    cfg = plan.cfg
    t0 = time.perf_counter()
    ray_utils.init_ray(cfg.ray)
    pool = ray_utils.actor_pool_args(cfg.ray)
    progress = Progress(n_actors=ray_utils.pool_size(pool))
    # Put once: every actor on every node reads the same object instead of a copy per task.
    bases_ref = ray.put(plan.bases) if plan.bases is not None else None
    shipped = {
        "bases": bases_ref,
        "sr_artifact": ray.put(plan.sr_artifact) if plan.sr_artifact is not None else None,
        "flagged": ray.put(plan.flagged) if plan.flagged is not None else None,
        "refiner": ray.put(plan.refiner) if plan.refiner is not None else None,
    }
    log.info(
        "restoring %d shards (%d rows) with %d actors", len(pending), sum(s.n_rows for s in pending), progress.n_actors
    )
    ds = _stream(plan, pending, shipped, pool)
    _collect(ds, cfg, pending, progress)
    shard_io.OutputFolder(cfg.output.location).clear_tmp()
    unfinished = [s.index for s in pending if progress.rows[s.index] != s.n_rows]
    if unfinished:
        raise RuntimeError(f"shards {unfinished[:5]} did not get all their rows")
    progress.bases_ref = bases_ref.hex() if bases_ref is not None else ""
    progress.pipeline_s = time.perf_counter() - t0
    return progress


def _rows_per_block(cfg: RestoreJobConfig) -> int:
    return max(cfg.ray.batch_size * 4, 64)


def _stream(plan: RestorePlan, pending: list[shard_io.Shard], shipped: dict[str, Any], pool: dict[str, Any]) -> Any:
    """The Ray Dataset: shard descriptors -> rows -> restored rows -> per-shard bookkeeping rows."""
    import ray.data

    cfg = plan.cfg
    rows_per_block = _rows_per_block(cfg)
    # Reads and writes are I/O bound and must never wait for the actors' CPUs.
    light: dict[str, Any] = {"num_cpus": 0.25}
    ds: Any  # Ray's Dataset stubs do not follow map_batches' kwargs; the stages are tested instead
    if ray_utils.is_process_local(cfg.input.path):
        # memory:// exists in this process only: read here, hand the rows to Ray.
        ds = ray.data.from_arrow(
            [
                t.append_column(READ_S_COL, pa.array(np.zeros(t.num_rows)))
                for t in (shard_io.read_shard(s, cfg.input, plan.schema) for s in pending)
            ]
        )
    else:
        items = [
            {"index": s.index, "files": list(s.files), "row_start": s.row_start, "row_end": s.row_end} for s in pending
        ]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(
            read_shards,
            fn_kwargs={"cfg": cfg, "rows_per_block": rows_per_block, "schema": plan.schema},
            batch_size=1,
            batch_format="numpy",
            **light,
        )
    ds = ds.map_batches(
        RestoreActor,
        fn_constructor_kwargs={**shipped, "cfg": cfg, "threads": max(1, round(pool["num_cpus"]))},
        batch_size=cfg.ray.batch_size,
        batch_format="numpy",
        **pool,
    )
    return ds.map_batches(
        write_fragments,
        fn_kwargs={"location": cfg.output.location},
        batch_size=rows_per_block,
        batch_format="pyarrow",
        **light,
    )


def _collect(ds: Any, cfg: RestoreJobConfig, pending: list[shard_io.Shard], progress: Progress) -> None:
    """Drain the stream into ``progress``, committing each shard (a Ray task) once it has all its rows."""
    import ray

    by_index = {s.index: s for s in pending}
    # Storage hiccups (S3 5xx, connection resets) raise in the task: retry those too, with
    # Ray's backoff, before giving up on the job.
    remote_commit = ray.remote(num_cpus=0.25, max_retries=3, retry_exceptions=True)(commit_shard)
    commits = []
    # Logs (stderr not a terminal) get a progress line at most every IMRESTORE_PROGRESS_SECONDS.
    with logs.progress_bar(sum(s.n_rows for s in pending), "restoring") as bar:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            for row in batch.to_pylist():
                s = int(row["shard"])
                progress.rows[s] += int(row["rows"])
                bar.update(int(row["rows"]))
                progress.read_s += row["read_s"]
                progress.restore_s += row["restore_s"]
                progress.write_s += row["write_s"]
                progress.nodes.update(row["nodes"])
                progress.actors.update(row["actors"])
                progress.bases_refs.update(r for r in row["bases_refs"] if r)
                if progress.rows[s] == by_index[s].n_rows:
                    out = cfg.output
                    commits.append(remote_commit.remote(out.location, by_index[s], out.format == "images"))
    for stats in ray.get(commits):
        progress.commit_s += stats["commit_s"]
