"""Restore a dataset on Ray: read shards, fill dead pixels (and optionally super-resolve), write
restored shards, then the manifest.

The pipeline, one Ray Data stream::

    shard plan ─> read shard rows (tasks) ─> Restorer (actor pool, CPU or GPU) ─> write fragments (tasks)
                                                                                    │ row counts
    driver: when a shard has all its rows ─> commit task: merge fragments in input order,
            write data/part-NNNNN.parquet under a temporary name, rename ─> ... ─> _manifest.json

Checking everything the user can get wrong happens before Ray starts: config, input listing,
Parquet footers (credentials), the bases and SR artifacts, a probe write to the output.
A rerun skips committed shards; ``--overwrite`` starts afresh.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import platform
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from jobs import logs, ray_utils
from jobs.common import Summary
from restore_core import checks
from restore_core.bases import Bases
from restore_core.config import RestoreConfig, check_ranges, to_dict
from restore_core.device import resolve_device
from restore_core.errors import UserError
from restore_core.io import datasets, lease, locations, sr_models
from restore_core.io import shards as shard_io
from restore_core.io.artifacts import load_bases, load_sr_model
from restore_core.io.refiners import RefinerArtifact, build_from_artifact, load_refiner
from restore_core.pipeline import Restorer, resolve_method
from restore_core.quality import read_flagged_ids

CONFIG = RestoreConfig
log = logging.getLogger("jobs.restore")

NODE_COL = "__node"
ACTOR_COL = "__actor"
BASES_REF_COL = "__bases_ref"
READ_S_COL = "__read_s"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overwrite", action="store_true", help="delete earlier output in output.path and start afresh"
    )


def apply_arguments(args: argparse.Namespace) -> list[str]:
    return ["output.overwrite=true"] if getattr(args, "overwrite", False) else []


# ----------------------------------------------------------------------------- checks


def check_config(cfg: RestoreConfig) -> None:
    """Refuse configurations that cannot work, with one line naming the key to fix."""
    check_ranges(cfg)  # the loader checks these too; a config built in code gets the same checks
    if not cfg.input.path:
        raise UserError("input.path is empty: point it at the images to restore (Parquet files or a folder)")
    if not cfg.output.path:
        raise UserError("output.path is empty: set it to the folder (or s3://bucket/prefix) for the restored shards")
    if ray_utils.is_process_local(cfg.output.path):
        raise UserError(
            "output.path memory:// lives in one process; Ray workers cannot write it: use a folder or s3://"
        )
    if cfg.output.rows_per_shard < 0:
        raise UserError(f"output.rows_per_shard must be >= 0, got {cfg.output.rows_per_shard}")
    if not 0 <= cfg.output.quality <= 100:
        raise UserError(f"output.quality must be 0 (the input's own) or 1-100, got {cfg.output.quality}")
    if cfg.ray.batch_size < 1:
        raise UserError(f"ray.batch_size must be >= 1, got {cfg.ray.batch_size}")
    if cfg.output.format == "images" and cfg.input.format != "images":
        raise UserError("output.format images needs input.format images (a folder tree to mirror); use parquet")
    if cfg.fit.method in ("nmf", "reference") and not cfg.bases:
        raise UserError(f"fit.method {cfg.fit.method} needs bases: set 'bases' to a learn-bases artifact folder")
    if cfg.fit.method == "learned" and not cfg.refiner:
        raise UserError("fit.method learned needs a refiner: set 'refiner' to a train-inpaint artifact folder")
    if cfg.sr.enabled and not cfg.sr.model:
        raise UserError("sr.enabled is true but sr.model is empty: set it to a train-sr artifact folder")
    # Never write into what the job reads, however either is spelled (and no credentials in URLs).
    reads = [("input.path", cfg.input.path), ("bases", cfg.bases if cfg.fit.method in ("nmf", "reference") else "")]
    reads += [("sr.model", cfg.sr.model if cfg.sr.enabled else ""), ("only_flagged", cfg.only_flagged)]
    locations.check_apart(reads, [("output.path", cfg.output.path)])


def resume_settings(
    cfg: RestoreConfig,
    bases: Bases | None,
    sr_artifact: Any,
    flagged: frozenset[str] | None,
    refiner: RefinerArtifact | None = None,
    *,
    redacted: bool = False,
) -> dict[str, Any]:
    """Everything a restored row depends on, for the resume fingerprint (see ``shard_io.settings_document``).

    Every config key counts except where things live and how Ray runs (``shard_io.NOT_RESULT_KEYS``),
    so a setting added later is covered without a change here. Paths of learned artifacts are
    replaced by their content hashes: a new artifact (a refiner model, say) joins by adding its
    hash to ``artifacts`` below. The input's listing is *not* part of it: a grown input resumes
    and restores only the new files. ``redacted`` gives the copy stored in ``_plan.json``.
    """
    artifacts = {"input": ":".join(locations.location_key(cfg.input.path))}
    if bases is not None:
        artifacts["bases"] = f"{bases.fingerprint()} {bases.meta.describe()}"
    if sr_artifact is not None:
        artifacts["sr_model"] = sr_artifact.fingerprint()
    if refiner is not None:  # other weights make other output: never mixed in one folder
        artifacts["refiner"] = refiner.fingerprint()
    if flagged is not None:
        artifacts["only_flagged_ids"] = hashlib.sha256("\n".join(sorted(flagged)).encode()).hexdigest()[:16]
    config = to_dict(cfg) if redacted else dataclasses.asdict(cfg)
    return shard_io.settings_document(config, artifacts)


def load_sr_artifact(cfg: RestoreConfig) -> Any:
    """The validated SR artifact (weights as arrays + meta), or None when SR is off."""
    if not cfg.sr.enabled:
        return None
    return load_sr_model(cfg.sr.model, cfg.sr.storage_options)


def load_refiner_artifact(cfg: RestoreConfig) -> RefinerArtifact | None:
    """The validated refiner artifact when the method uses it (``auto`` or ``learned`` with
    ``refiner`` set), else None."""
    if not cfg.refiner or cfg.fit.method not in ("auto", "learned"):
        if cfg.refiner:
            log.info("fit.method %s does not use the refiner %s", cfg.fit.method, cfg.refiner)
        return None
    artifact = load_refiner(cfg.refiner, cfg.input.storage_options)
    gain = artifact.held_out_gain_db
    if cfg.fit.method == "auto" and gain is not None and gain <= 0:
        # A refiner that did not beat its own fill on held-out damaged rows would make the output
        # worse than the fill it starts from: the default never uses it (learned forces it).
        log.warning(
            "the refiner %s gained %+.2f dB over its fill on held-out pixels in training: fit.method auto "
            "restores without it (set fit.method: learned to use it anyway)",
            cfg.refiner,
            gain,
        )
        return None
    return artifact


def check_refiner_bases(cfg: RestoreConfig, refiner: RefinerArtifact | None, bases: Bases | None) -> None:
    """A refiner that takes NMF bases as an input needs the very bases it was trained with."""
    wanted = refiner.bases_fingerprint if refiner is not None else ""
    if not wanted:
        return
    if bases is None:
        raise UserError(
            f"the refiner {cfg.refiner} takes NMF bases as an input: set 'bases' to the learn-bases artifact it was "
            "trained with"
        )
    if bases.fingerprint() != wanted:
        raise UserError(
            f"the refiner {cfg.refiner} was trained with other bases (fingerprint {wanted}) than {cfg.bases} "
            f"({bases.fingerprint()}): set 'bases' to the ones it was trained with"
        )


def sr_apply_from_artifact(artifact: Any, cfg: RestoreConfig) -> Callable[[np.ndarray], np.ndarray] | None:
    """Build the SR callable in the actor from weights shipped once through the object store."""
    if artifact is None:
        return None
    return sr_models.apply_from_artifact(artifact, cfg.sr, cfg.device)


# ----------------------------------------------------------------------------- Ray stages


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


def write_fragments(table: pa.Table, url: str, storage_options: dict[str, Any]) -> pa.Table:
    """Ray Data stage: write restored rows as fragments; return per-shard bookkeeping rows."""
    t0 = time.perf_counter()
    folder = shard_io.OutputFolder(url, storage_options)
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


def commit_shard(
    url: str, storage_options: dict[str, Any], shard: shard_io.Shard, images: bool = False
) -> dict[str, Any]:
    t0 = time.perf_counter()
    stats = shard_io.OutputFolder(url, storage_options).commit_shard(shard, images=images)
    stats["commit_s"] = time.perf_counter() - t0
    return stats


# ----------------------------------------------------------------------------- the job


@dataclasses.dataclass
class _Progress:
    rows: dict[int, int] = dataclasses.field(default_factory=lambda: defaultdict(int))
    read_s: float = 0.0
    restore_s: float = 0.0
    write_s: float = 0.0
    commit_s: float = 0.0
    nodes: set[str] = dataclasses.field(default_factory=set)
    actors: set[str] = dataclasses.field(default_factory=set)
    bases_refs: set[str] = dataclasses.field(default_factory=set)


def run(cfg: RestoreConfig) -> Summary:
    t_start = time.perf_counter()
    check_config(cfg)
    # Everything that can fail on the user's side fails here, before Ray starts.
    plan = shard_io.plan_shards(cfg.input, cfg.output.rows_per_shard)
    if not plan:
        raise UserError(f"no rows in {cfg.input.path} (every Parquet file is empty?)")
    schema = shard_io.input_schema(cfg.input)  # files whose column types differ: read as one schema
    refiner = load_refiner_artifact(cfg)
    if refiner is not None:  # the learned method: bases only when the refiner takes them
        needs_bases = bool(refiner.bases_fingerprint)
    else:
        needs_bases = cfg.fit.method in ("nmf", "reference") or (cfg.fit.method == "auto" and bool(cfg.bases))
    # (bases "" with a refiner that takes bases: check_refiner_bases says so in its words)
    bases: Bases | None = load_bases(cfg.bases, cfg.input.storage_options) if needs_bases and cfg.bases else None
    check_refiner_bases(cfg, refiner, bases)
    sr_artifact = load_sr_artifact(cfg)
    # restore.only_flagged: restore the rows a quality run flagged, pass the others through.
    flagged = (
        read_flagged_ids(cfg.only_flagged, cfg.only_flagged_flags, cfg.input.storage_options)
        if cfg.only_flagged
        else None
    )
    # Refuses corrupt bases, or a refiner that needs bases, now rather than in every actor.
    Restorer(
        bases,
        sr_apply_from_artifact(sr_artifact, cfg),
        cfg,
        refiner=build_from_artifact(refiner) if refiner is not None else None,
    )
    if bases is not None:
        # Bases made for another image size or channel count would fail every row: say so once.
        icfg = cfg.input
        rows = datasets.iter_rows(
            icfg.path, icfg.format, icfg.storage_options, icfg.id_column, icfg.image_column, limit=8
        )
        shape = checks.first_image_shape(rows, icfg.image_column, cfg.decode.max_pixels)
        if shape is not None:
            checks.check_bases_fit(bases.meta, shape, where=icfg.path, bases_url=cfg.bases)
    out = shard_io.OutputFolder(cfg.output.path, cfg.output.storage_options)
    out.check_writable()
    settings = resume_settings(cfg, bases, sr_artifact, flagged, refiner)
    fingerprint = shard_io.settings_fingerprint(settings)
    with lease.held(out.fs, out.root, out.url, "restore"):
        shown = resume_settings(cfg, bases, sr_artifact, flagged, refiner, redacted=True)
        plan = _resume_plan(cfg, out, plan, fingerprint, shown)
        return _restore(cfg, out, plan, fingerprint, bases, sr_artifact, flagged, schema, t_start, refiner)


def _resume_plan(
    cfg: RestoreConfig, out: shard_io.OutputFolder, plan: list[shard_io.Shard], fingerprint: str, shown: dict[str, Any]
) -> list[shard_io.Shard]:
    """The plan to run: a fresh one (written to ``_plan.json``), or the folder's own, extended with
    new input. Refuses a folder holding files restore did not write, and one made with other settings."""
    try:
        previous = out.read_json(shard_io.PLAN_FILE)
    except (ValueError, UnicodeDecodeError):
        previous = {"unreadable": True}
    if previous is not None and not shard_io.is_plan_document(previous):
        raise UserError(
            f"output.path {out.url} holds a {shard_io.PLAN_FILE} restore did not write: choose an empty output folder"
        )
    if cfg.output.overwrite:
        deleted = out.clear(previous)
        if deleted:
            log.info("--overwrite: deleted %d files an earlier run wrote in %s", deleted, out.url)
        previous = None
    else:
        out.refuse_foreign(previous, "write into it")
    step = cfg.output.rows_per_shard or shard_io.IMAGES_PER_SHARD
    log.debug("settings fingerprint %s over %d settings; %d shards planned", fingerprint, len(shown), len(plan))
    if previous is None:
        out.write_json(shard_io.PLAN_FILE, {"fingerprint": fingerprint, "settings": shown, **_plan_doc(plan, cfg)})
        return plan
    if previous.get("fingerprint") != fingerprint:
        changed = shard_io.changed_settings(previous.get("settings") or {}, shown)
        what = (
            f"other settings ({', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''})"
            if previous.get("settings") and changed
            else "other settings or an older version of restore"
            if previous.get("settings") is None
            else "other artifacts or settings"
        )
        raise UserError(
            f"{out.url} holds output made with {what}; rerun with --overwrite (or set output.overwrite: true) "
            "to replace it, or choose another output.path"
        )
    before = shard_io.shards_from_document(previous)
    if cfg.input.limit:
        return before  # the first rows, as planned when the output was started
    merged = shard_io.merge_plans(before, plan, out.committed(), cfg.input.format, step)
    if merged != before:
        added = len({s.index for s in merged} - {s.index for s in before})
        log.info("the input changed since the first run: %d new shards, %d in all (%s)", added, len(merged), out.url)
        out.write_json(shard_io.PLAN_FILE, {**previous, **_plan_doc(merged, cfg)})
    return merged


def _plan_doc(plan: list[shard_io.Shard], cfg: RestoreConfig) -> dict[str, Any]:
    return shard_io.plan_document(plan, cfg.input, cfg.output.rows_per_shard)


def _restore(
    cfg: RestoreConfig,
    out: shard_io.OutputFolder,
    plan: list[shard_io.Shard],
    fingerprint: str,
    bases: Bases | None,
    sr_artifact: Any,
    flagged: frozenset[str] | None,
    schema: pa.Schema | None,
    t_start: float,
    refiner: RefinerArtifact | None = None,
) -> Summary:
    done_before = out.committed()
    pending = [s for s in plan if s.index not in done_before]
    t_checks = time.perf_counter() - t_start

    progress = _Progress()
    t_pipeline = 0.0
    n_actors = 0
    bases_ref_hex = ""
    if pending:
        out.clear_tmp()
        t0 = time.perf_counter()
        n_actors, bases_ref_hex = _run_pipeline(cfg, pending, bases, sr_artifact, progress, flagged, schema, refiner)
        t_pipeline = time.perf_counter() - t0
    else:
        log.info("all %d shards of %s are committed; nothing to do", len(plan), cfg.output.path)

    stats = out.shard_stats(s.index for s in plan)
    missing = [s.index for s in plan if s.index not in stats]
    if missing:
        raise RuntimeError(f"shards {missing[:5]} were not committed")
    total = {k: sum(int(st.get(k, 0)) for st in stats.values()) for k in ("rows", "ok", "error")}
    dead_in = sum(float(st.get("dead_in_sum", 0.0)) for st in stats.values()) / max(total["ok"], 1)
    dead_out = sum(float(st.get("dead_out_sum", 0.0)) for st in stats.values()) / max(total["ok"], 1)
    size = {k: int(sum(float(st.get(f"bytes_{k}_sum", 0.0)) for st in stats.values())) for k in ("in", "out")}
    rows_now = sum(s.n_rows for s in pending)
    wall = time.perf_counter() - t_start
    rate = rows_now / t_pipeline if t_pipeline > 0 else 0.0
    timings = {
        "checks_s": t_checks,
        "pipeline_s": t_pipeline,
        "total_s": wall,
        "actor_read_s": progress.read_s,
        "actor_restore_s": progress.restore_s,
        "task_write_s": progress.write_s,
        "task_commit_s": progress.commit_s,
    }
    manifest_needed = bool(pending) or out.read_json(shard_io.MANIFEST_FILE) is None
    if manifest_needed:
        doc = manifest(
            cfg, bases, sr_artifact, fingerprint, plan, total, dead_in, dead_out, rows_now, timings, rate, refiner
        )
        doc["image_bytes_ok_rows"] = {"in": size["in"], "out": size["out"], "format": cfg.output.image_format}
        out.write_json(shard_io.MANIFEST_FILE, doc)
    busy = progress.restore_s / (t_pipeline * n_actors) if t_pipeline and n_actors else 0.0
    values: dict[str, Any] = {
        "method": resolve_method(cfg.fit.method, bases is not None, refiner is not None),
        "refiner": f"{cfg.refiner} ({refiner.fingerprint()})" if refiner is not None else "none",
        "rows": total["rows"],
        "rows ok": total["ok"],
        "rows error": total["error"],
        "only flagged ids": len(flagged) if flagged is not None else "off (every row restored)",
        "dead pixel fraction before": dead_in,
        "dead pixel fraction after": dead_out,
        "image bytes in -> out": _size_change(size["in"], size["out"], cfg.output.image_format),
        "shards": len(plan),
        "shards written now": len(pending),
        "shards skipped (done before)": len(plan) - len(pending),
        "rows processed now": rows_now,
        "images/s": rate,
        "actors": n_actors,
        "actor nodes": len(progress.nodes),
        "time: checks s": t_checks,
        "time: pipeline s": t_pipeline,
        "time: read s (tasks)": progress.read_s,
        "time: restore s (actors)": progress.restore_s,
        "time: write s (tasks)": progress.write_s,
        "time: commit s (tasks)": progress.commit_s,
        "actor busy fraction": busy,
        "bases object": bases_ref_hex,
        "bases objects seen by actors": ",".join(sorted(progress.bases_refs)),
    }
    return Summary(
        job="restore",
        values=values,
        outputs={
            **({"images": f"{out.url}/{shard_io.IMAGES_DIR}"} if cfg.output.format == "images" else {}),
            "data": f"{out.url}/{shard_io.DATA_DIR}",
            "manifest": f"{out.url}/{shard_io.MANIFEST_FILE}",
        },
        exit_code=0,
    )


def _size_change(before: int, after: int, image_format: str) -> str:
    """``12.3 MB -> 4.1 MB (-67%, image_format keep)``: what restoring did to the dataset's size."""
    change = f"{(after - before) / before:+.0%}" if before else "n/a"
    return f"{before / 1e6:.3g} MB -> {after / 1e6:.3g} MB ({change}, image_format {image_format})"


