"""Nightly data-quality run: per-image metrics with Ray Data, flags, drift, a static report.

``python -m jobs quality --config configs/quality.yaml [--run-date 2024-06-30] [--fail-on dead_pixels,blurry]``
``python -m jobs quality --config configs/quality.yaml --calibrate <output>/run=2024-06-30`` (suggest thresholds)

Reads the same inputs as restore, maps ``restore_core.quality.QualityScorer`` over them with an
actor pool, writes the per-image shards into a staging folder, then (in the driver below
``cluster_aggregation_rows`` staged rows, else with Ray Data over those shards, see
``jobs/quality_aggregate.py``: the driver receives only summaries) finds duplicate groups,
evaluates flags, compares with the previous finished run, writes ``flags.parquet``,
``summary.json``, ``report.html`` and ``_SUCCESS``, and publishes the folder as
``<output>/run=<date>/``, replacing an earlier run of the same date.

The verdict (``jobs.verdict``) is the exit code (0 pass, 1 a ``fail_on`` flag's share is over its
``max_share``, 3 a ``warn_on`` one is, 2 the job failed), ``status.json`` (in the run folder and in
``<output>/_status/run=<date>.json``, the latter also when the job fails) and the last line printed,
``QUALITY PASS|WARN|FAIL|ERROR <reason>``, for cron, Airflow and ``ray job submit`` wrappers.
"""

from __future__ import annotations

import argparse
import logging
import posixpath
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import imrestore_report as report
from jobs import logs, quality_incremental, quality_read, quality_score, verdict
from jobs.common import Summary, format_table
from jobs.config_quality import QualityJobConfig
from jobs.ray_utils import arrow_filesystem, init_ray, is_process_local
from restore_core import codec, run_wide
from restore_core.codec import cell_bytes
from restore_core.config import QualityConfig, check_ranges, to_dict
from restore_core.errors import UserError
from restore_core.io import datasets, lease, locations, lookup, staged
from restore_core.io.shards import probe_writable
from restore_core.quality import QualityScorer, check_flag_metrics, table_from_columns, thumbnail_jpeg

CONFIG = QualityJobConfig
log = logging.getLogger("jobs.quality")

#: Exit code when a --fail-on limit is passed (2 stays "the job failed", 3 is a --warn-on limit).
EXIT_LIMIT_PASSED = verdict.EXIT_CODES[verdict.FAIL]
#: Exit code when the job crashes (the CLI's default is 1, which here means a failed limit).
EXIT_CRASH = verdict.EXIT_CODES[verdict.ERROR]


def error_line(message: str) -> str:
    """The last line the CLI prints when the job failed: ``QUALITY ERROR the job failed: ...``."""
    return verdict.crashed(message).line()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fail-on",
        metavar="FLAGS",
        help="comma-separated flags (e.g. dead_pixels,blurry); exit 1 when one's share passes its max_share",
    )
    parser.add_argument(
        "--warn-on",
        metavar="FLAGS",
        help="comma-separated flags; exit 3 (warn) when one's share passes its max_share and no --fail-on flag's does",
    )
    parser.add_argument("--run-date", metavar="YYYY-MM-DD", help="the run's date (default: today, UTC)")
    parser.add_argument(
        "--full",
        action="store_true",
        help="score every image again instead of reusing the last finished run's rows of unchanged files",
    )
    parser.add_argument(
        "--calibrate",
        metavar="RUN_FOLDER",
        help="a finished run of known-good images (<output>/run=<date>): print suggested thresholds, score nothing",
    )


def apply_arguments(args: argparse.Namespace) -> list[str]:
    extra = []
    if args.fail_on is not None:
        names = [n.strip() for n in args.fail_on.split(",") if n.strip()]
        extra.append(f"fail_on=[{', '.join(names)}]")
    if args.warn_on is not None:
        names = [n.strip() for n in args.warn_on.split(",") if n.strip()]
        extra.append(f"warn_on=[{', '.join(names)}]")
    if args.run_date:
        extra.append(f"run_date='{args.run_date}'")
    if args.calibrate:
        extra.append(f"calibrate={args.calibrate}")
    if args.full:
        extra.append("full=true")
    return extra


