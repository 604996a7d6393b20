"""A quality run's run-wide step in one process, compact and streaming.

Below ``cluster_aggregation_rows`` the quality job computes duplicates, odd size and aspect,
blur against the run, flags, the summary and the report's histograms in its driver. This module
does it without ever holding a whole shard or a Python object per row:

1. one pass reads ``id, sha256, dhash, width, height, blur_width``: the hashes become ``uint64``
   arrays (the first 128 bits of the SHA-256, the 64-bit perceptual hash; parsed from the Arrow
   buffers), ids one Arrow array, sizes a ``(width, height) -> rows`` table, from which the
   duplicate columns (vectorised :func:`restore_core.quality.near_duplicate_groups`), the run's
   shape statistics (exact weighted medians) and its blur median and spread are computed;
2. a second pass reads the flag metrics batch by batch, computes the size, aspect and blur
   deviations of the batch, evaluates the flags, streams ``flags.parquet`` and merges per-batch
   counts and worst rows (:class:`restore_core.aggregate.Partial`);
3. the summary metrics are then read a few at a time (``METRICS_PER_PASS``): exact quantiles
   and the report's histogram counts.

What it holds grows by ~60 bytes a row (ids, hashes, duplicate columns; about 6 MB at 100,000
rows, plus transients of the duplicate step), against several hundred bytes and the thumbnails a
row when every shard was read whole. The numbers equal the whole-table functions' (a test
compares them); duplicate-group labels are the same too (the row number, in id order, of the
group's first member).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from restore_core import aggregate as agg
from restore_core.config import QualityConfig
from restore_core.duplicates import duplicate_arrays, hex_to_u64
from restore_core.io import staged
from restore_core.quality import (
    RUN_COLUMNS,
    SUMMARY_METRICS,
    blur_deviation,
    blur_stats,
    evaluate_flags,
)
from restore_core.quality_summary import QUANTILES, flag_counts, run_summary

#: Columns of flags.parquet, with their types.
FLAGS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("flags", pa.string()),
        ("exact_duplicates", pa.float64()),
        ("near_duplicates", pa.float64()),
        ("duplicate_group", pa.int64()),
        ("sha256", pa.string()),
        ("dhash", pa.string()),
    ]
)
#: Ids listed per duplicate group in the summary (as ``report.duplicate_groups``).
GROUP_IDS = 20


@dataclass
class DriverAggregate:
    """The summary (as ``report.summarize`` returns it), the report's histograms and worst rows,
    the id changes against the previous run, and the thumbnails of the duplicate groups shown."""

    summary: dict[str, Any]
    histograms: dict[str, tuple[np.ndarray, np.ndarray, bool]] = field(default_factory=dict)
    worst: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    id_diff: dict[str, Any] | None = None
    kept_thumbs: dict[str, bytes] = field(default_factory=dict)


def duplicate_groups(labels: np.ndarray, ids: pa.Array, sha: np.ndarray, limit: int) -> dict[str, Any]:
    """``report.duplicate_groups``'s result from the label column: groups largest first (ties by
    first id), ``limit`` of them listed with their first ids in id order."""
    rows = np.flatnonzero(labels >= 0)
    if rows.size == 0:
        return {"count": 0, "images": 0, "groups": []}
    t = pa.table({"label": labels[rows], "row": rows, "id": ids.take(pa.array(rows))})
    t = t.take(pc.sort_indices(t, sort_keys=[("label", "ascending"), ("id", "ascending")]))
    lab = t.column("label").to_numpy()
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    sizes = np.diff(np.r_[starts, lab.size])
    firsts = t.column("id").take(pa.array(starts)).to_pylist()
    order = sorted(range(starts.size), key=lambda g: (-int(sizes[g]), firsts[g] or ""))
    listed = []
    member_rows = t.column("row").to_numpy()
    for g in order[: max(limit, 0)]:
        s, e = int(starts[g]), int(starts[g] + sizes[g])
        keys = {tuple(k) for k in sha[member_rows[s:e]].tolist()}
        listed.append(
            {
                "size": e - s,
                "kind": "exact" if len(keys) == 1 else "near",
                "ids": t.column("id").slice(s, min(e - s, GROUP_IDS)).to_pylist(),
            }
        )
    return {"count": int(starts.size), "images": int(rows.size), "groups": listed}


# ----------------------------------------------------------------------------- the run


@dataclass
class _Keys:
    """The first pass's arrays, one entry per staged row in the passes' order."""

    ids: pa.Array
    run_columns: dict[str, np.ndarray]  # the duplicate columns
    sha: np.ndarray
    shape: agg.ShapeStats
    blur: tuple[float, float]  # the run's median log(blur_width) and its spread

    def deviations(self, t: pa.Table) -> dict[str, np.ndarray]:
        """``size_deviation``, ``aspect_deviation`` and ``blur_deviation`` of a batch holding
        ``width``, ``height`` and ``blur_width``."""
        cols = self.shape.columns(staged.floats(t, "width"), staged.floats(t, "height"))
        cols["blur_deviation"] = blur_deviation(staged.floats(t, "blur_width"), *self.blur)
        return cols


def _keys(fs: Any, files: list[str], cfg: QualityConfig) -> _Keys:
    """The first pass: arrays filled in place (no per-batch parts kept, no concatenated copies),
    each freed once the run-wide columns it feeds are computed."""
    n = staged.row_count(fs, files)
    sha = np.zeros((n, 2), dtype=np.uint64)
    dhash = np.zeros(n, dtype=np.uint64)
    valid = np.zeros(n, dtype=bool)
    blur = np.full(n, np.nan)
    sizes: dict[tuple[float, float], int] = {}  # the run's distinct (width, height): exact medians
    ids_parts = []
    offset = 0
    for t in staged.batches(fs, files, ["id", "sha256", "dhash", "width", "height", "blur_width"]):
        part = slice(offset, offset + t.num_rows)
        s_col = t.column("sha256").combine_chunks()
        hi, ok_hi = hex_to_u64(s_col, 16, 0)
        lo, ok_lo = hex_to_u64(s_col, 16, 16)
        dhash[part], ok_d = hex_to_u64(t.column("dhash").combine_chunks())
        sha[part, 0], sha[part, 1], valid[part] = hi, lo, ok_hi & ok_lo & ok_d
        ids_parts.append(t.column("id").combine_chunks().cast(pa.string()))
        wh = np.stack([staged.floats(t, "width"), staged.floats(t, "height")], axis=1)
        wh = wh[(wh[:, 0] > 0) & (wh[:, 1] > 0)]
        for (w, h), c in zip(*np.unique(wh, axis=0, return_counts=True), strict=True):
            sizes[(float(w), float(h))] = sizes.get((float(w), float(h)), 0) + int(c)
        blur[part] = staged.floats(t, "blur_width")
        offset += t.num_rows
    ids = pa.concat_arrays(ids_parts) if ids_parts else pa.array([], pa.string())
    del ids_parts
    rank = np.empty(len(ids), dtype=np.int64)
    rank[pc.sort_indices(ids).to_numpy()] = np.arange(len(ids))  # nulls last, as Table.sort_by
    d, min_bits = cfg.near_duplicate_distance, cfg.near_duplicate_min_bits
    run = duplicate_arrays(sha, dhash, valid, rank, d, min_bits)
    del dhash, valid, rank
    w_h = np.array(list(sizes), dtype=np.float64).reshape(-1, 2)
    shape = agg.shape_stats(w_h[:, 0], w_h[:, 1], np.array(list(sizes.values()), np.int64), cfg.odd_spread_floor)
    return _Keys(ids, run, sha, shape, blur_stats(blur, cfg.blur_spread_floor))


def _flags_pass(fs: Any, files: list[str], cfg: QualityConfig, keys: _Keys, flags_path: str) -> agg.Partial:
    """Flags evaluated batch by batch over the stored metrics and the run-wide columns;
    ``flags.parquet`` streamed; counts and worst rows merged."""
    names = set(staged.column_names(fs, files))
    metrics = list(dict.fromkeys(c.metric for r in cfg.flags.values() for c in r.all_conditions()))
    stored = [m for m in metrics if m in names and m not in keys.run_columns and m not in RUN_COLUMNS]
    k = cfg.report.worst_per_flag
    total = agg.Partial()
    writer = staged.StreamWriter(fs, flags_path)
    offset = 0
    try:
        read = list(dict.fromkeys(["status", "sha256", "dhash", "width", "height", "blur_width", *stored]))
        for t in staged.batches(fs, files, read):
            n = t.num_rows
            part = slice(offset, offset + n)
            columns = {m: staged.floats(t, m) for m in stored}
            columns.update({m: v[part] for m, v in keys.run_columns.items()})
            columns.update(keys.deviations(t))
            raised = evaluate_flags(columns, cfg.flags)
            tags = [",".join(name for name, hit in raised.items() if hit[i]) for i in range(n)]
            ids = keys.ids.slice(offset, n)
            out = {
                "id": ids,
                "flags": pa.array(tags, pa.string()),
                **{c: pa.array(keys.run_columns[c][part]) for c in ("exact_duplicates", "near_duplicates")},
                "duplicate_group": pa.array(keys.run_columns["duplicate_group"][part]),
                "sha256": t.column("sha256").cast(pa.string()),
                "dhash": t.column("dhash").cast(pa.string()),
            }
            writer.write(pa.table(out, schema=FLAGS_SCHEMA))
            batch = agg.first_pass(columns, ids.to_pylist(), t.column("status").to_pylist(), [], cfg.flags, k)
            total = total.merge(batch, k)
            offset += n
    finally:
        writer.close(FLAGS_SCHEMA)
    return total


#: Stored metrics read together by the summary step: one pass over the shards per group, and
#: 8 bytes a row per metric held (a few MB at 100,000 rows) while a group's statistics are made.
METRICS_PER_PASS = 6


def _metric_values(fs: Any, files: list[str], keys: _Keys) -> Iterator[tuple[str, np.ndarray]]:
    """``(metric, every row's value)`` of the summary metrics the run has, a few held at a time."""
    names = set(staged.column_names(fs, files))
    for m in SUMMARY_METRICS:
        if m in keys.run_columns:
            yield m, keys.run_columns[m]
    deviations = [m for m in SUMMARY_METRICS if m in RUN_COLUMNS and m not in keys.run_columns]
    if deviations:
        parts = [keys.deviations(t) for t in staged.batches(fs, files, ["width", "height", "blur_width"])]
        for m in deviations:
            yield m, np.concatenate([p[m] for p in parts]) if parts else np.empty(0)
        del parts
    stored = [m for m in SUMMARY_METRICS if m in names and m not in keys.run_columns and m not in RUN_COLUMNS]
    for start in range(0, len(stored), METRICS_PER_PASS):
        group = stored[start : start + METRICS_PER_PASS]
        values = staged.columns(fs, files, group)
        for m in group:
            yield m, values.pop(m)


def _metric_stats(
    fs: Any, files: list[str], keys: _Keys
) -> tuple[dict[str, dict[str, float]], dict[str, tuple[np.ndarray, np.ndarray, bool]]]:
    """Exact quantiles and the report's 40-bin histograms, in SUMMARY_METRICS order."""
    quantiles: dict[str, dict[str, float]] = {}
    histograms: dict[str, tuple[np.ndarray, np.ndarray, bool]] = {}
    for m, v in _metric_values(fs, files, keys):
        v = v[np.isfinite(v)]
        if v.size == 0:
            continue
        q = np.quantile(v, QUANTILES)
        quantiles[m] = {f"p{round(p * 100):02d}": float(x) for p, x in zip(QUANTILES, q, strict=True)}
        lo, hi = float(v.min()), float(v.max())
        quantiles[m].update(mean=float(v.mean()), min=lo, max=hi, count=int(v.size))
        edges, log_scale = agg.plot_edges(m, lo, hi)
        pv = np.log10(np.maximum(v, 1e-12)) if log_scale else v
        histograms[m] = (edges, np.histogram(pv, bins=edges)[0].astype(np.int64), log_scale)
    order = {m: i for i, m in enumerate(SUMMARY_METRICS)}
    return (
        dict(sorted(quantiles.items(), key=lambda kv: order[kv[0]])),
        dict(sorted(histograms.items(), key=lambda kv: order[kv[0]])),
    )


def id_changes(ids: pa.Array, previous: pa.Array | None, examples: int = 10) -> dict[str, Any] | None:
    """Ids added and removed since the previous run (distinct ids): counts and the first few."""
    if previous is None:
        return None
    cur = pc.unique(ids.drop_null())
    prev = pc.unique(previous.cast(pa.string()).drop_null())
    added = pc.filter(cur, pc.invert(pc.is_in(cur, value_set=prev)))
    removed = pc.filter(prev, pc.invert(pc.is_in(prev, value_set=cur)))

    def first(a: pa.Array) -> list[str]:
        return [str(x) for x in a.take(pc.array_sort_indices(a)[:examples]).to_pylist()]

    return {
        "ids_added": len(added),
        "ids_removed": len(removed),
        "examples_added": first(added),
        "examples_removed": first(removed),
    }


def aggregate(
    fs: Any, staging: str, cfg: QualityConfig, run_date: str, previous_ids: pa.Array | None, shown_groups: int = 6
) -> DriverAggregate:
    """The run-wide step over ``<staging>/data`` in this process; writes ``<staging>/flags.parquet``.

    ``previous_ids``: the previous run's ids (its ``flags.parquet``), None without one.
    ``shown_groups``: members per listed duplicate group whose kept thumbnails are read.
    """
    files = staged.shard_files(fs, posixpath.join(staging, "data"))
    keys = _keys(fs, files, cfg)
    first = _flags_pass(fs, files, cfg, keys, posixpath.join(staging, "flags.parquet"))
    quantiles, histograms = _metric_stats(fs, files, keys)
    n = first.rows
    groups = duplicate_groups(keys.run_columns["duplicate_group"], keys.ids, keys.sha, cfg.report.max_duplicate_groups)
    summary = run_summary(run_date, n, first.ok, quantiles, flag_counts(cfg.flags, first.flags, n), groups)
    worst_ids = {i for rows in first.top.values() for _, i, _ in rows}
    group_ids = {i for g in groups["groups"] for i in g["ids"][:shown_groups]}
    kept = staged.rows_by_id(fs, files, worst_ids | group_ids, ["thumbnail", "error"])
    worst = {
        name: [
            {"id": i, "value": v, "thumb": kept.get(i, {}).get("thumbnail"), "error": kept.get(i, {}).get("error")}
            for _, i, v in first.top[name]
        ]
        for name in cfg.flags
        if first.top.get(name)
    }
    thumbs = {i: r["thumbnail"] for i, r in kept.items() if i in group_ids and r.get("thumbnail")}
    return DriverAggregate(summary, histograms, worst, id_changes(keys.ids, previous_ids), thumbs)
