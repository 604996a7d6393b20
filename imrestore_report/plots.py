"""The quality report's plots as PNG bytes: one histogram per metric, flag shares over runs.

matplotlib is imported on first use (the Agg backend, no display), so importing the report
package keeps the CLI's start-up fast.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (unless a backend was chosen already)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    # Fixed margins, not bbox_inches="tight": that draws every figure twice (the report's ~20
    # histograms took ~4 s of a nightly run, more than half of it in that first draw).
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    _pyplot().close(fig)
    return buf.getvalue()


def histogram_png(values: np.ndarray, metric: str, thresholds: Sequence[tuple[str, float]]) -> bytes:
    """A histogram of one metric (finite values), with the flag thresholds drawn as lines."""
    v = values[np.isfinite(values)]
    log = metric == "sharpness" and v.size > 0 and (v > 0).any()
    fig, ax = _histogram_axes()
    if log:
        v = np.log10(np.maximum(v, 1e-12))
    ax.hist(v, bins=40, color="#4c72b0")
    return _thresholds_drawn(fig, ax, thresholds, metric, log)


def histogram_png_counts(
    edges: np.ndarray, counts: np.ndarray, metric: str, thresholds: Sequence[tuple[str, float]], log: bool
) -> bytes:
    """:func:`histogram_png` from counts already binned (``edges`` in log10 units when ``log``),
    as the quality job's distributed aggregation gives them."""
    fig, ax = _histogram_axes()
    ax.stairs(np.asarray(counts), np.asarray(edges), fill=True, color="#4c72b0")
    return _thresholds_drawn(fig, ax, thresholds, metric, log)


def _histogram_axes() -> tuple[Any, Any]:
    fig, ax = _pyplot().subplots(figsize=(4.2, 2.6))
    fig.subplots_adjust(left=0.17, right=0.97, top=0.95, bottom=0.2)
    return fig, ax


def _thresholds_drawn(fig: Any, ax: Any, thresholds: Sequence[tuple[str, float]], metric: str, log: bool) -> bytes:
    """A histogram's threshold lines and labels drawn, the figure as PNG bytes."""
    for name, t in thresholds:
        x = math.log10(max(t, 1e-12)) if log else t
        ax.axvline(x, color="#c44e52", linestyle="--", linewidth=1)
        ax.text(x, ax.get_ylim()[1] * 0.9, f" {name}", color="#c44e52", fontsize=7)
    ax.set_xlabel(f"log10({metric})" if log else metric)
    ax.set_ylabel("images")
    return _png(fig)


def history_png(history: Sequence[Mapping[str, Any]]) -> bytes:
    """Flag shares (%) over runs, one line a flag that was ever raised."""
    dates = [h["run_date"] for h in history]
    names = sorted({n for h in history for n, f in h["flags"].items() if f["count"]})
    fig, ax = _pyplot().subplots(figsize=(7, 3))
    fig.subplots_adjust(left=0.09, right=0.98, top=0.95, bottom=0.27)
    for n in names:
        ax.plot(dates, [100 * h["flags"].get(n, {}).get("share", 0.0) for h in history], marker="o", label=n)
    if not names:
        ax.text(0.5, 0.5, "no flags raised", ha="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=7, loc="upper left")
    ax.set_ylabel("images flagged (%)")
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    return _png(fig)
