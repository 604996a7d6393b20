"""A quality run's summary, flags, drift against the previous run, and its static HTML report.

Everything here works on a pyarrow table of per-image metrics (the quality shards, see
``restore_core.quality``) and on fsspec folders, so it runs in the job's driver or in a test
without Ray. A run folder ``<output>/run=<YYYY-MM-DD>/`` holds::

    data/part-*.parquet   per-image metrics (Ray-written), per-image flags, thumbnails of flagged rows
    flags.parquet         id, every flag (duplicates included), duplicate counts and group label
    summary.json          counts, quantiles, flag shares, duplicate groups, drift, failed limits
    report.html           the page people read; plots/ and thumbs/ beside it (relative links)
    _SUCCESS              written last: a run without it is unfinished and is never compared with
"""

from __future__ import annotations

import datetime as dt
import html
import io
import json
import math
import posixpath
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from restore_core.config import FlagRule, QualityConfig
from restore_core.errors import UserError
from restore_core.quality import (
    SUMMARY_METRICS,
    blur_columns,
    duplicate_columns,
    evaluate_flags,
    shape_columns,
)

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
RUN_PREFIX = "run="
SUCCESS = "_SUCCESS"
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

# Drift: what counts as a change worth a sentence.
FLAG_POINTS = 1.0  # a flag's share moved by at least this many percentage points
MEDIAN_RELATIVE = 0.2  # a metric's median moved by at least this share of its previous IQR (or value)


def run_date_or_today(value: str) -> str:
    """``value`` checked as YYYY-MM-DD, or today's UTC date when empty."""
    if not value:
        return dt.datetime.now(dt.timezone.utc).date().isoformat()
    if not _DATE.match(value):
        raise UserError(f"run_date must look like 2024-06-30, got {value!r}")
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        raise UserError(f"run_date {value!r} is not a real date") from None
    return value


# ----------------------------------------------------------------------------- per-run tables


def with_run_flags(table: pa.Table, cfg: QualityConfig) -> pa.Table:
    """Add the run-wide columns (duplicates, odd size and aspect ratio and blur against the run's
    own distribution) and recompute ``flags`` over the whole run."""
    dup = duplicate_columns(
        table.column("sha256").to_pylist(),
        table.column("dhash").to_pylist(),
        cfg.near_duplicate_distance,
        cfg.near_duplicate_min_bits,
    )
    dup.update(shape_columns(_floats(table, "width"), _floats(table, "height"), cfg.odd_spread_floor))
    dup.update(blur_columns(_floats(table, "blur_width"), cfg.blur_spread_floor))
    for name, values in dup.items():
        if name in table.column_names:
            table = table.drop_columns([name])
        table = table.append_column(name, pa.array(values))
    raised = _flag_arrays(table, cfg.flags)
    tags = [",".join(name for name, hit in raised.items() if hit[i]) for i in range(table.num_rows)]
    return table.set_column(table.column_names.index("flags"), "flags", pa.array(tags, pa.string()))


def _flag_arrays(table: pa.Table, flags: Mapping[str, FlagRule]) -> dict[str, np.ndarray]:
    cols = {
        c.metric: _floats(table, c.metric)
        for r in flags.values()
        for c in r.all_conditions()
        if c.metric in table.column_names
    }
    return evaluate_flags(cols, flags)


def _floats(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)


def summarize(table: pa.Table, cfg: QualityConfig, run_date: str) -> dict[str, Any]:
    """The run's numbers: rows, errors, metric quantiles, each flag's count and share, duplicates."""
    n = table.num_rows
    status = table.column("status").to_pylist()
    quantiles: dict[str, dict[str, float]] = {}
    for m in SUMMARY_METRICS:
        if m not in table.column_names:
            continue
        v = _floats(table, m)
        v = v[np.isfinite(v)]
        if v.size == 0:
            continue
        q = np.quantile(v, QUANTILES)
        quantiles[m] = {f"p{round(p * 100):02d}": float(x) for p, x in zip(QUANTILES, q, strict=True)}
        quantiles[m].update(mean=float(v.mean()), min=float(v.min()), max=float(v.max()), count=int(v.size))
    raised = _flag_arrays(table, cfg.flags)
    flags = {}
    for name, rule in cfg.flags.items():
        if not rule.enabled:
            continue
        count = int(raised[name].sum()) if name in raised else 0
        flags[name] = {
            "count": count,
            "share": count / n if n else 0.0,
            "rule": rule.describe(),
            "max_share": rule.max_share,
        }
    groups = duplicate_groups(table, cfg.report.max_duplicate_groups)
    return {
        "run_date": run_date,
        "rows": n,
        "ok": sum(s == "ok" for s in status),
        "errors": sum(s != "ok" for s in status),
        "quantiles": quantiles,
        "flags": flags,
        "duplicate_groups": groups,
    }


