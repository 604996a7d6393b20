"""Run-wide columns against the run's own distribution: odd size, odd aspect ratio, blur.

Robust z-scores (median and MAD) over a whole run held in memory. Re-exported by
:mod:`restore_core.quality`. Nothing here imports ray.
"""

from __future__ import annotations

import numpy as np


def robust_deviation(values: np.ndarray, floor: float) -> np.ndarray:
    """|x - median| / max(1.4826 * MAD, floor) of finite ``values`` (NaN stays NaN).

    A robust z-score: the median and the median absolute deviation ignore the outliers they are
    meant to find. ``floor`` keeps a dataset whose values are all alike (every image 128x128)
    from calling the smallest difference odd.
    """
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    out = np.full(v.shape, np.nan)
    if not ok.any():
        return out
    med = float(np.median(v[ok]))
    mad = float(np.median(np.abs(v[ok] - med)))
    out[ok] = np.abs(v[ok] - med) / max(1.4826 * mad, floor)
    return out


def shape_columns(width: np.ndarray, height: np.ndarray, floor: float) -> dict[str, np.ndarray]:
    """Odd size and odd aspect ratio of each image against the run's own distribution.

    In log units, an image's width and height deviate from the run's typical ones by ``dw`` and
    ``dh``. Its aspect-ratio deviation is ``dw - dh`` (a 128x48 crop among squares); its size
    deviation is the part both sides share (both smaller, or both larger: a 32x32 thumbnail), so
    a change of shape alone is not also called a change of size. Both are robust z-scores
    (:func:`robust_deviation`, ``floor`` in log units). Returns ``size_deviation`` and
    ``aspect_deviation``, float64 (n,), NaN for unreadable rows.
    """
    w = np.asarray(width, dtype=np.float64)
    h = np.asarray(height, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        lw = np.where(w > 0, np.log(w), np.nan)
        lh = np.where(h > 0, np.log(h), np.nan)
    ok = np.isfinite(lw) & np.isfinite(lh)
    dw = lw - (np.median(lw[ok]) if ok.any() else np.nan)
    dh = lh - (np.median(lh[ok]) if ok.any() else np.nan)
    common = np.where(np.sign(dw) == np.sign(dh), np.sign(dw) * np.minimum(np.abs(dw), np.abs(dh)), 0.0)
    common[~ok] = np.nan
    return {"size_deviation": robust_deviation(common, floor), "aspect_deviation": robust_deviation(lw - lh, floor)}


def blur_stats(blur_width: np.ndarray, floor: float) -> tuple[float, float]:
    """The run's typical blur and its spread: median and ``max(1.4826 * MAD, floor)`` of
    ``log(blur_width)`` over the images that have one (NaN median when none does)."""
    v = np.asarray(blur_width, dtype=np.float64)
    v = np.log(v[np.isfinite(v) & (v > 0)])
    if v.size == 0:
        return float("nan"), max(floor, 1e-12)
    med = float(np.median(v))
    return med, max(1.4826 * float(np.median(np.abs(v - med))), floor, 1e-12)


def blur_deviation(blur_width: np.ndarray, center: float, scale: float) -> np.ndarray:
    """Signed robust z-score ``(log(blur_width) - center) / scale`` (:func:`blur_stats`); NaN
    where ``blur_width`` is NaN or not positive. Positive: blurrier than the run's typical image."""
    v = np.asarray(blur_width, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        lv = np.where(v > 0, np.log(np.where(v > 0, v, 1.0)), np.nan)
    return (lv - center) / scale


def blur_columns(blur_width: np.ndarray, floor: float) -> dict[str, np.ndarray]:
    """Blur of each image against the run's own: ``blur_deviation``, float64 (n,).

    A photo set that is soft by nature (fundus photos, a shallow depth of field, scans) has wide
    edges throughout; an image is blurred *for this dataset* when its edges are much wider than
    the run's typical ones. The built-in ``blurry`` rule needs both this and the absolute
    ``blur_width`` condition. Like the odd size, it assumes most images of a run are fine.
    """
    center, scale = blur_stats(blur_width, floor)
    return {"blur_deviation": blur_deviation(blur_width, center, scale)}
