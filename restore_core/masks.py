"""Dead and saturated pixel detection.

All functions take an image as float32 in [0, 1], (H, W) or (H, W, C), and return a boolean
(H, W) mask where True means *dead* (unobserved, to be filled).

Alpha: a decoded image with 2 or 4 channels is LA or RGBA (``restore_core.codec``), and its last
channel is opacity, not colour. Detection looks at the colour channels only (a transparent pixel
is not dead for being transparent, an opaque black one is), and the restore step fills colour
only and gives the alpha channel back as it was (:func:`split_alpha`, :func:`join_alpha`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from restore_core.errors import ImageDecodeError


def split_alpha(img: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(colour, alpha)``: LA -> ((H, W), (H, W)), RGBA -> ((H, W, 3), (H, W)); others -> (img, None)."""
    if img.ndim == 3 and img.shape[2] in (2, 4):
        colour = img[:, :, :-1]
        return (colour[:, :, 0] if colour.shape[2] == 1 else colour), img[:, :, -1]
    return img, None


def join_alpha(colour: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """Inverse of :func:`split_alpha` (``alpha`` None: ``colour`` as it is)."""
    if alpha is None:
        return colour
    c = colour[:, :, None] if colour.ndim == 2 else colour
    return np.concatenate([c, alpha[:, :, None].astype(c.dtype, copy=False)], axis=2)


def colour_channels(img: np.ndarray) -> np.ndarray:
    """The image without its alpha channel (see :func:`split_alpha`)."""
    return split_alpha(np.asarray(img))[0]


def _all_channels(cond: np.ndarray) -> np.ndarray:
    return cond if cond.ndim == 2 else np.asarray(cond.all(axis=2))


def zero_pixels(img: np.ndarray) -> np.ndarray:
    """Pixels whose every colour channel is exactly 0 (the write-ups' dead-pixel convention)."""
    return _all_channels(colour_channels(img) == 0)


def saturated_pixels(img: np.ndarray, level: float = 1.0) -> np.ndarray:
    """Pixels whose every colour channel is >= ``level`` (hot or stuck-on pixels)."""
    return _all_channels(colour_channels(img) >= level)


def drop_large_regions(mask: np.ndarray, max_size: int) -> np.ndarray:
    """Keep only connected dead regions of at most ``max_size`` pixels.

    Large zero areas are usually real content (a black background, night sky), not defects.
    """
    if max_size <= 0 or not mask.any():
        return mask
    labels, n = ndimage.label(mask)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes <= max_size
    keep[0] = False
    return keep[labels]


def mask_from_png(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A decoded mask image (non-zero = dead) as a boolean (H, W) mask of ``shape``.

    A mask PNG with an alpha channel is judged by its colour: an opaque black mask marks nothing.
    """
    c = colour_channels(img)
    m = c if c.ndim == 2 else c.max(axis=2)
    if m.shape != shape:
        raise ImageDecodeError(f"mask is {m.shape[1]}x{m.shape[0]}, image is {shape[1]}x{shape[0]}")
    return m > 0


def detect(
    img: np.ndarray,
    rule: str = "zero",
    saturated_level: float = 1.0,
    ignore_zero_regions_larger_than: int = 0,
) -> np.ndarray:
    """Dead-pixel mask by ``rule``: ``zero``, ``saturated`` or ``zero_or_saturated``."""
    if rule not in ("zero", "saturated", "zero_or_saturated"):
        raise ValueError(f"unknown mask rule {rule!r}")
    mask = np.zeros(img.shape[:2], dtype=bool)
    if rule in ("zero", "zero_or_saturated"):
        mask |= drop_large_regions(zero_pixels(img), ignore_zero_regions_larger_than)
    if rule in ("saturated", "zero_or_saturated"):
        mask |= saturated_pixels(img, saturated_level)
    return mask


def apply_dead_pixels(img: np.ndarray, rate: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Damage a copy of ``img``: a random ``rate`` share of pixels set to 0 in every channel.

    Returns the damaged image and its dead mask (True = dead).
    """
    mask = rng.random(img.shape[:2]) < rate
    out = img.copy()
    out[mask] = 0
    return out, mask


#: Kinds of synthetic damage that :func:`damage_mask` draws.
DAMAGE_KINDS = ("scattered", "lines", "blocks")


def damage_mask(shape: tuple[int, int], kind: str, rate: float, rng: np.random.Generator) -> np.ndarray:
    """A random dead mask (H, W) bool of one ``kind`` covering about ``rate`` of the pixels.

    ``scattered``: independent pixels. ``lines``: whole rows and columns, 1 pixel thick (rows and
    columns equally likely, their union covers ``rate``). ``blocks``: squares of side 2-8 at
    random places, added until ``rate`` is covered.
    """
    h, w = shape
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    if kind == "scattered":
        return rng.random((h, w)) < rate
    if kind == "lines":
        p = 1.0 - np.sqrt(1.0 - rate)  # rows and columns each p: union 1 - (1 - p)^2 = rate
        rows = rng.random(h) < p
        cols = rng.random(w) < p
        return rows[:, None] | cols[None, :]
    if kind == "blocks":
        mask = np.zeros((h, w), bool)
        target = rate * h * w
        covered = 0
        while covered < target:
            s = int(rng.integers(2, 9))
            y, x = int(rng.integers(0, max(1, h - s + 1))), int(rng.integers(0, max(1, w - s + 1)))
            covered += int((~mask[y : y + s, x : x + s]).sum())
            mask[y : y + s, x : x + s] = True
        return mask
    raise ValueError(f"unknown damage kind {kind!r} (choose from {', '.join(DAMAGE_KINDS)})")
