"""Digit-like images, MNIST style, drawn with fonts that ship with the installed packages.

There is no MNIST here and nothing may be downloaded, so the SR write-up's data set is replaced
by digits rendered with Pillow's bundled font (Aileron, ``ImageFont.load_default``) and, when
matplotlib is installed, its bundled DejaVu fonts; never the system's fonts, so the same seed
gives the same images on every machine with the same package versions.

Each digit gets a random font, size, stroke width, rotation, shear, scale and position, then is
fitted into a 20x20 box and centred by mass in 28x28 (MNIST's recipe): white strokes on black,
float32 in [0, 1].
"""

from __future__ import annotations

import functools
import importlib.util
import io
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

#: Canvas side used for drawing before the digit is shrunk (supersampling keeps edges smooth).
_CANVAS = 112


@functools.lru_cache(maxsize=1)
def font_sources() -> tuple[bytes | str, ...]:
    """Font files to draw with: Pillow's embedded font (bytes) and matplotlib's DejaVu (paths)."""
    sources: list[bytes | str] = []
    default = ImageFont.load_default(size=20)
    path = getattr(default, "path", None)
    if isinstance(path, io.BytesIO):  # Pillow >= 10.1 with FreeType: the embedded Aileron font
        sources.append(path.getvalue())
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.origin:
        ttf = os.path.join(os.path.dirname(spec.origin), "mpl-data", "fonts", "ttf")
        for name in (
            "DejaVuSans.ttf",
            "DejaVuSans-Bold.ttf",
            "DejaVuSans-Oblique.ttf",
            "DejaVuSerif.ttf",
            "DejaVuSerif-Italic.ttf",
            "DejaVuSansMono.ttf",
        ):
            p = os.path.join(ttf, name)
            if os.path.isfile(p):
                sources.append(p)
    if not sources:
        raise RuntimeError("no scalable font found: Pillow needs FreeType support (pip install pillow)")
    return tuple(sources)


@functools.lru_cache(maxsize=64)
def _font(index: int, size: int) -> ImageFont.FreeTypeFont:
    src = font_sources()[index]
    return ImageFont.truetype(io.BytesIO(src) if isinstance(src, bytes) else src, size=size)


def _draw_one(digit: int, rng: np.random.Generator, size: int) -> np.ndarray:
    n_fonts = len(font_sources())
    font = _font(int(rng.integers(n_fonts)), int(rng.integers(56, 81)))
    stroke = int(rng.integers(0, 6))
    canvas = Image.new("L", (_CANVAS, _CANVAS), 0)
    ImageDraw.Draw(canvas).text(
        (_CANVAS / 2, _CANVAS / 2), str(digit), fill=255, font=font, anchor="mm", stroke_width=stroke, stroke_fill=255
    )
    # Random affine about the centre: rotation, shear, anisotropic scale (handwriting slant).
    angle = np.deg2rad(rng.uniform(-15, 15))
    shear = rng.uniform(-0.3, 0.3)
    sx, sy = rng.uniform(0.8, 1.2, 2)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    A = rot @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([sx, sy])
    inv = np.linalg.inv(A)
    c = np.array([_CANVAS / 2, _CANVAS / 2])
    off = c - inv @ c
    # PIL's affine maps output (x, y) to input coordinates.
    canvas = canvas.transform(
        (_CANVAS, _CANVAS),
        Image.Transform.AFFINE,
        (inv[0, 0], inv[0, 1], off[0], inv[1, 0], inv[1, 1], off[1]),
        resample=Image.Resampling.BILINEAR,
    )
    arr = np.asarray(canvas, dtype=np.float32) / 255.0
    ys, xs = np.nonzero(arr > 0.05)
    if ys.size == 0:
        return np.zeros((size, size), np.float32)
    crop = arr[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    # MNIST: the digit fits a (20/28 * size) box, keeping its aspect ratio.
    box = max(1, round(size * 20 / 28 * rng.uniform(0.85, 1.0)))
    h, w = crop.shape
    s = box / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    small = np.asarray(Image.fromarray(crop, mode="F").resize((nw, nh), Image.Resampling.LANCZOS), np.float32)
    out = np.zeros((size, size), np.float32)
    cy, cx = ndimage.center_of_mass(np.clip(small, 0, None) + 1e-6)
    # Centre of mass at the image centre, plus a small random shift (position jitter).
    jy, jx = rng.uniform(-1.5, 1.5, 2) * size / 28
    top = round(size / 2 - cy + jy)
    left = round(size / 2 - cx + jx)
    top = min(max(top, 0), size - nh)
    left = min(max(left, 0), size - nw)
    out[top : top + nh, left : left + nw] = small
    return np.clip(out, 0.0, 1.0)


def digits(n: int, size: int = 28, *, seed: int = 0, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` digit-like images and their labels.

    Parameters
    ----------
    n : int
        Number of images.
    size : int
        Side of the square images (MNIST: 28).
    seed : int
        Same seed, same images (given the same Pillow/matplotlib fonts).
    start : int
        Index of the first image. Image ``i`` depends only on ``(seed, i)``, so disjoint index
        ranges are disjoint sets (train / validation / benchmark) and can be drawn in parallel.

    Returns
    -------
    images : np.ndarray
        (n, size, size) float32 in [0, 1], white digit on a black background.
    labels : np.ndarray
        (n,) int64 in 0..9.
    """
    if n < 0 or size < 8:
        raise ValueError(f"need n >= 0 and size >= 8, got n={n}, size={size}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    labels = np.empty(n, np.int64)
    images = np.empty((n, size, size), np.float32)
    for i in range(n):
        rng = np.random.default_rng([seed, start + i])
        labels[i] = int(rng.integers(0, 10))
        images[i] = _draw_one(int(labels[i]), rng, size)
    return images, labels