def duplicate_groups(table: pa.Table, limit: int) -> dict[str, Any]:
    """Near-duplicate groups (exact copies included), largest first: count and up to ``limit`` listed."""
    if "duplicate_group" not in table.column_names:
        return {"count": 0, "images": 0, "groups": []}
    label = table.column("duplicate_group").to_numpy(zero_copy_only=False)
    ids = table.column("id").to_pylist()
    sha = table.column("sha256").to_pylist()
    members: dict[int, list[int]] = {}
    for i in np.flatnonzero(label >= 0):
        members.setdefault(int(label[i]), []).append(int(i))
    ordered = sorted(members.values(), key=lambda m: (-len(m), ids[m[0]]))
    listed = []
    for m in ordered[:limit]:
        exact = len({sha[i] for i in m}) == 1
        listed.append({"size": len(m), "kind": "exact" if exact else "near", "ids": [ids[i] for i in m[:20]]})
    return {"count": len(members), "images": int(sum(len(m) for m in members.values())), "groups": listed}


def failures(summary: Mapping[str, Any], fail_on: Sequence[str]) -> list[str]:
    """One line for each ``fail_on`` flag whose share is over its ``max_share``; empty = pass."""
    lines = []
    for name in fail_on:
        f = summary["flags"].get(name)
        if f is None:  # a disabled flag cannot fail the run
            continue
        if f["share"] > f["max_share"]:
            lines.append(
                f"{name}: {f['count']} of {summary['rows']} images ({100 * f['share']:.2f}%) flagged "
                f"[{f['rule']}], limit {100 * f['max_share']:.2f}%, over by {100 * (f['share'] - f['max_share']):.2f} "
                "points"
            )
    return lines


# ----------------------------------------------------------------------------- drift