class ScoreActor:
    """The actor Ray Data runs: a QualityScorer whose output is an Arrow table of fixed schema.
    ``read_files``: the batches hold file paths (an image folder, ``jobs/quality_read.py``),
    which the actor reads itself. ``write_to``: a folder of the output where the actor writes
    the table (``quality_score.ShardWriter``), returning its row count instead."""

    def __init__(self, cfg: QualityJobConfig, read_files: bool = False, write_to: str | None = None) -> None:
        self.scorer = QualityScorer(cfg)
        self.reader = quality_read.FileReader(cfg.input) if read_files else None
        self.writer = quality_score.ShardWriter(cfg.output_location, write_to) if write_to else None

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        unread: dict[int, str] = {}
        if self.reader is not None:
            batch, unread = self.reader.read(batch)
        columns = self.scorer(batch)
        quality_read.mark_unreadable(columns, unread)
        table = table_from_columns(columns)
        return self.writer.write(table) if self.writer is not None else table


def _read_shards(fs: Any, folder: str) -> pa.Table:
    files = sorted(p for p in fs.find(folder) if p.endswith(".parquet"))
    if not files:
        raise UserError(f"the run wrote no shards under {folder}: is the input empty?")
    tables = []
    for path in files:
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f))
    return pa.concat_tables(tables, promote_options="default").sort_by("id")


def _thumbnail(cell: Any, cfg: QualityConfig) -> bytes | None:
    try:
        raw = cell_bytes(cell)
        return thumbnail_jpeg(codec.decode(raw, cfg.decode.max_pixels)[0], cfg.report.thumbnail_size) if raw else None
    except Exception:  # an image that cannot be shown gets no thumbnail; the run goes on
        return None


def _thumbnails_in_file(path: str, cfg: QualityConfig, wanted: list[str]) -> dict[str, bytes]:
    found = lookup.images_in_parquet(path, cfg.input, wanted)
    return {i: t for i, t in ((i, _thumbnail(c, cfg)) for i, c in found.items()) if t}


def group_thumbnails(cfg: QualityConfig, table: pa.Table, summary: dict[str, Any]) -> dict[str, bytes]:
    """Thumbnails of the duplicate-group members the report shows whose rows kept none (only
    flagged rows keep one): read back from the input by id, one Ray task per Parquet file."""
    shown = report.group_members_shown(summary)
    missing = sorted(set(shown) - set(report.table_thumbnails(table, shown)))
    if not missing or cfg.report.thumbnail_size <= 0:
        return {}
    try:
        if cfg.input.format == "images":
            files = lookup.images_in_folder(cfg.input, missing)
            return {i: t for i, t in ((i, _thumbnail(b, cfg)) for i, b in files.items()) if t}
        paths = datasets.list_files(cfg.input.location, cfg.input.format)
        ray = sys.modules.get("ray")  # imported only by a run that started Ray
        if is_process_local(cfg.input.path) or ray is None or not ray.is_initialized():
            parts = [_thumbnails_in_file(p, cfg, missing) for p in paths]
        else:
            task = ray.remote(num_cpus=0.25)(_thumbnails_in_file)
            cfg_ref = ray.put(cfg)
            parts = ray.get([task.remote(p, cfg_ref, missing) for p in paths])
    except Exception as exc:  # pictures are a courtesy: the report lists the groups' ids anyway
        log.warning("duplicate groups shown without thumbnails: %s", exc)
        return {}
    return {i: t for part in parts for i, t in part.items()}


def _aggregate_on_cluster(cfg: QualityJobConfig, fs: Any, staging: str) -> bool:
    """Whether the run-wide step runs on the cluster: from ``cluster_aggregation_rows`` staged rows
    (counted from the Parquet footers). Below that the driver reads the metric columns and is done
    in seconds, where a dozen Ray Data executions take minutes."""
    if cfg.cluster_aggregation_rows == 0:
        return True
    data = posixpath.join(staging, "data")
    rows = staged.row_count(fs, [p for p in fs.find(data) if p.endswith(".parquet")])
    return rows >= cfg.cluster_aggregation_rows


#: What writes the report once the summary holds the verdict: ``write_report(summary, history)``.
ReportWriter = Callable[[dict[str, Any], list[dict[str, Any]]], Any]


