"""A quality run's numbers from its per-image metrics table: run-wide flags, summary, limits.

Pure functions of a pyarrow table of per-image metrics (the quality shards, see
``restore_core.quality``) and the quality config: the summary's counts, quantiles, flag shares
and duplicate groups, the failed limits, the worst rows per flag, thresholds suggested from a good
run, and which duplicate-group members the report shows. No storage here (run folders are
``restore_core.io.runs``) and no drawing (plots and the page are ``imrestore_report``).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
#: A run's date as it appears in its folder name (``run=2024-06-30``).
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

#: Images of each listed duplicate group shown side by side in the report.
GROUP_THUMBS = 6


def run_date_or_today(value: str) -> str:
    """``value`` checked as YYYY-MM-DD, or today's UTC date when empty."""
    if not value:
        return dt.datetime.now(dt.timezone.utc).date().isoformat()
    if not DATE.match(value):
        raise UserError(f"run_date must look like 2024-06-30, got {value!r}")
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        raise UserError(f"run_date {value!r} is not a real date") from None
    return value


def with_run_flags(table: pa.Table, cfg: QualityConfig) -> pa.Table:
    """Add the run-wide columns (duplicates, odd size and aspect ratio and blur against the run's
    own distribution) and recompute ``flags`` over the whole run."""
    dup = duplicate_columns(
        table.column("sha256").to_pylist(),
        table.column("dhash").to_pylist(),
        cfg.near_duplicate_distance,
        cfg.near_duplicate_min_bits,
    )
    dup.update(shape_columns(floats(table, "width"), floats(table, "height"), cfg.odd_spread_floor))
    dup.update(blur_columns(floats(table, "blur_width"), cfg.blur_spread_floor))
    for name, values in dup.items():
        if name in table.column_names:
            table = table.drop_columns([name])
        table = table.append_column(name, pa.array(values))
    raised = flag_arrays(table, cfg.flags)
    tags = [",".join(name for name, hit in raised.items() if hit[i]) for i in range(table.num_rows)]
    return table.set_column(table.column_names.index("flags"), "flags", pa.array(tags, pa.string()))


def flag_arrays(table: pa.Table, flags: Mapping[str, FlagRule]) -> dict[str, np.ndarray]:
    cols = {
        c.metric: floats(table, c.metric)
        for r in flags.values()
        for c in r.all_conditions()
        if c.metric in table.column_names
    }
    return evaluate_flags(cols, flags)


def floats(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)


def summarize(table: pa.Table, cfg: QualityConfig, run_date: str) -> dict[str, Any]:
    """The run's numbers: rows, errors, metric quantiles, each flag's count and share, duplicates."""
    n = table.num_rows
    status = table.column("status").to_pylist()
    quantiles: dict[str, dict[str, float]] = {}
    for m in SUMMARY_METRICS:
        if m not in table.column_names:
            continue
        v = floats(table, m)
        v = v[np.isfinite(v)]
        if v.size == 0:
            continue
        q = np.quantile(v, QUANTILES)
        quantiles[m] = {f"p{round(p * 100):02d}": float(x) for p, x in zip(QUANTILES, q, strict=True)}
        quantiles[m].update(mean=float(v.mean()), min=float(v.min()), max=float(v.max()), count=int(v.size))
    raised = flag_arrays(table, cfg.flags)
    counts = {name: int(flag.sum()) for name, flag in raised.items()}
    groups = duplicate_groups(table, cfg.report.max_duplicate_groups)
    ok = sum(s == "ok" for s in status)
    return run_summary(run_date, n, ok, quantiles, flag_counts(cfg.flags, counts, n), groups)


def flag_counts(flags: Mapping[str, FlagRule], counts: Mapping[str, int], rows: int) -> dict[str, dict[str, Any]]:
    """Each enabled flag's count (``counts``, 0 where absent), share of ``rows``, rule and allowed share."""
    out = {}
    for name, rule in flags.items():
        if rule.enabled:
            count = int(counts.get(name, 0))
            out[name] = {
                "count": count,
                "share": count / rows if rows else 0.0,
                "rule": rule.describe(),
                "max_share": rule.max_share,
            }
    return out


def run_summary(
    run_date: str,
    rows: int,
    ok: int,
    quantiles: dict[str, dict[str, float]],
    flags: dict[str, dict[str, Any]],
    groups: dict[str, Any],
) -> dict[str, Any]:
    """The run's ``summary.json`` numbers, the same keys whichever path computed them."""
    return {
        "run_date": run_date,
        "rows": rows,
        "ok": ok,
        "errors": rows - ok,
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


def worst_rows(table: pa.Table, cfg: QualityConfig) -> dict[str, list[dict[str, Any]]]:
    """Per flag, the ``report.worst_per_flag`` flagged rows furthest past the threshold."""
    out: dict[str, list[dict[str, Any]]] = {}
    raised = flag_arrays(table, cfg.flags)
    ids = table.column("id").to_pylist()
    has_thumbs = "thumbnail" in table.column_names
    for name, hit in raised.items():
        rule = cfg.flags[name]
        idx = np.flatnonzero(hit)
        if idx.size == 0:
            continue
        v = floats(table, rule.metric)[idx]
        order = idx[np.argsort(-v if rule.op in (">", ">=") else v, kind="stable")]
        rows = []
        for i in order[: cfg.report.worst_per_flag]:
            thumb = table.column("thumbnail")[int(i)].as_py() if has_thumbs else None
            err = table.column("error")[int(i)].as_py()
            rows.append(
                {"id": ids[int(i)], "value": float(floats(table, rule.metric)[int(i)]), "thumb": thumb, "error": err}
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
    raised = flag_arrays(table, cfg.flags)
    for name, rule in cfg.flags.items():
        if not rule.enabled or rule.metric not in table.column_names or rule.metric in _COUNT_METRICS:
            continue
        v = floats(table, rule.metric)
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


def thresholds(cfg: QualityConfig, metric: str) -> list[tuple[str, float]]:
    """``(flag, value)`` of every enabled flag condition on ``metric``: the lines a histogram draws."""
    return [(n, c.value) for n, r in cfg.flags.items() if r.enabled for c in r.all_conditions() if c.metric == metric]
