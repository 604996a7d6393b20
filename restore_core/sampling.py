"""Turning images into NMF training rows: whole resized images or random patches.

Images are float32 in [0, 1], (H, W) or (H, W, C). Rows are float32 (n, n_pixels); patch rows
are channel-major (C, p, p) flattened, the layout ``torch.nn.functional.unfold`` produces.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def to_channels(img: np.ndarray, channels: int) -> list[np.ndarray]:
    """The planes NMF sees: with 1 channel every colour channel is its own gray plane (alpha
    dropped); with 3, the RGB image (gray images are refused)."""
    if img.ndim == 2:
        if channels == 3:
            raise ValueError("RGB bases cannot learn from a gray image")
        return [img]
    if channels == 1:
        c = min(img.shape[2], 3) if img.shape[2] != 2 else 1
        return [img[:, :, i] for i in range(c)]
    if img.shape[2] < 3:
        raise ValueError(f"RGB bases cannot learn from a {img.shape[2]}-channel image")
    return [img[:, :, :3]]


def global_row(img: np.ndarray, size: int, channels: int) -> np.ndarray:
    """One flattened row: the image resized to ``size`` x ``size`` (gray: luminance)."""
    if channels == 1 and img.ndim == 3:
        rgb = img[:, :, :3] if img.shape[2] >= 3 else img[:, :, :1].repeat(3, axis=2)
        img = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if channels == 3 and img.ndim == 2:
        raise ValueError("RGB bases cannot learn from a gray image")
    if channels == 3:
        img = img[:, :, :3]
    if img.shape[:2] != (size, size):
        planes = [img] if img.ndim == 2 else [img[:, :, c] for c in range(img.shape[2])]
        planes = [
            np.asarray(Image.fromarray(p.astype(np.float32), mode="F").resize((size, size), Image.Resampling.BILINEAR))
            for p in planes
        ]
        img = planes[0] if len(planes) == 1 else np.stack(planes, axis=2)
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    return (img if img.ndim == 2 else img.transpose(2, 0, 1)).reshape(-1)


def sample_patches(img: np.ndarray, p: int, channels: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random p x p patches of ``img`` as rows (n, C*p*p); fewer if the image is small."""
    rows = []
    for plane in to_channels(img, channels):
        h, w = plane.shape[:2]
        if h < p or w < p:
            continue
        m = max(1, n // max(1, len(to_channels(img, channels))))
        ys = rng.integers(0, h - p + 1, m)
        xs = rng.integers(0, w - p + 1, m)
        for y, x in zip(ys, xs, strict=True):
            patch = plane[y : y + p, x : x + p]
            rows.append((patch if patch.ndim == 2 else patch.transpose(2, 0, 1)).reshape(-1))
    if not rows:
        return np.empty((0, p * p * channels), dtype=np.float32)
    return np.asarray(rows, dtype=np.float32)