def _aggregate_in_driver(
    cfg: QualityConfig, fs: Any, out_fs: Any, root: str, staging: str, date: str, previous_date: str | None
) -> tuple[dict[str, Any], ReportWriter]:
    """The run-wide step below ``cluster_aggregation_rows``, in this process (seconds, where a
    dozen Ray Data executions take minutes), compact and streaming (``restore_core.run_wide``:
    a few columns at a time, ~60 bytes a row); writes ``flags.parquet``."""
    previous_ids = None
    if previous_date:
        with fs.open(posixpath.join(root, f"{report.RUN_PREFIX}{previous_date}", "flags.parquet"), "rb") as f:
            previous_ids = pq.read_table(f, columns=["id"]).column("id").combine_chunks()
    result = run_wide.aggregate(fs, staging, cfg, date, previous_ids, report.GROUP_THUMBS)
    summary = result.summary
    previous = report.read_summary(fs, root, previous_date) if previous_date else None
    summary["drift"] = report.compare(summary, previous, (), None, id_diff=result.id_diff)

    def write_report(full: dict[str, Any], history: list[dict[str, Any]]) -> Any:
        kept = pa.table(
            {
                "id": pa.array(list(result.kept_thumbs), pa.string()),
                "thumbnail": pa.array(list(result.kept_thumbs.values()), pa.binary()),
            }
        )
        thumbs = {**group_thumbnails(cfg, kept, full), **result.kept_thumbs}
        return report.write_report_parts(fs, staging, full, history, cfg, result.histograms, result.worst, thumbs)

    return summary, write_report


def _aggregate_with_ray(
    cfg: QualityConfig, fs: Any, out_fs: Any, root: str, staging: str, date: str, previous_date: str | None
) -> tuple[dict[str, Any], ReportWriter]:
    """The run-wide step on the cluster (jobs/quality_aggregate.py): the driver gets summaries only."""
    from jobs import quality_aggregate  # imports Ray: only runs that use it

    prev_flags = posixpath.join(root, f"{report.RUN_PREFIX}{previous_date}", "flags.parquet") if previous_date else None
    run_agg = quality_aggregate.aggregate_run(cfg, fs, out_fs, staging, date, prev_flags)
    summary = run_agg.summary
    previous = report.read_summary(fs, root, previous_date) if previous_date else None
    summary["drift"] = report.compare(summary, previous, (), None, id_diff=run_agg.id_diff)

    def write_report(full: dict[str, Any], history: list[dict[str, Any]]) -> Any:
        shown = report.group_members_shown(full)
        kept = quality_aggregate.kept_thumbnails(out_fs, posixpath.join(staging, "data"), shown)
        thumbs = {**group_thumbnails(cfg, kept, full), **report.table_thumbnails(kept, shown)}
        return report.write_report_parts(fs, staging, full, history, cfg, run_agg.histograms, run_agg.worst, thumbs)

    return summary, write_report


def calibrate(cfg: QualityJobConfig) -> Summary:
    """Suggested thresholds from the per-image metrics of a finished run of known-good images."""
    fs, folder = cfg.calibrate_location.filesystem()
    if not fs.exists(posixpath.join(folder, report.SUCCESS)):
        raise UserError(
            f"calibrate: {cfg.calibrate} is not a finished quality run (no {report.SUCCESS}); give <output>/run=<date>"
        )
    table = report.with_run_flags(_read_shards(fs, posixpath.join(folder, "data")), cfg)
    suggestions = report.suggest_thresholds(table, cfg)
    rows = [
        [n, f"{s['metric']} {s['op']} {s['current']:.4g}", f"{100 * s['current_share']:.2f}%", f"{s['suggested']:.4g}"]
        for n, s in suggestions.items()
    ]
    values: dict[str, Any] = {"run": cfg.calibrate, "images": table.num_rows}
    for k, line in enumerate(report.calibration_lines(suggestions), 1):
        values[f"suggest {k}"] = line
    return Summary(
        job="quality calibrate",
        values=values,
        table=format_table(["flag", "current rule", "flagged here", "suggested value"], rows),
    )