def compare(
    current: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    current_ids: Sequence[str],
    previous_ids: Sequence[str] | None,
    examples: int = 10,
    id_diff: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What changed since the previous run, as numbers and as sentences a person reads.

    Flags whose share moved by >= ``FLAG_POINTS`` points, metrics whose median moved by >=
    ``MEDIAN_RELATIVE`` of the previous inter-quartile range (or of the previous median when the
    IQR is 0), and the ids added and removed. ``id_diff`` (``ids_added``, ``ids_removed``,
    ``examples_added``, ``examples_removed``, as the quality job's distributed anti-join gives
    them) stands in for the two id lists when given.
    """
    if previous is None:
        return {"previous_run": None, "sentences": ["No earlier finished run to compare with."]}
    sentences: list[str] = []
    flag_changes = {}
    for name, f in current["flags"].items():
        before = previous.get("flags", {}).get(name, {}).get("share", 0.0)
        delta = 100 * (f["share"] - before)
        flag_changes[name] = {"before": before, "after": f["share"], "points": delta}
        if abs(delta) >= FLAG_POINTS:
            word = "rose" if delta > 0 else "fell"
            sentences.append(
                f"Flag {name} {word} from {100 * before:.1f}% to {100 * f['share']:.1f}% of images "
                f"({delta:+.1f} points)."
            )
    metric_changes = {}
    for m, q in current["quantiles"].items():
        pq_ = previous.get("quantiles", {}).get(m)
        if not pq_:
            continue
        scale = pq_["p75"] - pq_["p25"] or abs(pq_["p50"]) or 1.0
        moved = (q["p50"] - pq_["p50"]) / scale
        metric_changes[m] = {
            "p50_before": pq_["p50"],
            "p50_after": q["p50"],
            "p05_before": pq_["p05"],
            "p05_after": q["p05"],
            "p95_before": pq_["p95"],
            "p95_after": q["p95"],
            "moved_iqr": moved,
        }
        tail_moved = _tail_moved(q, pq_, scale)
        if abs(moved) >= MEDIAN_RELATIVE:
            word = "rose" if moved > 0 else "fell"
            sentences.append(f"Median {m} {word} from {pq_['p50']:.4g} to {q['p50']:.4g} ({moved:+.2f} IQR).")
        elif tail_moved:
            sentences.append(f"The {tail_moved} tail of {m} moved while its median held at {q['p50']:.4g}.")
    if id_diff is not None:
        n_added, n_removed = int(id_diff["ids_added"]), int(id_diff["ids_removed"])
        added, removed = list(id_diff["examples_added"]), list(id_diff["examples_removed"])
    else:
        cur, prev = set(current_ids), set(previous_ids or ())
        added, removed = sorted(cur - prev), sorted(prev - cur)
        n_added, n_removed = len(added), len(removed)
    if n_added or n_removed:
        sentences.append(f"{n_added} images added and {n_removed} removed since {previous['run_date']}.")
    err_delta = current["errors"] - previous.get("errors", 0)
    if err_delta:
        sentences.append(f"Undecodable images went from {previous.get('errors', 0)} to {current['errors']}.")
    if not sentences:
        sentences.append(f"No notable change since {previous['run_date']}.")
    return {
        "previous_run": previous["run_date"],
        "sentences": sentences,
        "flags": flag_changes,
        "metrics": metric_changes,
        "ids_added": n_added,
        "ids_removed": n_removed,
        "examples_added": added[:examples],
        "examples_removed": removed[:examples],
    }


def _tail_moved(q: Mapping[str, float], before: Mapping[str, float], scale: float) -> str:
    if abs(q["p05"] - before["p05"]) / scale >= 2 * MEDIAN_RELATIVE:
        return "low"
    if abs(q["p95"] - before["p95"]) / scale >= 2 * MEDIAN_RELATIVE:
        return "high"
    return ""


# ----------------------------------------------------------------------------- run folders


def list_runs(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    """Dates of the finished runs (those with ``_SUCCESS``) under ``root``, oldest first."""
    if not fs.exists(root):
        return []
    dates = []
    for entry in fs.ls(root, detail=False):
        name = posixpath.basename(entry.rstrip("/"))
        if name.startswith(RUN_PREFIX) and _DATE.match(name[len(RUN_PREFIX) :]):
            if fs.exists(posixpath.join(root, name, SUCCESS)):
                dates.append(name[len(RUN_PREFIX) :])
    return sorted(dates)


def read_summary(fs: fsspec.AbstractFileSystem, root: str, date: str) -> dict[str, Any]:
    with fs.open(posixpath.join(root, f"{RUN_PREFIX}{date}", "summary.json"), "r") as f:
        return dict(json.load(f))


def read_ids(fs: fsspec.AbstractFileSystem, root: str, date: str) -> list[str]:
    with fs.open(posixpath.join(root, f"{RUN_PREFIX}{date}", "flags.parquet"), "rb") as f:
        return [str(i) for i in pq.read_table(f, columns=["id"]).column("id").to_pylist() if i is not None]


def staging_path(root: str, date: str) -> str:
    """A fresh folder beside the runs where a run is built before it is published."""
    return posixpath.join(root, "_staging", f"{RUN_PREFIX}{date}.{uuid.uuid4().hex[:12]}")


def publish_run(fs: fsspec.AbstractFileSystem, staging: str, root: str, date: str) -> str:
    """Move a finished staging folder to ``<root>/run=<date>``, replacing an earlier run of that date.

    On a local filesystem this is two renames (the old run moves aside, the new one moves in), so
    readers see the old run or the new one, never a mix. Object stores have no rename: the old
    run's ``_SUCCESS`` is removed first, the new files are copied in and ``_SUCCESS`` is written
    last, so a reader that trusts only ``_SUCCESS`` never compares with a half-copied run.
    """
    final = posixpath.join(root, f"{RUN_PREFIX}{date}")
    local = "file" in _protocols(fs)
    if local:
        import os
        import shutil

        trash = None
        if os.path.exists(final):
            trash = staging + ".old"
            os.rename(final, trash)
        os.rename(staging, final)
        if trash:
            shutil.rmtree(trash, ignore_errors=True)
    else:
        if fs.exists(final):
            if fs.exists(posixpath.join(final, SUCCESS)):
                fs.rm(posixpath.join(final, SUCCESS))
            fs.rm(final, recursive=True)
        success = posixpath.join(staging, SUCCESS)
        for src in fs.find(staging):
            if src != success:
                fs.copy(src, posixpath.join(final, posixpath.relpath(src, staging)))
        put(fs, posixpath.join(final, SUCCESS), fs.cat(success))
        fs.rm(staging, recursive=True)
    return final


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    p = fs.protocol
    return (p,) if isinstance(p, str) else tuple(p)


# ----------------------------------------------------------------------------- plots and HTML


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def histogram_png(values: np.ndarray, metric: str, thresholds: Sequence[tuple[str, float]]) -> bytes:
    """A histogram of one metric (finite values), with the flag thresholds drawn as lines."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    v = values[np.isfinite(values)]
    log = metric == "sharpness" and v.size > 0 and (v > 0).any()
    fig, ax = plt.subplots(figsize=(4.2, 2.6))
    if log:
        v = np.log10(np.maximum(v, 1e-12))
    ax.hist(v, bins=40, color="#4c72b0")
    return _thresholds_drawn(fig, ax, thresholds, metric, log)


def _thresholds_drawn(fig: Any, ax: Any, thresholds: Sequence[tuple[str, float]], metric: str, log: bool) -> bytes:
    """A histogram's threshold lines and labels drawn, the figure as PNG bytes."""
    for name, t in thresholds:
        x = math.log10(max(t, 1e-12)) if log else t
        ax.axvline(x, color="#c44e52", linestyle="--", linewidth=1)
        ax.text(x, ax.get_ylim()[1] * 0.9, f" {name}", color="#c44e52", fontsize=7)
    ax.set_xlabel(f"log10({metric})" if log else metric)
    ax.set_ylabel("images")
    return _png(fig)


def histogram_png_counts(
    edges: np.ndarray, counts: np.ndarray, metric: str, thresholds: Sequence[tuple[str, float]], log: bool
) -> bytes:
    """:func:`histogram_png` from counts already binned (``edges`` in log10 units when ``log``),
    as the quality job's distributed aggregation gives them."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 2.6))
    ax.stairs(np.asarray(counts), np.asarray(edges), fill=True, color="#4c72b0")
    return _thresholds_drawn(fig, ax, thresholds, metric, log)


def history_png(history: Sequence[Mapping[str, Any]]) -> bytes:
    """Flag shares (%) over runs, one line a flag that was ever raised."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    dates = [h["run_date"] for h in history]
    names = sorted({n for h in history for n, f in h["flags"].items() if f["count"]})
    fig, ax = plt.subplots(figsize=(7, 3))
    for n in names:
        ax.plot(dates, [100 * h["flags"].get(n, {}).get("share", 0.0) for h in history], marker="o", label=n)
    if not names:
        ax.text(0.5, 0.5, "no flags raised", ha="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=7, loc="upper left")
    ax.set_ylabel("images flagged (%)")
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    return _png(fig)


def worst_rows(table: pa.Table, cfg: QualityConfig) -> dict[str, list[dict[str, Any]]]:
    """Per flag, the ``report.worst_per_flag`` flagged rows furthest past the threshold."""
    out: dict[str, list[dict[str, Any]]] = {}
    raised = _flag_arrays(table, cfg.flags)
    ids = table.column("id").to_pylist()
    has_thumbs = "thumbnail" in table.column_names
    for name, hit in raised.items():
        rule = cfg.flags[name]
        idx = np.flatnonzero(hit)
        if idx.size == 0:
            continue
        v = _floats(table, rule.metric)[idx]
        order = idx[np.argsort(-v if rule.op in (">", ">=") else v, kind="stable")]
        rows = []
        for i in order[: cfg.report.worst_per_flag]:
            thumb = table.column("thumbnail")[int(i)].as_py() if has_thumbs else None
            err = table.column("error")[int(i)].as_py()
            rows.append(
                {"id": ids[int(i)], "value": float(_floats(table, rule.metric)[int(i)]), "thumb": thumb, "error": err}
            )
        out[name] = rows
    return out


def suggest_thresholds(table: pa.Table, cfg: QualityConfig, target_share: float = 0.005) -> dict[str, dict[str, Any]]:
    """Thresholds for the per-image flags, suggested from a run known to be good.

    For each enabled flag on a numeric metric, the value past which only ``target_share`` of this
    run's images would be flagged (the metric's quantile on the flag's side), next to the current
    threshold and the share that one flags here. On a good run nearly nothing should be flagged,
    so a current share far above ``target_share`` says the threshold is too tight for this data;
    count-like flags (duplicates, decode errors) are left out.
    """
    out: dict[str, dict[str, Any]] = {}
    raised = _flag_arrays(table, cfg.flags)
    for name, rule in cfg.flags.items():
        if not rule.enabled or rule.metric not in table.column_names or rule.metric in _COUNT_METRICS:
            continue
        v = _floats(table, rule.metric)
        v = v[np.isfinite(v)]
        if v.size == 0:
            continue
        upper = rule.op in (">", ">=")
        q = float(np.quantile(v, 1.0 - target_share if upper else target_share))
        share = float(raised[name].mean()) if name in raised and raised[name].size else 0.0
        out[name] = {
            "metric": rule.metric,
            "op": rule.op,
            "current": rule.value,
            "current_share": share,
            "suggested": q,
            "target_share": target_share,
        }
    return out


_COUNT_METRICS = ("decode_error", "exact_duplicates", "near_duplicates")


def calibration_lines(suggestions: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per flag: current rule and share, the suggested threshold and a --set to apply it."""
    lines = []
    for name, sgg in suggestions.items():
        lines.append(
            f"{name}: {sgg['metric']} {sgg['op']} {sgg['current']:.4g} flags {100 * sgg['current_share']:.2f}% here; "
            f"{sgg['suggested']:.4g} would flag {100 * sgg['target_share']:.2f}%  "
            f"(--set flags.{name}.value={sgg['suggested']:.4g})"
        )
    return lines


#: Images of each listed duplicate group shown side by side in the report.
GROUP_THUMBS = 6


def group_members_shown(summary: Mapping[str, Any]) -> list[str]:
    """The ids whose thumbnails the report shows for the listed duplicate groups."""
    groups = (summary.get("duplicate_groups") or {}).get("groups", [])
    return list(dict.fromkeys(i for g in groups for i in g["ids"][:GROUP_THUMBS]))


def table_thumbnails(table: pa.Table, ids: Sequence[str]) -> dict[str, bytes]:
    """``{id: thumbnail PNG}`` for those of ``ids`` whose row in ``table`` kept a thumbnail."""
    if not ids or "thumbnail" not in table.column_names:
        return {}
    hit = pc.is_in(table.column("id"), value_set=pa.array(list(ids), table.schema.field("id").type))
    rows = table.select(["id", "thumbnail"]).filter(hit)
    return {
        str(i): t for i, t in zip(rows.column("id").to_pylist(), rows.column("thumbnail").to_pylist(), strict=True) if t
    }


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
    ``group_thumbs`` holds thumbnails (PNG) of duplicate-group members whose rows kept none (only
    flagged rows do); the others come from ``table``. Every link in the page is relative, so the
    folder opens from disk with no server.
    """
    pngs = {m: histogram_png(_floats(table, m), m, _thresholds(cfg, m)) for m in summary["quantiles"]}
    thumbs = {**(group_thumbs or {}), **table_thumbnails(table, group_members_shown(summary))}
    return write_report_parts(fs, folder, summary, history, cfg, pngs, worst_rows(table, cfg), thumbs)


def _thresholds(cfg: QualityConfig, metric: str) -> list[tuple[str, float]]:
    return [(n, c.value) for n, r in cfg.flags.items() if r.enabled for c in r.all_conditions() if c.metric == metric]


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
    ``thumb`` PNG bytes or None, ``error``), and the thumbnails of the duplicate-group members
    shown (``{id: PNG}``)."""
    plots: list[tuple[str, str]] = []
    for m in summary["quantiles"]:
        h = histograms.get(m)
        if h is None:
            continue
        png = h if isinstance(h, bytes) else histogram_png_counts(h[0], h[1], m, _thresholds(cfg, m), h[2])
        rel = f"plots/hist_{m}.png"
        put(fs, posixpath.join(folder, rel), png)
        plots.append((m, rel))
    runs = [*history, summary][-cfg.report.history_runs :]
    put(fs, posixpath.join(folder, "plots/flag_history.png"), history_png(runs))
    for name, rows in worst.items():
        for k, r in enumerate(rows):
            if r["thumb"]:
                r["src"] = f"thumbs/{name}_{k}.png"
                put(fs, posixpath.join(folder, r["src"]), r["thumb"])
    thumbs = dict(group_thumbs or {})
    group_images: list[list[dict[str, Any]]] = []
    for g, group in enumerate((summary.get("duplicate_groups") or {}).get("groups", [])):
        members = []
        for k, row_id in enumerate(group["ids"][:GROUP_THUMBS]):
            member: dict[str, Any] = {"id": row_id}
            if thumbs.get(row_id):
                member["src"] = f"thumbs/group_{g}_{k}.png"
                put(fs, posixpath.join(folder, member["src"]), thumbs[row_id])
            members.append(member)
        group_images.append(members)
    page = render_html(summary, plots, worst, group_images)
    path = posixpath.join(folder, "report.html")
    put(fs, path, page.encode("utf-8"))
    return path


def render_html(
    summary: Mapping[str, Any],
    plots: Sequence[tuple[str, str]],
    worst: Mapping[str, Sequence[Mapping[str, Any]]],
    group_images: Sequence[Sequence[Mapping[str, Any]]] = (),
) -> str:
    """The report page: what changed (words first), flags, failed limits, plots, worst images, groups.

    ``group_images``: per listed duplicate group, its first members as ``{id, src}`` (``src`` the
    thumbnail's relative path, absent when there is none), shown side by side."""
    e = html.escape
    drift = summary.get("drift") or {}
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Quality run {e(summary['run_date'])}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}"
        ".fail{color:#b00;font-weight:bold}.grid{display:flex;flex-wrap:wrap;gap:8px}"
        "figure{margin:0;font-size:11px;max-width:130px;word-break:break-all}"
        ".plots img{margin:4px;border:1px solid #ddd}.group{border-top:1px solid #ddd;margin:6px 0}"
        ".group p{margin:4px 0}</style></head><body>",
        f"<h1>Quality run {e(summary['run_date'])}</h1>",
        f"<p>{summary['rows']} images, {summary['ok']} read, {summary['errors']} unreadable.</p>",
    ]
    if summary.get("incremental"):
        from restore_core.io.file_identity import scan_sentence

        parts.append(f"<p id='scan'>{e(scan_sentence(summary['incremental']))}</p>")
    fails = summary.get("failures") or []
    if fails:
        parts.append("<h2 class='fail'>Limits passed</h2><ul>")
        parts += [f"<li class='fail'>{e(x)}</li>" for x in fails]
        parts.append("</ul>")
    parts.append(f"<h2 id='drift'>What changed since {e(str(drift.get('previous_run') or 'the last run'))}</h2><ul>")
    parts += [f"<li>{e(s)}</li>" for s in drift.get("sentences", ["No comparison made."])]
    parts.append("</ul>")
    if drift.get("examples_added") or drift.get("examples_removed"):
        parts.append(
            f"<p>Added (first {len(drift.get('examples_added', []))}): {e(', '.join(drift.get('examples_added', [])))}"
            f"<br>Removed (first {len(drift.get('examples_removed', []))}): "
            f"{e(', '.join(drift.get('examples_removed', [])))}</p>"
        )
    parts.append("<h2>Flags</h2><table><tr><th>flag</th><th>rule</th><th>images</th><th>share</th>")
    parts.append("<th>limit</th><th>previous</th></tr>")
    for name, f in summary["flags"].items():
        before = drift.get("flags", {}).get(name, {}).get("before")
        prev = f"{100 * before:.2f}%" if before is not None else "–"
        cls = " class='fail'" if f["share"] > f["max_share"] else ""
        parts.append(
            f"<tr{cls}><td>{e(name)}</td><td>{e(f['rule'])}</td><td>{f['count']}</td>"
            f"<td>{100 * f['share']:.2f}%</td><td>{100 * f['max_share']:.2f}%</td><td>{prev}</td></tr>"
        )
    parts.append("</table><h2>Flag rates over recent runs</h2>")
    parts.append("<img src='plots/flag_history.png' alt='flag rates over runs'>")
    parts.append("<h2>Metrics</h2><table><tr><th>metric</th>")
    parts += [f"<th>{k}</th>" for k in ("p01", "p05", "p25", "p50", "p75", "p95", "p99", "p50 before")]
    parts.append("</tr>")
    for m, q in summary["quantiles"].items():
        before = drift.get("metrics", {}).get(m, {}).get("p50_before")
        cells = "".join(f"<td>{q[k]:.4g}</td>" for k in ("p01", "p05", "p25", "p50", "p75", "p95", "p99"))
        parts.append(f"<tr><td>{e(m)}</td>{cells}<td>{'' if before is None else f'{before:.4g}'}</td></tr>")
    parts.append("</table><div class='plots'>")
    parts += [f"<img src='{e(rel)}' alt='histogram of {e(m)}'>" for m, rel in plots]
    parts.append("</div><h2>Worst images per flag</h2>")
    if not worst:
        parts.append("<p>No image flagged.</p>")
    for name, rows in worst.items():
        parts.append(f"<h3>{e(name)}</h3><div class='grid'>")
        for r in rows:
            label = f"{e(r['id'])}<br>{r['value']:.4g}"
            img = (
                f"<img src='{e(r['src'])}' alt='{e(r['id'])}'>" if r.get("src") else f"<i>{e(r.get('error') or '')}</i>"
            )
            parts.append(f"<figure>{img}<figcaption>{label}</figcaption></figure>")
        parts.append("</div>")
    groups = summary.get("duplicate_groups", {})
    parts.append(
        f"<h2 id='duplicates'>Duplicate groups</h2><p>{groups.get('count', 0)} groups holding "
        f"{groups.get('images', 0)} images.</p>"
    )
    for n, g in enumerate(groups.get("groups", [])):
        members = group_images[n] if n < len(group_images) else []
        shown = {m["id"] for m in members}
        rest = [i for i in g["ids"] if i not in shown]
        more = g["size"] - len(shown)
        parts.append(f"<div class='group'><p>{e(str(g['kind']))} ×{g['size']}</p><div class='grid'>")
        for m in members:
            img = f"<img src='{e(m['src'])}' alt='{e(m['id'])}'>" if m.get("src") else "<i>no thumbnail</i>"
            parts.append(f"<figure>{img}<figcaption>{e(m['id'])}</figcaption></figure>")
        parts.append("</div>")
        if not members:
            parts.append(f"<p>{e(', '.join(g['ids']))}</p>")
        elif more > 0:
            listed = f": {e(', '.join(rest))}" + ("…" if len(rest) < more else "") if rest else ""
            parts.append(f"<p>and {more} more{listed}</p>")
        parts.append("</div>")
    # Tells a reader (and the headless-browser test) whether every plot and thumbnail loaded.
    parts.append(
        "<p id='image-status'>checking images…</p><script>window.addEventListener('load',function(){"
        "var imgs=Array.prototype.slice.call(document.images);"
        "var bad=imgs.filter(function(i){return !(i.complete&&i.naturalWidth>0);});"
        "var s=document.getElementById('image-status');"
        "s.textContent=bad.length?bad.length+' of '+imgs.length+' images failed to load':"
        "'all '+imgs.length+' images loaded';s.dataset.loaded=imgs.length-bad.length;s.dataset.failed=bad.length;"
        "});</script></body></html>"
    )
    return "\n".join(parts)


def put(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path``, creating its folder (local filesystems need it, stores ignore it)."""
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    fs.pipe_file(path, data)


def write_json(fs: fsspec.AbstractFileSystem, path: str, data: Mapping[str, Any]) -> None:
    put(fs, path, json.dumps(data, indent=2, default=_json_default, allow_nan=False).encode("utf-8"))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")
