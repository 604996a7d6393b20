"""The restore job's summarise step: what the run did, as a :class:`RestoreStats` dataclass, the
manifest written beside the output, and the :class:`~jobs.common.Summary` the CLI prints."""

from __future__ import annotations

import dataclasses
import platform
import time
from typing import Any

import numpy as np

from jobs.common import Summary
from jobs.restore_execute import Progress
from jobs.restore_plan import RestorePlan
from restore_core.config import to_dict
from restore_core.io import shards as shard_io


@dataclasses.dataclass(frozen=True)
class RestoreStats:
    """The run's numbers: the output's rows (from the committed shards' statistics) and this run's work."""

    rows: int
    ok: int
    error: int
    dead_in: float  # mean dead-pixel fraction of the ok rows, before
    dead_out: float  # and after
    bytes_in: int  # image bytes of the ok rows, before
    bytes_out: int  # and after
    shards: int
    shards_now: int  # shards written by this run
    rows_now: int
    checks_s: float  # preflight, until the stream starts
    total_s: float
    progress: Progress  # this run's stream (empty when every shard was committed before)

    @property
    def rate(self) -> float:
        """Images per second of the stream."""
        return self.rows_now / self.progress.pipeline_s if self.progress.pipeline_s > 0 else 0.0


def collect_stats(
    plan: RestorePlan, pending: list[shard_io.Shard], progress: Progress, checks_s: float
) -> RestoreStats:
    """The output's numbers from every shard's committed statistics; refuses a plan with uncommitted shards."""
    stats = plan.out.shard_stats(s.index for s in plan.shards)
    missing = [s.index for s in plan.shards if s.index not in stats]
    if missing:
        raise RuntimeError(f"shards {missing[:5]} were not committed")
    total = {k: sum(int(st.get(k, 0)) for st in stats.values()) for k in ("rows", "ok", "error")}

    def mean(key: str) -> float:
        return sum(float(st.get(key, 0.0)) for st in stats.values()) / max(total["ok"], 1)

    def size(key: str) -> int:
        return int(sum(float(st.get(f"bytes_{key}_sum", 0.0)) for st in stats.values()))

    return RestoreStats(
        rows=total["rows"],
        ok=total["ok"],
        error=total["error"],
        dead_in=mean("dead_in_sum"),
        dead_out=mean("dead_out_sum"),
        bytes_in=size("in"),
        bytes_out=size("out"),
        shards=len(plan.shards),
        shards_now=len(pending),
        rows_now=sum(s.n_rows for s in pending),
        checks_s=checks_s,
        total_s=time.perf_counter() - plan.started,
        progress=progress,
    )


def manifest(plan: RestorePlan, stats: RestoreStats) -> dict[str, Any]:
    """What the output was made from and with (no secrets: storage options are redacted)."""
    import pyarrow
    import ray
    import torch

    cfg, p = plan.cfg, stats.progress
    bases, sr_artifact, refiner = plan.bases, plan.sr_artifact, plan.refiner
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
        "plan": {"fingerprint": plan.fingerprint, "shards": stats.shards},
        "rows": {"rows": stats.rows, "ok": stats.ok, "error": stats.error},
        "dead_fraction_mean": {"before": stats.dead_in, "after": stats.dead_out},
        "rows_processed_this_run": stats.rows_now,
        "images_per_s": stats.rate,
        "timings": {
            "checks_s": stats.checks_s,
            "pipeline_s": p.pipeline_s,
            "total_s": stats.total_s,
            "actor_read_s": p.read_s,
            "actor_restore_s": p.restore_s,
            "task_write_s": p.write_s,
            "task_commit_s": p.commit_s,
        },
        "versions": {
            "python": platform.python_version(),
            "ray": ray.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "pyarrow": pyarrow.__version__,
        },
        "image_bytes_ok_rows": {"in": stats.bytes_in, "out": stats.bytes_out, "format": cfg.output.image_format},
    }


def summarise(plan: RestorePlan, stats: RestoreStats) -> Summary:
    """The summary the CLI prints: counts, timings and where the outputs are."""
    cfg, p, refiner = plan.cfg, stats.progress, plan.refiner
    busy = p.restore_s / (p.pipeline_s * p.n_actors) if p.pipeline_s and p.n_actors else 0.0
    values: dict[str, Any] = {
        "method": plan.method,
        "refiner": f"{cfg.refiner} ({refiner.fingerprint()})" if refiner is not None else "none",
        "rows": stats.rows,
        "rows ok": stats.ok,
        "rows error": stats.error,
        "only flagged ids": len(plan.flagged) if plan.flagged is not None else "off (every row restored)",
        "dead pixel fraction before": stats.dead_in,
        "dead pixel fraction after": stats.dead_out,
        "image bytes in -> out": _size_change(stats.bytes_in, stats.bytes_out, cfg.output.image_format),
        "shards": stats.shards,
        "shards written now": stats.shards_now,
        "shards skipped (done before)": stats.shards - stats.shards_now,
        "rows processed now": stats.rows_now,
        "images/s": stats.rate,
        "actors": p.n_actors,
        "actor nodes": len(p.nodes),
        "time: checks s": stats.checks_s,
        "time: pipeline s": p.pipeline_s,
        "time: read s (tasks)": p.read_s,
        "time: restore s (actors)": p.restore_s,
        "time: write s (tasks)": p.write_s,
        "time: commit s (tasks)": p.commit_s,
        "actor busy fraction": busy,
        "bases object": p.bases_ref,
        "bases objects seen by actors": ",".join(sorted(p.bases_refs)),
    }
    url = plan.out.url
    images = {"images": f"{url}/{shard_io.IMAGES_DIR}"} if cfg.output.format == "images" else {}
    outputs = {**images, "data": f"{url}/{shard_io.DATA_DIR}", "manifest": f"{url}/{shard_io.MANIFEST_FILE}"}
    return Summary(job="restore", values=values, outputs=outputs, exit_code=0)


def _size_change(before: int, after: int, image_format: str) -> str:
    """``12.3 MB -> 4.1 MB (-67%, image_format keep)``: what restoring did to the dataset's size."""
    change = f"{(after - before) / before:+.0%}" if before else "n/a"
    return f"{before / 1e6:.3g} MB -> {after / 1e6:.3g} MB ({change}, image_format {image_format})"