def run(cfg: QualityJobConfig) -> Summary:
    check_ranges(cfg)  # the loader checks these too; a config built in code gets the same checks
    if cfg.calibrate:
        return calibrate(cfg)
    if not cfg.output:
        raise UserError("output is empty: set it to the folder that holds the quality runs (run=<date>/ go inside)")
    if is_process_local(cfg.output):
        raise UserError(f"output {cfg.output!r} lives in one process only; Ray workers cannot write there")
    if not cfg.input.path:
        raise UserError("input.path is empty: point it at the images to check (Parquet files or a folder)")
    check_flag_metrics(cfg.flags)
    date = report.run_date_or_today(cfg.run_date)
    # The runs must never land inside what the job reads: the next night would score them too.
    locations.check_apart([("input.path", cfg.input.path)], [("output", cfg.output)])
    probe_writable(cfg.output_location, key="output")
    fs, root = cfg.output_location.filesystem()
    started = verdict.now()
    try:
        datasets.list_files(cfg.input.location, cfg.input.format)  # exists, has images
        earlier_run = posixpath.join(root, f"{report.RUN_PREFIX}{date}")
        if fs.exists(earlier_run) and not any(
            fs.exists(posixpath.join(earlier_run, n)) for n in (report.SUCCESS, "summary.json")
        ):
            # A rerun replaces the run of its date; a folder of that name quality did not write stays.
            raise UserError(
                f"{cfg.output}/{report.RUN_PREFIX}{date} exists but is not a quality run (no {report.SUCCESS} or "
                "summary.json): move it away or choose another output"
            )
        with lease.held(fs, root.rstrip("/"), cfg.output, "quality"):
            return _run(cfg, date, fs, root, started)
    except BaseException as exc:
        # The output is known and writable: leave the verdict where a scheduler looks for it.
        _write_error_status(cfg, fs, root, date, started, exc)
        raise


def _write_error_status(cfg: QualityJobConfig, fs: Any, root: str, date: str, started: str, exc: BaseException) -> None:
    rec = verdict.record(
        verdict.crashed(logs.redact(verdict.describe_error(exc))),
        run_date=date,
        started=started,
        finished=verdict.now(),
        fail_on=cfg.fail_on,
        warn_on=cfg.warn_on,
    )
    try:
        report.write_json(fs, verdict.status_path(root, date), rec)
    except Exception as write_exc:  # never hide the job's own error behind this one
        log.warning("could not write %s: %s", verdict.status_path(root, date), write_exc)


def _run(cfg: QualityJobConfig, date: str, fs: Any, root: str, started: str) -> Summary:
    t0 = time.perf_counter()
    staging = report.staging_path(root, date)
    # Incremental: the last finished run's rows of unchanged files are copied into staging/data;
    # only new and changed files are scored (all of them on a full rescan): in this process when
    # they are few (no Ray started), else by the actor pool.
    inc = quality_incremental.prepare(cfg, date, fs, root, staging)
    peak = {"planned": _peak_rss_mib()}
    out_fs, _ = arrow_filesystem(cfg.output_location)
    scored = quality_score.score(cfg, inc, fs, staging, ScoreActor)
    t_score = time.perf_counter() - t0
    peak["scored"] = _peak_rss_mib()

    try:
        earlier = [d for d in report.list_runs(fs, root) if d < date]
        history = [report.read_summary(fs, root, d) for d in earlier[-max(cfg.report.history_runs - 1, 0) :]]
        on_cluster = _aggregate_on_cluster(cfg, fs, staging)
        if on_cluster:
            init_ray(cfg.ray)
        aggregate = _aggregate_with_ray if on_cluster else _aggregate_in_driver
        summary, write_report = aggregate(cfg, fs, out_fs, root, staging, date, earlier[-1] if earlier else None)
        decision = verdict.decide(summary, cfg.fail_on, cfg.warn_on)
        _annotate(summary, cfg, decision, inc, scored.where, t_score, on_cluster)
        write_report(summary, history)
        summary["seconds"]["total"] = time.perf_counter() - t0
        # The driver's memory high-water mark after each step (MiB): what to size a driver node by
        summary["driver_peak_rss_mib"] = {**peak, "aggregated": _peak_rss_mib()}
        url, final = _publish(cfg, fs, root, staging, date, started, decision, summary)
    except BaseException:
        if fs.exists(staging):  # leave no half-built staging folder behind
            fs.rm(staging, recursive=True)
        raise
    log.info("quality run published at %s", final)
    return _job_summary(summary, date, inc, scored, decision, url)


