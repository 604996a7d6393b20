"""Restore a dataset on Ray: read shards, fill dead pixels (and optionally super-resolve), write
restored shards, then the manifest.

The job is three steps:

1. :func:`jobs.restore_plan.preflight` (no Ray): everything the user can get wrong fails here --
   config, input listing, Parquet footers (credentials), the bases, SR and refiner artifacts,
   the first image against the bases, a probe write to the output -- giving a
   :class:`~jobs.restore_plan.RestorePlan`; under the output's lease,
   :func:`~jobs.restore_plan.resume` keeps the folder's own plan (a rerun skips committed shards;
   ``--overwrite`` starts afresh).
2. :func:`jobs.restore_execute.execute` (the only Ray code): the Ray Data stream over the pending
   shards, each committed atomically as soon as it has all its rows.
3. :mod:`jobs.restore_summary`: the :class:`~jobs.restore_summary.RestoreStats` of the output,
   ``_manifest.json``, and the summary the CLI prints.
"""

from __future__ import annotations

import argparse
import logging
import time

from jobs.common import Summary
from jobs.config_restore import RestoreJobConfig
from jobs.restore_execute import Progress, execute
from jobs.restore_plan import preflight, resume
from jobs.restore_summary import collect_stats, manifest, summarise
from restore_core.io import lease
from restore_core.io import shards as shard_io

CONFIG = RestoreJobConfig
log = logging.getLogger("jobs.restore")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overwrite", action="store_true", help="delete earlier output in output.path and start afresh"
    )


def apply_arguments(args: argparse.Namespace) -> list[str]:
    return ["output.overwrite=true"] if getattr(args, "overwrite", False) else []


def run(cfg: RestoreJobConfig) -> Summary:
    plan = preflight(cfg)
    out = plan.out
    with lease.held(out.fs, out.root, out.url, "restore"):
        plan = resume(plan)
        pending = plan.pending()
        checks_s = time.perf_counter() - plan.started
        if pending:
            out.clear_tmp()
            progress = execute(plan, pending)
        else:
            log.info("all %d shards of %s are committed; nothing to do", len(plan.shards), cfg.output.path)
            progress = Progress()
        stats = collect_stats(plan, pending, progress, checks_s)
        if pending or out.read_json(shard_io.MANIFEST_FILE) is None:
            out.write_json(shard_io.MANIFEST_FILE, manifest(plan, stats))
        return summarise(plan, stats)