def _run_pipeline(
    cfg: RestoreConfig,
    pending: list[shard_io.Shard],
    bases: Bases | None,
    sr_artifact: Any,
    progress: _Progress,
    flagged: frozenset[str] | None = None,
    schema: pa.Schema | None = None,
    refiner: RefinerArtifact | None = None,
) -> tuple[int, str]:
    """Run the Ray stream over the pending shards and commit each as soon as it is complete."""
    import ray
    import ray.data

    ray_utils.init_ray(cfg.ray)
    pool = ray_utils.actor_pool_args(cfg.ray)
    n_actors = ray_utils.pool_size(pool)
    # Put once: every actor on every node reads the same object instead of a copy per task.
    bases_ref = ray.put(bases) if bases is not None else None
    sr_ref = ray.put(sr_artifact) if sr_artifact is not None else None
    flagged_ref = ray.put(flagged) if flagged is not None else None
    refiner_ref = ray.put(refiner) if refiner is not None else None
    log.info("restoring %d shards (%d rows) with %d actors", len(pending), sum(s.n_rows for s in pending), n_actors)

    by_index = {s.index: s for s in pending}
    rows_per_block = max(cfg.ray.batch_size * 4, 64)
    # Reads and writes are I/O bound and must never wait for the actors' CPUs.
    light: dict[str, Any] = {"num_cpus": 0.25}
    ds: Any  # Ray's Dataset stubs do not follow map_batches' kwargs; the stages are tested instead
    if ray_utils.is_process_local(cfg.input.path):
        # memory:// exists in this process only: read here, hand the rows to Ray.
        ds = ray.data.from_arrow(
            [
                t.append_column(READ_S_COL, pa.array(np.zeros(t.num_rows)))
                for t in (shard_io.read_shard(s, cfg.input, schema) for s in pending)
            ]
        )
    else:
        items = [
            {"index": s.index, "files": list(s.files), "row_start": s.row_start, "row_end": s.row_end} for s in pending
        ]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(
            read_shards,
            fn_kwargs={"cfg": cfg, "rows_per_block": rows_per_block, "schema": schema},
            batch_size=1,
            batch_format="numpy",
            **light,
        )
    ds = ds.map_batches(
        RestoreActor,
        fn_constructor_kwargs={
            "bases": bases_ref,
            "sr_artifact": sr_ref,
            "cfg": cfg,
            "threads": max(1, round(pool["num_cpus"])),
            "flagged": flagged_ref,
            "refiner": refiner_ref,
        },
        batch_size=cfg.ray.batch_size,
        batch_format="numpy",
        **pool,
    )
    ds = ds.map_batches(
        write_fragments,
        fn_kwargs={"url": cfg.output.path, "storage_options": cfg.output.storage_options},
        batch_size=rows_per_block,
        batch_format="pyarrow",
        **light,
    )
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
                    commits.append(
                        remote_commit.remote(
                            cfg.output.path, cfg.output.storage_options, by_index[s], cfg.output.format == "images"
                        )
                    )
    for stats in ray.get(commits):
        progress.commit_s += stats["commit_s"]
    shard_io.OutputFolder(cfg.output.path, cfg.output.storage_options).clear_tmp()
    unfinished = [i for i, s in by_index.items() if progress.rows[i] != s.n_rows]
    if unfinished:
        raise RuntimeError(f"shards {unfinished[:5]} did not get all their rows")
    return n_actors, bases_ref.hex() if bases_ref is not None else ""