def _peak_rss_mib() -> float | None:
    """This process's peak resident memory so far, MiB (``ru_maxrss``: KiB on Linux, bytes on
    macOS); None where there is no ``resource`` module (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kib / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _annotate(
    summary: dict[str, Any],
    cfg: QualityJobConfig,
    decision: verdict.Verdict,
    inc: quality_incremental.Plan,
    scored_in: str,
    t_score: float,
    on_cluster: bool,
) -> None:
    """The verdict, timings, incremental counts and config added to the run's summary."""
    summary["failures"] = decision.failed
    summary["warnings"] = decision.warned
    summary["fail_on"] = list(cfg.fail_on)
    summary["warn_on"] = list(cfg.warn_on)
    summary["verdict"] = decision.verdict
    summary["seconds"] = {"score_and_write": t_score}
    summary["scored_in"] = scored_in
    inc.rows_scored = summary["rows"] - inc.rows_reused
    summary["incremental"] = inc.as_dict()
    summary["images_per_second"] = inc.rows_scored / t_score if t_score > 0 else 0.0
    summary["config"] = to_dict(cfg)
    summary["aggregated_on"] = "cluster" if on_cluster else "driver"


def _publish(
    cfg: QualityJobConfig,
    fs: Any,
    root: str,
    staging: str,
    date: str,
    started: str,
    decision: verdict.Verdict,
    summary: dict[str, Any],
) -> tuple[str, str]:
    """summary.json, the status and _SUCCESS written to staging, the run published: ``(url, final path)``."""
    report.write_json(fs, posixpath.join(staging, "summary.json"), summary)
    url = cfg.output.rstrip("/") + f"/{report.RUN_PREFIX}{date}"
    status = verdict.record(
        decision,
        run_date=date,
        started=started,
        finished=verdict.now(),
        summary=summary,
        run=url,
        fail_on=cfg.fail_on,
        warn_on=cfg.warn_on,
    )
    report.write_json(fs, posixpath.join(staging, verdict.STATUS_FILE), status)
    report.put(fs, posixpath.join(staging, report.SUCCESS), f"{date}\n".encode())
    final = report.publish_run(fs, staging, root, date)
    report.write_json(fs, verdict.status_path(root, date), status)
    return url, final


def _job_summary(
    summary: dict[str, Any],
    date: str,
    inc: quality_incremental.Plan,
    scored: quality_score.Scored,
    decision: verdict.Verdict,
    url: str,
) -> Summary:
    """The job's closing table: flag counts, the run's numbers, failures and warnings."""
    rows = [
        [n, f["rule"], f["count"], f"{100 * f['share']:.2f}%", f"{100 * f['max_share']:.2f}%"]
        for n, f in summary["flags"].items()
    ]
    values: dict[str, Any] = {
        "run date": date,
        "images": summary["rows"],
        "unreadable": summary["errors"],
        "compared with": summary["drift"].get("previous_run") or "(no earlier run)",
        "scanned": inc.sentence(),
        "actors": scored.actors if scored.where == "ray" else f"none (scored {scored.where}: no Ray started)",
        "images/s (score+write)": summary["images_per_second"],
        "seconds": summary["seconds"]["total"],
    }
    for k, sentence in enumerate(summary["drift"]["sentences"], 1):
        values[f"change {k}"] = sentence
    for k, line in enumerate(decision.failed, 1):
        values[f"FAILED {k}"] = line
    for k, line in enumerate(decision.warned, 1):
        values[f"WARNING {k}"] = line
    return Summary(
        job="quality",
        values=values,
        outputs={
            "run": url,
            "report": url + "/report.html",
            "summary": url + "/summary.json",
            "status": url + "/" + verdict.STATUS_FILE,
        },
        table=format_table(["flag", "rule", "images", "share", "limit"], rows),
        exit_code=decision.exit_code,
        final_line=decision.line(),
    )
