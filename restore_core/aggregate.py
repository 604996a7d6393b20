"""Run-wide statistics from small pieces: the pure half of the quality job's aggregation.

The quality job (``jobs.quality_aggregate``) computes everything that needs the whole run (flag
counts, metric quantiles and histograms, duplicate groups, odd size and aspect ratio) as Ray Data
operations over the staged shards; the driver only ever holds small summaries. This module holds
the parts that need no Ray, so they are tested in-process and give the same numbers as the
in-memory functions of :mod:`restore_core.quality` and :mod:`restore_core.quality_summary`:

- **Near duplicates by locality-sensitive hashing.** Two 64-bit hashes within ``d`` bits of each
  other agree exactly on at least one of ``d + 1`` disjoint bit bands (pigeonhole), so hashes are
  grouped per ``(band, band value)`` (:func:`band_keys`), only hashes in one bucket are compared
  (:func:`bucket_edges`, with a pluggable ``confirm``: Hamming distance by default), and the
  confirmed pairs, a few per duplicate, are joined by a union-find (:class:`UnionFind`); these
  live in :mod:`restore_core.lsh` and are re-exported here.
- **Odd size and aspect ratio** from the run's ``(width, height) -> count`` table
  (:func:`shape_stats`): weighted medians are exact, so the robust z-scores equal
  :func:`restore_core.quality.shape_columns`'s.
- **Blur against the run** from the run's ``log(blur_width)`` counted in bins of ``BLUR_STEP``
  (:func:`blur_stats`): the median and MAD equal :func:`restore_core.quality.blur_stats`'s within a bin.
- **Per-block partial summaries** (:class:`Partial`): counts, finite count/sum/min/max, top-k
  rows per flag and fine histograms, merged pairwise in any order and serialised without pickle.
  Quantiles come from a 4,096-bin histogram in asinh space that also keeps each bin's smallest and
  largest value (:func:`quantiles_from_histogram`): exact where a bin holds one distinct value,
  otherwise within that bin's spread.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from restore_core.config import FlagRule
from restore_core.lsh import Confirm as Confirm
from restore_core.lsh import DuplicateIndex as DuplicateIndex
from restore_core.lsh import UnionFind as UnionFind
from restore_core.lsh import band_keys as band_keys
from restore_core.lsh import bands as bands
from restore_core.lsh import bucket_edges as bucket_edges
from restore_core.lsh import duplicate_index as duplicate_index
from restore_core.lsh import hamming_confirm as hamming_confirm
from restore_core.lsh import informative as informative
from restore_core.quality import blur_deviation, evaluate_flags

#: Bins of the fine histogram quantiles are read from (asinh space, between the run's min and max).
FINE_BINS = 4096
#: Bins of the report's histogram plots (as ``report.histogram_png``'s ``ax.hist(bins=40)``).
PLOT_BINS = 40

# ----------------------------------------------------------------------------- odd size and aspect


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """``np.median`` of ``values`` each repeated ``weights`` times (NaN when empty)."""
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.int64)
    keep = np.isfinite(v) & (w > 0)
    v, w = v[keep], w[keep]
    n = int(w.sum())
    if n == 0:
        return float("nan")
    order = np.argsort(v, kind="stable")
    v, cum = v[order], np.cumsum(w[order])
    lo = v[np.searchsorted(cum, (n - 1) // 2, side="right")]
    hi = v[np.searchsorted(cum, n // 2, side="right")]
    return float((lo + hi) / 2)


@dataclass(frozen=True)
class ShapeStats:
    """Medians and robust spreads of a run's image shapes (log units), see :func:`shape_stats`."""

    med_lw: float
    med_lh: float
    med_common: float
    scale_common: float
    med_aspect: float
    scale_aspect: float

    def columns(self, width: np.ndarray, height: np.ndarray) -> dict[str, np.ndarray]:
        """``size_deviation`` and ``aspect_deviation`` of a batch, as ``quality.shape_columns``."""
        lw, lh, ok = _logs(width, height)
        common = _common(lw - self.med_lw, lh - self.med_lh, ok)
        size = np.abs(common - self.med_common) / self.scale_common
        aspect = np.abs((lw - lh) - self.med_aspect) / self.scale_aspect
        size[~ok] = np.nan
        aspect[~ok] = np.nan
        return {"size_deviation": size, "aspect_deviation": aspect}


