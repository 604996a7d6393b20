"""Image quality metrics.

Full-reference metrics compare an estimate with a clean reference; both float32 in [0, 1],
(H, W) or (H, W, C), same shape. Higher is better for every metric here.
"""

from __future__ import annotations

import math

import numpy as np
from skimage.metrics import structural_similarity


def psnr(reference: np.ndarray, estimate: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB, data range 1. Range [0, inf); higher is better.

    ``mask`` (H, W) bool limits the error to those pixels (e.g. the dead ones only).
    Identical images give ``inf``; an empty mask gives ``nan``.
    """
    ref = np.asarray(reference, dtype=np.float64)
    est = np.asarray(estimate, dtype=np.float64)
    if ref.shape != est.shape:
        raise ValueError(f"shapes differ: {ref.shape} vs {est.shape}")
    err = (ref - est) ** 2
    if mask is not None:
        if not mask.any():
            return float("nan")
        err = err[mask]
    mse = float(err.mean())
    if mse == 0.0:
        return float("inf")
    return 10.0 * math.log10(1.0 / mse)


def ssim(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Structural similarity (scikit-image, Gaussian-free 7x7 window). Range [-1, 1]; higher
    is better. Images smaller than 7 pixels use the largest odd window that fits."""
    ref = np.asarray(reference, dtype=np.float64)
    est = np.asarray(estimate, dtype=np.float64)
    side = min(ref.shape[0], ref.shape[1])
    win = min(7, side if side % 2 == 1 else side - 1)
    if win < 3:
        return float("nan")
    return float(
        structural_similarity(
            ref,
            est,
            data_range=1.0,
            win_size=win,
            channel_axis=-1 if ref.ndim == 3 else None,
        )
    )


def dead_fraction(dead: np.ndarray) -> float:
    """Share of dead pixels in a boolean (H, W) mask. Range [0, 1]; lower is better."""
    return float(np.asarray(dead).mean()) if dead.size else 0.0
