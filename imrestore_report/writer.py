"""A quality run's report written into its run folder: plots/, thumbs/ and report.html.

Every link in the page is relative, so the folder opens from disk with no server.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa

from imrestore_report.html import render_html
from imrestore_report.plots import histogram_png, histogram_png_counts, history_png
from restore_core.config import QualityConfig
from restore_core.io.runs import put
from restore_core.quality import thumbnail_suffix
from restore_core.quality_summary import (
    GROUP_THUMBS,
    floats,
    group_members_shown,
    table_thumbnails,
    thresholds,
    worst_rows,
)


def write_report(
    fs: fsspec.AbstractFileSystem,
    folder: str,
    table: pa.Table,
    summary: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    cfg: QualityConfig,
    group_thumbs: Mapping[str, bytes] | None = None,
) -> str:
    """Write plots/, thumbs/ and report.html into ``folder`` (fsspec path); return the HTML's path.

    ``history`` is the earlier runs' summaries, oldest first (the current one is appended here).
    ``group_thumbs`` holds thumbnails (JPEG) of duplicate-group members whose rows kept none (only
    flagged rows do); the others come from ``table``.
    """
    pngs = {m: histogram_png(floats(table, m), m, thresholds(cfg, m)) for m in summary["quantiles"]}
    thumbs = {**(group_thumbs or {}), **table_thumbnails(table, group_members_shown(summary))}
    return write_report_parts(fs, folder, summary, history, cfg, pngs, worst_rows(table, cfg), thumbs)


def write_report_parts(
    fs: fsspec.AbstractFileSystem,
    folder: str,
    summary: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    cfg: QualityConfig,
    histograms: Mapping[str, bytes | tuple[np.ndarray, np.ndarray, bool]],
    worst: dict[str, list[dict[str, Any]]],
    group_thumbs: Mapping[str, bytes] | None = None,
) -> str:
    """:func:`write_report` from what the quality job's aggregation keeps: per metric a PNG or
    ``(edges, counts, log10)`` of its histogram, per flag its worst rows (``id``, ``value``,
    ``thumb`` image bytes (JPEG; PNG from older runs) or None, ``error``), and the thumbnails of
    the duplicate-group members shown (``{id: bytes}``)."""
    plots: list[tuple[str, str]] = []
    for m in summary["quantiles"]:
        h = histograms.get(m)
        if h is None:
            continue
        png = h if isinstance(h, bytes) else histogram_png_counts(h[0], h[1], m, thresholds(cfg, m), h[2])
        rel = f"plots/hist_{m}.png"
        put(fs, posixpath.join(folder, rel), png)
        plots.append((m, rel))
    runs = [*history, summary][-cfg.report.history_runs :]
    put(fs, posixpath.join(folder, "plots/flag_history.png"), history_png(runs))
    for name, rows in worst.items():
        for k, r in enumerate(rows):
            if r["thumb"]:
                r["src"] = f"thumbs/{name}_{k}{thumbnail_suffix(r['thumb'])}"
                put(fs, posixpath.join(folder, r["src"]), r["thumb"])
    group_images = _group_thumbnails_written(fs, folder, summary, dict(group_thumbs or {}))
    page = render_html(summary, plots, worst, group_images)
    path = posixpath.join(folder, "report.html")
    put(fs, path, page.encode("utf-8"))
    return path


def _group_thumbnails_written(
    fs: fsspec.AbstractFileSystem, folder: str, summary: Mapping[str, Any], thumbs: Mapping[str, bytes]
) -> list[list[dict[str, Any]]]:
    """Write the shown members' thumbnails of each listed duplicate group; per group ``[{id, src}]``."""
    group_images: list[list[dict[str, Any]]] = []
    for g, group in enumerate((summary.get("duplicate_groups") or {}).get("groups", [])):
        members = []
        for k, row_id in enumerate(group["ids"][:GROUP_THUMBS]):
            member: dict[str, Any] = {"id": row_id}
            if thumbs.get(row_id):
                member["src"] = f"thumbs/group_{g}_{k}{thumbnail_suffix(thumbs[row_id])}"
                put(fs, posixpath.join(folder, member["src"]), thumbs[row_id])
            members.append(member)
        group_images.append(members)
    return group_images
