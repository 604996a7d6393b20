"""The quality run's report: its numbers, its run folder, its plots and its HTML page.

One namespace for what the quality job does with a finished run (``import imrestore_report as
report``). The parts live in their layers: the numbers (run-wide flags, summary, failed limits,
worst rows, suggested thresholds) are pure and stay in the core (``restore_core.quality_summary``,
drift in ``restore_core.drift``); the run folders (listing, staging, publishing, JSON) are storage
(``restore_core.io.runs``); the plots (``plots.py``, matplotlib) and the page (``html.py`` with
the Jinja2 template ``templates/report.html.j2``, written by ``writer.py``) are this package's own.
"""

from restore_core.drift import FLAG_POINTS, MEDIAN_RELATIVE, compare
from restore_core.io.runs import (
    RUN_PREFIX,
    SUCCESS,
    list_runs,
    publish_run,
    put,
    read_ids,
    read_summary,
    staging_path,
    write_json,
)
from restore_core.quality_summary import (
    GROUP_THUMBS,
    QUANTILES,
    calibration_lines,
    duplicate_groups,
    failures,
    group_members_shown,
    run_date_or_today,
    suggest_thresholds,
    summarize,
    table_thumbnails,
    with_run_flags,
    worst_rows,
)

from .html import render_html
from .plots import histogram_png, histogram_png_counts, history_png
from .writer import write_report, write_report_parts

__all__ = [
    "FLAG_POINTS",
    "GROUP_THUMBS",
    "MEDIAN_RELATIVE",
    "QUANTILES",
    "RUN_PREFIX",
    "SUCCESS",
    "calibration_lines",
    "compare",
    "duplicate_groups",
    "failures",
    "group_members_shown",
    "histogram_png",
    "histogram_png_counts",
    "history_png",
    "list_runs",
    "publish_run",
    "put",
    "read_ids",
    "read_summary",
    "render_html",
    "run_date_or_today",
    "staging_path",
    "suggest_thresholds",
    "summarize",
    "table_thumbnails",
    "with_run_flags",
    "worst_rows",
    "write_json",
    "write_report",
    "write_report_parts",
]