def manifest(
    cfg: RestoreConfig,
    bases: Bases | None,
    sr_artifact: Any,
    plan_fp: str,
    plan: list[shard_io.Shard],
    total: dict[str, int],
    dead_in: float,
    dead_out: float,
    rows_now: int,
    timings: dict[str, float],
    rate: float,
    refiner: RefinerArtifact | None = None,
) -> dict[str, Any]:
    """What the output was made from and with (no secrets: storage options are redacted)."""
    import pyarrow
    import ray
    import torch

    return {
        "job": "restore",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": to_dict(cfg),
        "artifacts": {
            "bases": {"path": cfg.bases, "fingerprint": bases.fingerprint(), "meta": bases.meta.describe()}
            if bases is not None
            else None,
            "sr_model": {"path": cfg.sr.model, "fingerprint": sr_artifact.fingerprint()}
            if sr_artifact is not None
            else None,
            "refiner": {"path": cfg.refiner, "fingerprint": refiner.fingerprint(), "spec": refiner.meta.get("spec")}
            if refiner is not None
            else None,
        },
        "plan": {"fingerprint": plan_fp, "shards": len(plan)},
        "rows": total,
        "dead_fraction_mean": {"before": dead_in, "after": dead_out},
        "rows_processed_this_run": rows_now,
        "images_per_s": rate,
        "timings": timings,
        "versions": {
            "python": platform.python_version(),
            "ray": ray.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "pyarrow": pyarrow.__version__,
        },
    }
