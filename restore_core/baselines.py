"""Classical restorers for comparison, with the same interface as the NMF inpainter.

Every function takes ``img`` float32 in [0, 1], (H, W) or (H, W, C), and ``dead`` a boolean
(H, W) mask (True = dead), and returns a float32 image of the same shape in which only dead
pixels changed.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage
from skimage.restoration import inpaint_biharmonic


def biharmonic(img: np.ndarray, dead: np.ndarray) -> np.ndarray:
    """Biharmonic inpainting (scikit-image): smooth fill that matches values and slopes."""
    if not dead.any():
        return img.astype(np.float32, copy=True)
    if dead.all():
        return np.zeros_like(img, dtype=np.float32)
    out = inpaint_biharmonic(img, dead, channel_axis=-1 if img.ndim == 3 else None)
    out = np.clip(out, 0.0, 1.0).astype(np.float32)
    out[~dead] = img[~dead]
    return out


def median_fill(img: np.ndarray, dead: np.ndarray, max_radius: int = 32) -> np.ndarray:
    """Each dead pixel takes the median of the observed pixels in the smallest square window
    (radius 1, 2, 4, ...) that holds any; pixels with none within ``max_radius`` take the mean
    of every observed pixel."""
    out = img.astype(np.float32, copy=True)
    if not dead.any():
        return out
    if dead.all():
        return np.zeros_like(out)
    planes = out[..., None] if out.ndim == 2 else out
    todo = dead.copy()
    radius = 1
    while todo.any() and radius <= max_radius:
        for c in range(planes.shape[2]):
            src = np.where(dead, np.nan, planes[:, :, c])
            med = _nanmedian_box(src, radius)
            fill = todo & np.isfinite(med)
            planes[:, :, c][fill] = med[fill]
        todo &= ~np.isfinite(med)
        radius *= 2
    if todo.any():
        for c in range(planes.shape[2]):
            planes[:, :, c][todo] = planes[:, :, c][~dead].mean()
    return planes[:, :, 0] if img.ndim == 2 else planes


def _nanmedian_box(src: np.ndarray, radius: int) -> np.ndarray:
    """nanmedian over a strided sample of the (2r+1)^2 window (9x9 taps at most)."""
    step = max(1, (2 * radius + 1) // 9)
    offsets = range(-radius, radius + 1, step)
    padded = np.pad(src, radius, constant_values=np.nan)
    h, w = src.shape
    stack = np.stack(
        [padded[radius + dy : radius + dy + h, radius + dx : radius + dx + w] for dy in offsets for dx in offsets]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows give NaN, handled by the caller
        return np.nanmedian(stack, axis=0)


def smooth_fill(img: np.ndarray, dead: np.ndarray) -> np.ndarray:
    """Normalized convolution at growing Gaussian scales: a fast fill for any hole size.

    Used as the fallback for pixels no patch can see (holes larger than a patch).
    """
    out = img.astype(np.float32, copy=True)
    if not dead.any():
        return out
    if dead.all():
        return np.zeros_like(out)
    obs = (~dead).astype(np.float32)
    todo = dead.copy()
    sigma = 1.0
    planes = out[..., None] if out.ndim == 2 else out
    while todo.any():
        weight = ndimage.gaussian_filter(obs, sigma, mode="constant")
        ok = todo & (weight > 1e-3)
        for c in range(planes.shape[2]):
            num = ndimage.gaussian_filter(planes[:, :, c] * obs, sigma, mode="constant")
            planes[:, :, c][ok] = num[ok] / weight[ok]
        todo &= ~ok
        sigma *= 2.0
        if sigma > 4 * max(img.shape[:2]):
            for c in range(planes.shape[2]):
                planes[:, :, c][todo] = planes[:, :, c][~dead].mean()
            break
    return planes[:, :, 0] if img.ndim == 2 else planes
