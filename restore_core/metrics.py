"""Image quality metrics.

Full-reference metrics compare an estimate with a clean reference; both float32 in [0, 1],
(H, W) or (H, W, C), same shape; higher is better for them. No-reference metrics (below) score
one image alone; each docstring states its range and which direction is better.
"""

from __future__ import annotations

import hashlib
import math
from typing import NamedTuple

import numpy as np
from PIL import Image
from scipy import ndimage
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


# ----------------------------------------------------------------------------- no-reference metrics
# One image in: float32 in [0, 1], (H, W) or (H, W, C). Colour images are reduced to luminance
# (Rec. 601 weights on the first three channels; an alpha channel is ignored) where a metric is
# about brightness or structure, because that is what a person judges.


def luminance(img: np.ndarray) -> np.ndarray:
    """Gray (H, W) float32 in [0, 1] from (H, W) or (H, W, C): L of LA, Rec. 601 luma of RGB[A]."""
    a = np.asarray(img, dtype=np.float32)
    if a.ndim == 2:
        return a
    if a.shape[2] < 3:  # L or LA: the first channel is the gray level
        return np.ascontiguousarray(a[:, :, 0])
    return np.asarray(a[:, :, :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32), dtype=np.float32)


def saturated_fraction(img: np.ndarray, level: float = 1.0) -> float:
    """Share of pixels whose every channel is >= ``level`` (blown highlights, stuck-on pixels).

    Range [0, 1]; lower is better. A flat white image gives 1.
    """
    a = np.asarray(img)
    hot = np.asarray(a >= level)
    if a.ndim == 3:
        hot = np.asarray(hot.all(axis=2))
    return float(hot.mean()) if hot.size else 0.0


def sharpness(img: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Variance of the Laplacian of the luminance (scipy's 4-neighbour kernel, edges reflected).

    Range [0, inf) on [0, 1] images (a black/white checkerboard gives 16 away from its border, a flat image 0);
    higher is sharper. Blur removes high frequencies, so a blurred copy scores far lower.

    ``ignore`` (H, W) bool marks pixels to leave out, typically the dead pixels: an isolated dead
    pixel is a spike that would make a blurred image look sharp, so the Laplacian responses
    touching it (its 3x3 neighbourhood) are dropped. Returns ``nan`` when nothing is left.
    """
    gray = luminance(img).astype(np.float64)
    if min(gray.shape) < 3:
        return float("nan")
    lap = ndimage.laplace(gray, mode="reflect")
    if ignore is not None and ignore.any():
        keep = ~ndimage.binary_dilation(ignore, structure=np.ones((3, 3), bool))
        lap = lap[keep]
        if lap.size < 2:
            return float("nan")
    return float(lap.var())


class Exposure(NamedTuple):
    """Exposure of one image (see :func:`exposure`)."""

    brightness: float  # mean luminance, [0, 1]; about 0.4-0.6 for a well-exposed photo
    dark_fraction: float  # share of pixels with luminance <= low, [0, 1]; lower is better
    bright_fraction: float  # share of pixels with luminance >= high, [0, 1]; lower is better


def exposure(img: np.ndarray, low: float = 0.05, high: float = 0.95) -> Exposure:
    """Mean luminance and the shares of pixels near black (<= ``low``) and near white (>= ``high``).

    Ranges [0, 1] each. Brightness has no better direction (mid-grey is typical); large dark or
    bright shares mean under- or over-exposure.
    """
    gray = luminance(img)
    if gray.size == 0:
        return Exposure(float("nan"), float("nan"), float("nan"))
    return Exposure(float(gray.mean()), float((gray <= low).mean()), float((gray >= high).mean()))


def contrast(img: np.ndarray) -> float:
    """RMS contrast: standard deviation of the luminance.

    Range [0, 0.5] (0 = flat, 0.5 = half black, half white); higher means more contrast.
    """
    gray = luminance(img)
    return float(gray.std(dtype=np.float64)) if gray.size else float("nan")


def entropy(img: np.ndarray, bins: int = 256) -> float:
    """Shannon entropy of the luminance histogram (``bins`` levels over [0, 1]), in bits.

    Range [0, log2(bins)] (8 for 256 bins); 0 for a flat image, 1 for a two-level image with
    equal shares. Higher means more distinct grey levels are used (more information).
    """
    gray = luminance(img)
    if gray.size == 0:
        return float("nan")
    levels = np.clip((gray * bins).astype(np.int64), 0, bins - 1)
    p = np.bincount(levels.ravel(), minlength=bins).astype(np.float64) / levels.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def pixel_hash(img: np.ndarray) -> str:
    """SHA-256 (hex, 64 characters) of the decoded pixels, their shape and dtype.

    Two files with the same pixels hash equally even when their encodings differ (PNG
    compression level, metadata), which a hash of the bytes would miss. Equal hashes = exact
    duplicates; there is no distance between hashes.
    """
    a = np.ascontiguousarray(img)
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def dhash(img: np.ndarray, size: int = 8) -> int:
    """Difference hash: a ``size * size``-bit perceptual hash (64 bits by default) as an int.

    The luminance is box-averaged down to ``size`` rows x ``size + 1`` columns, and each bit says
    whether a cell is brighter than its right neighbour. Resizing, recompression, mild noise and
    brightness shifts keep most bits, so near duplicates lie at a small :func:`hamming` distance
    (<= 4 of 64 bits is a common cut-off); unrelated images differ in about half the bits.
    """
    gray = luminance(img)
    small = Image.fromarray(gray, mode="F").resize((size + 1, size), Image.Resampling.BOX)
    cells = np.asarray(small, dtype=np.float32)
    # a tolerance keeps flat regions stable under 8-bit rounding noise
    bits = (cells[:, :-1] - cells[:, 1:]) > 1e-3
    value = 0
    for bit in bits.ravel():
        value = (value << 1) | int(bit)
    return value


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two hashes from :func:`dhash`. Range [0, 64]; 0 = same."""
    return int(a ^ b).bit_count()