def _logs(width: np.ndarray, height: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    w = np.asarray(width, dtype=np.float64)
    h = np.asarray(height, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        lw = np.where(w > 0, np.log(w), np.nan)
        lh = np.where(h > 0, np.log(h), np.nan)
    return lw, lh, np.isfinite(lw) & np.isfinite(lh)


def _common(dw: np.ndarray, dh: np.ndarray, ok: np.ndarray) -> np.ndarray:
    common = np.where(np.sign(dw) == np.sign(dh), np.sign(dw) * np.minimum(np.abs(dw), np.abs(dh)), 0.0)
    common[~ok] = np.nan
    return common


def shape_stats(width: np.ndarray, height: np.ndarray, count: np.ndarray, floor: float) -> ShapeStats:
    """The run's shape statistics from its ``(width, height) -> rows`` table (distinct sizes only)."""
    lw, lh, ok = _logs(width, height)
    c = np.where(ok, np.asarray(count, dtype=np.int64), 0)
    med_lw, med_lh = weighted_median(lw, c), weighted_median(lh, c)
    common = _common(lw - med_lw, lh - med_lh, ok)
    aspect = lw - lh

    def spread(v: np.ndarray) -> tuple[float, float]:
        med = weighted_median(v, c)
        if not np.isfinite(med):
            return float("nan"), max(floor, 1e-12)
        mad = weighted_median(np.abs(v - med), c)
        return med, max(1.4826 * mad, floor)

    mc, sc = spread(common)
    ma, sa = spread(aspect)
    return ShapeStats(med_lw, med_lh, mc, sc, ma, sa)


#: Width (log units) of the bins ``log(blur_width)`` is counted in for the run's blur statistics.
BLUR_STEP = 1e-3


def blur_bins(blur_width: np.ndarray) -> np.ndarray:
    """``round(log(blur_width) / BLUR_STEP)`` as int64 for the finite, positive widths (others dropped)."""
    v = np.asarray(blur_width, dtype=np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    return np.rint(np.log(v) / BLUR_STEP).astype(np.int64)


@dataclass(frozen=True)
class BlurStats:
    """The run's typical blur and its spread (log units), see :func:`blur_stats`."""

    center: float
    scale: float

    def columns(self, blur_width: np.ndarray) -> dict[str, np.ndarray]:
        """``blur_deviation`` of a batch, as ``quality.blur_columns``."""
        return {"blur_deviation": blur_deviation(blur_width, self.center, self.scale)}


def blur_stats(bins: np.ndarray, count: np.ndarray, floor: float) -> BlurStats:
    """The run's blur statistics from its ``blur bin -> rows`` table (:func:`blur_bins`): the
    median and ``max(1.4826 * MAD, floor)`` of ``log(blur_width)``, as
    :func:`restore_core.quality.blur_stats` within ``BLUR_STEP``."""
    v = np.asarray(bins, dtype=np.float64) * BLUR_STEP
    c = np.asarray(count, dtype=np.int64)
    med = weighted_median(v, c)
    if not np.isfinite(med):
        return BlurStats(float("nan"), max(floor, 1e-12))
    mad = weighted_median(np.abs(v - med), c)
    return BlurStats(med, max(1.4826 * mad, floor, 1e-12))


# ----------------------------------------------------------------------------- partial summaries


@dataclass
class Partial:
    """A mergeable summary of some rows (one block, or many merged).

    ``flags``: per enabled flag, rows raised; ``count/total/lo/hi``: per metric, finite values,
    their sum, min and max; ``top``: per flag, up to ``k`` rows furthest past the threshold, as
    ``(sort key, id, value)`` with the smallest sort keys kept; ``fine``/``fine_lo``/``fine_hi``
    and ``plot``: histograms, filled only in the second pass (they need the run's ranges).
    """

    rows: int = 0
    ok: int = 0
    flags: dict[str, int] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)
    total: dict[str, float] = field(default_factory=dict)
    lo: dict[str, float] = field(default_factory=dict)
    hi: dict[str, float] = field(default_factory=dict)
    top: dict[str, list[tuple[float, str, float]]] = field(default_factory=dict)
    fine: dict[str, np.ndarray] = field(default_factory=dict)
    fine_lo: dict[str, np.ndarray] = field(default_factory=dict)
    fine_hi: dict[str, np.ndarray] = field(default_factory=dict)
    plot: dict[str, np.ndarray] = field(default_factory=dict)

    def merge(self, other: Partial, k: int) -> Partial:
        out = Partial(rows=self.rows + other.rows, ok=self.ok + other.ok)
        for name in {*self.flags, *other.flags}:
            out.flags[name] = self.flags.get(name, 0) + other.flags.get(name, 0)
        for m in {*self.count, *other.count}:
            out.count[m] = self.count.get(m, 0) + other.count.get(m, 0)
            out.total[m] = self.total.get(m, 0.0) + other.total.get(m, 0.0)
            out.lo[m] = min(self.lo.get(m, np.inf), other.lo.get(m, np.inf))
            out.hi[m] = max(self.hi.get(m, -np.inf), other.hi.get(m, -np.inf))
        for name in {*self.top, *other.top}:
            out.top[name] = sorted([*self.top.get(name, []), *other.top.get(name, [])])[:k]
        for m in {*self.fine, *other.fine}:
            if m not in self.fine or m not in other.fine:
                src = self if m in self.fine else other
                out.fine[m], out.fine_lo[m], out.fine_hi[m] = src.fine[m], src.fine_lo[m], src.fine_hi[m]
            else:
                out.fine[m] = self.fine[m] + other.fine[m]
                out.fine_lo[m] = np.fmin(self.fine_lo[m], other.fine_lo[m])
                out.fine_hi[m] = np.fmax(self.fine_hi[m], other.fine_hi[m])
        for m in {*self.plot, *other.plot}:
            a, b = self.plot.get(m), other.plot.get(m)
            out.plot[m] = cast(np.ndarray, b if a is None else a if b is None else a + b)
        return out

    def to_bytes(self) -> bytes:
        """An ``.npz`` (no pickle): scalars and top-k rows in a JSON header, histograms as arrays."""
        head = {
            "rows": self.rows,
            "ok": self.ok,
            "flags": self.flags,
            "count": self.count,
            "total": self.total,
            "lo": {m: _finite_or_none(v) for m, v in self.lo.items()},
            "hi": {m: _finite_or_none(v) for m, v in self.hi.items()},
            "top": self.top,
        }
        arrays: dict[str, np.ndarray] = {"head": np.frombuffer(json.dumps(head).encode(), dtype=np.uint8)}
        for kind, d in (("fine", self.fine), ("fine_lo", self.fine_lo), ("fine_hi", self.fine_hi), ("plot", self.plot)):
            for m, a in d.items():
                arrays[f"{kind}/{m}"] = np.asarray(a)
        buf = io.BytesIO()
        np.savez(buf, **cast(dict[str, Any], arrays))
        return buf.getvalue()

    @staticmethod
    def from_bytes(data: bytes) -> Partial:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            head = json.loads(bytes(z["head"]).decode())
            p = Partial(rows=int(head["rows"]), ok=int(head["ok"]), flags=head["flags"], count=head["count"])
            p.total = head["total"]
            p.lo = {m: np.inf if v is None else v for m, v in head["lo"].items()}
            p.hi = {m: -np.inf if v is None else v for m, v in head["hi"].items()}
            p.top = {n: [(float(a), str(b), float(c)) for a, b, c in rows] for n, rows in head["top"].items()}
            for key in z.files:
                if "/" in key:
                    kind, m = key.split("/", 1)
                    getattr(p, kind)[m] = z[key]
        return p


def _finite_or_none(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def flag_sort_key(rule: FlagRule, values: np.ndarray) -> np.ndarray:
    """Ascending key of "furthest past the threshold first" (as ``report.worst_rows``)."""
    return -values if rule.op in (">", ">=") else values


def first_pass(
    columns: Mapping[str, np.ndarray],
    ids: Sequence[Any],
    status: Sequence[Any],
    metrics: Sequence[str],
    flags: Mapping[str, FlagRule],
    k: int,
) -> Partial:
    """Counts, finite sums/min/max and the top-``k`` rows per flag of one batch.

    ``columns``: float64 metric columns (every metric a flag or the summary names, when present).
    """
    p = Partial(rows=len(ids), ok=sum(s == "ok" for s in status))
    raised = evaluate_flags(columns, flags)
    for name, rule in flags.items():
        if not rule.enabled:
            continue
        hit = raised.get(name)
        p.flags[name] = int(hit.sum()) if hit is not None else 0
        if hit is None or k <= 0 or not hit.any():
            continue
        idx = np.flatnonzero(hit)
        v = np.asarray(columns[rule.metric], dtype=np.float64)[idx]
        key = flag_sort_key(rule, v)
        order = np.lexsort((np.array([str(ids[int(i)]) for i in idx]), key))[:k]
        p.top[name] = [(float(key[j]), str(ids[int(idx[j])]), float(v[j])) for j in order]
    for m in metrics:
        if m not in columns:
            continue
        v = np.asarray(columns[m], dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size:
            p.count[m], p.total[m], p.lo[m], p.hi[m] = int(v.size), float(v.sum()), float(v.min()), float(v.max())
    return p


def plot_transform(metric: str, lo: float, hi: float) -> tuple[bool, float, float]:
    """Whether the report plots ``metric`` in log10 (sharpness with a positive value, as
    ``report.histogram_png``), and the plot's range."""
    log = metric == "sharpness" and hi > 0
    if log:
        return True, float(np.log10(max(lo, 1e-12))), float(np.log10(max(hi, 1e-12)))
    return False, lo, hi


def second_pass(columns: Mapping[str, np.ndarray], ranges: Mapping[str, tuple[float, float]]) -> Partial:
    """Fine (quantile) and plot histograms of one batch, given each metric's run-wide range."""
    p = Partial()
    for m, (lo, hi) in ranges.items():
        if m not in columns:
            continue
        v = np.asarray(columns[m], dtype=np.float64)
        v = v[np.isfinite(v)]
        t0, t1 = np.arcsinh(lo), np.arcsinh(hi)
        b = _bin(np.arcsinh(v), t0, t1, FINE_BINS)
        p.fine[m] = np.bincount(b, minlength=FINE_BINS).astype(np.int64)
        flo = np.full(FINE_BINS, np.inf)
        fhi = np.full(FINE_BINS, -np.inf)
        np.minimum.at(flo, b, v)
        np.maximum.at(fhi, b, v)
        p.fine_lo[m], p.fine_hi[m] = flo, fhi
        log, a, z = plot_transform(m, lo, hi)
        pv = np.log10(np.maximum(v, 1e-12)) if log else v
        p.plot[m] = np.histogram(pv, bins=PLOT_BINS, range=(a, z) if z > a else (a - 0.5, a + 0.5))[0].astype(np.int64)
    return p


def _bin(t: np.ndarray, t0: float, t1: float, bins: int) -> np.ndarray:
    if t1 <= t0:
        return np.zeros(t.size, dtype=np.int64)
    return np.clip(((t - t0) / (t1 - t0) * bins).astype(np.int64), 0, bins - 1)


def quantiles_from_histogram(counts: np.ndarray, lo: np.ndarray, hi: np.ndarray, qs: Sequence[float]) -> list[float]:
    """``np.quantile(values, qs)`` (linear) from a histogram that keeps each bin's min and max.

    The value at rank ``r`` is exact when its bin holds one distinct value; otherwise the bin's
    ``c`` values are taken as evenly spread between its min and max.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    cum = np.cumsum(counts)

    def at(rank: int) -> float:
        b = int(np.searchsorted(cum, rank, side="right"))
        c = int(counts[b])
        before = int(cum[b]) - c
        if c <= 1 or hi[b] <= lo[b]:
            return float(lo[b])
        return float(lo[b] + (hi[b] - lo[b]) * (rank - before) / (c - 1))

    out = []
    for q in qs:
        pos = q * (n - 1)
        r0 = int(np.floor(pos))
        r1 = min(r0 + 1, n - 1)
        a, b = at(r0), at(r1)
        out.append(a + (pos - r0) * (b - a))
    return out


def plot_edges(metric: str, lo: float, hi: float) -> tuple[np.ndarray, bool]:
    """The plot histogram's bin edges (log10 units for sharpness) and whether they are log10."""
    log, a, z = plot_transform(metric, lo, hi)
    if z <= a:
        a, z = a - 0.5, a + 0.5
    return np.linspace(a, z, PLOT_BINS + 1), log
