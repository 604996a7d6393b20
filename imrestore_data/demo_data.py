"""The demo's dataset: procedural images, a clean training set and a damaged test set.

Everything is generated here (nothing is downloaded): face-like drawings, textures, digits
(:mod:`imrestore_data.digits`) and :func:`imrestore_data.synth.shapes`. Images are float32 in
[0, 1], gray (H, W) or RGB (H, W, 3). Clean images never hold an exact 0 pixel (every value is
at least ``FLOOR``), so that the default dead-pixel rule (every channel exactly 0) finds only
the damage and not a dark background.

The damaged test set is blurred (shrink then enlarge, the degradation the SR model learns to
undo) and then given dead pixels (set to 0 in every channel), in that order, as a camera
would: optics blur first, the sensor's dead pixels on top. Its ``reference`` column keeps the
clean image for full-reference metrics.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from imrestore_data import digits, synth
from restore_core import codec, masks
from restore_core.io.locations import Location

#: Smallest value of a clean demo image: PNG's 8-bit step above 0, so no clean pixel reads as dead.
FLOOR = 2.0 / 255.0
#: Kinds of generated images, in the order they are cycled through.
KINDS = ("face", "texture", "digit", "shape")

Blur = Callable[[np.ndarray], np.ndarray]


# ----------------------------------------------------------------------------- generators


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy / max(size - 1, 1), xx / max(size - 1, 1)


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def face(size: int, rng: np.random.Generator) -> np.ndarray:
    """A face-like drawing: head, hair, eyes with pupils, brows, nose and mouth.

    Returns (size, size, 3) float32 in [0, 1], lightly smoothed (anti-aliased edges).
    """
    yy, xx = _grid(size)
    bg = rng.uniform(0.15, 0.85, 3).astype(np.float32)
    img = np.empty((size, size, 3), np.float32)
    img[:] = bg + (0.15 * (yy - 0.5))[..., None]  # a soft vertical light gradient
    cy, cx = rng.uniform(0.48, 0.56), rng.uniform(0.42, 0.58)
    ry, rx = rng.uniform(0.30, 0.40), rng.uniform(0.24, 0.32)
    skin = np.array([rng.uniform(0.45, 0.95), 0, 0], np.float32)
    skin[1] = skin[0] * rng.uniform(0.70, 0.85)
    skin[2] = skin[0] * rng.uniform(0.55, 0.75)
    hair = rng.uniform(0.05, 0.45) * np.array([1.0, rng.uniform(0.6, 1.0), rng.uniform(0.3, 0.8)], np.float32)
    # Hair: a larger ellipse behind the head, showing above it.
    img[_ellipse(yy, xx, cy - 0.06, cx, ry + 0.04, rx + 0.05) & (yy < cy)] = hair
    head = _ellipse(yy, xx, cy, cx, ry, rx)
    img[head] = skin * (1.0 - 0.25 * ((xx[head] - cx) / rx) ** 2)[:, None]  # shading toward the sides
    fringe = head & (yy < cy - ry * rng.uniform(0.55, 0.75))
    img[fringe] = hair
    eye_y = cy - ry * rng.uniform(0.10, 0.25)
    eye_dx = rx * rng.uniform(0.38, 0.50)
    eye_r = rx * rng.uniform(0.16, 0.22)
    iris = rng.uniform(0.05, 0.5, 3).astype(np.float32)
    look = rng.uniform(-0.4, 0.4) * eye_r
    for side in (-1.0, 1.0):
        ex = cx + side * eye_dx
        img[_ellipse(yy, xx, eye_y, ex, eye_r * 0.7, eye_r)] = 0.95
        img[_ellipse(yy, xx, eye_y, ex + look, eye_r * 0.5, eye_r * 0.5)] = iris
        img[_ellipse(yy, xx, eye_y, ex + look, eye_r * 0.22, eye_r * 0.22)] = 0.03
        brow = _ellipse(yy, xx, eye_y - eye_r * 1.5, ex, eye_r * 0.25, eye_r * 1.2)
        img[brow] = hair
    nose = (np.abs(xx - cx) < rx * 0.06) & (yy > eye_y) & (yy < cy + ry * 0.25)
    img[nose] = skin * 0.7
    mouth_y = cy + ry * rng.uniform(0.45, 0.6)
    smile = rng.uniform(-0.6, 1.0)
    arc = mouth_y + smile * 0.06 * np.cos(np.pi * (xx - cx) / (rx * 1.1))
    mouth = (np.abs(yy - arc) < 0.018 + 0.012 * rng.random()) & (np.abs(xx - cx) < rx * 0.5)
    img[mouth] = np.array([0.55, 0.12, 0.15], np.float32) * rng.uniform(0.6, 1.0)
    img = ndimage.gaussian_filter(img, sigma=(0.6, 0.6, 0))
    return np.clip(img, 0.0, 1.0)


def texture(size: int, rng: np.random.Generator) -> np.ndarray:
    """A texture: filtered noise (cloud/fabric), wood rings, bricks or a woven checker.

    Returns (size, size, 3) float32 in [0, 1].
    """
    yy, xx = _grid(size)
    kind = int(rng.integers(4))
    if kind == 0:
        sigma = rng.uniform(1.0, 4.0)
        f = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
        f += 0.5 * ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma / 3, mode="wrap")
    elif kind == 1:
        cy, cx = rng.uniform(-0.5, 1.5, 2)
        r = np.hypot(yy - cy, (xx - cx) * rng.uniform(0.3, 1.0))
        warp = ndimage.gaussian_filter(rng.standard_normal((size, size)), 3.0)
        f = np.sin(2 * np.pi * rng.uniform(6, 14) * r + 4.0 * warp)
    elif kind == 2:
        rows = rng.uniform(5, 9)
        row = np.floor(yy * rows)
        shift = (row % 2) * 0.5
        bx = (xx * rows / 2 + shift) % 1.0
        by = (yy * rows) % 1.0
        mortar = (bx < 0.08) | (by < 0.12)
        f = np.where(mortar, -1.5, 0.6 + 0.3 * rng.standard_normal((size, size)))
        f = ndimage.gaussian_filter(f, 0.5)
    else:
        n = rng.uniform(3, 8)
        a = rng.uniform(0, np.pi)
        u = xx * np.cos(a) + yy * np.sin(a)
        v = -xx * np.sin(a) + yy * np.cos(a)
        f = np.sign(np.sin(2 * np.pi * n * u)) * np.sign(np.sin(2 * np.pi * n * v))
        f = f + 0.4 * np.sin(2 * np.pi * 4 * n * u)
        f = ndimage.gaussian_filter(f, 0.6)
    f = (f - f.min()) / max(float(f.max() - f.min()), 1e-6)
    dark, light = rng.uniform(0.0, 0.45, 3), rng.uniform(0.55, 1.0, 3)
    img = dark[None, None, :] + f[..., None] * (light - dark)[None, None, :]
    return np.clip(img.astype(np.float32), 0.0, 1.0)


def digit_images(n: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Digits as ink on a coloured, lit background (never exactly 0).

    Returns ``n`` arrays (size, size, 3) float32 in [0, 1].
    """
    glyphs = digits.digits(n, size, seed=int(rng.integers(2**31)))[0]
    yy, xx = _grid(size)
    out = []
    for g in glyphs:
        paper = rng.uniform(0.05, 0.9, 3).astype(np.float32)
        ink = rng.uniform(0.0, 1.0, 3).astype(np.float32)
        if np.abs(ink - paper).mean() < 0.35:  # keep the digit readable
            ink = 1.0 - paper
        light = (1.0 + 0.2 * (xx - 0.5) - 0.1 * (yy - 0.5))[..., None]
        out.append(np.clip((paper + g[..., None] * (ink - paper)) * light, 0.0, 1.0).astype(np.float32))
    return out


def generate(n: int, size: int, *, rgb: bool = False, seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """``n`` clean demo images cycling through :data:`KINDS`, and each image's kind.

    Parameters
    ----------
    n : int
        Number of images.
    size : int
        Side of the square images (>= 16).
    rgb : bool
        RGB (size, size, 3) images; else gray (size, size) (luminance of the same drawings).
    seed : int
        Same seed, same images.

    Returns
    -------
    images : list of np.ndarray
        float32 in [FLOOR, 1].
    kinds : list of str
    """
    if size < 16:
        raise ValueError(f"demo images need size >= 16, got {size}")
    rng = np.random.default_rng(seed)
    kinds = [KINDS[i % len(KINDS)] for i in range(n)]
    n_digits = kinds.count("digit")
    n_shapes = kinds.count("shape")
    digit_iter = iter(digit_images(n_digits, size, rng))
    shape_iter = iter(synth.shapes(n_shapes, size, rgb=True, seed=int(rng.integers(2**31))))
    images = []
    for kind in kinds:
        if kind == "face":
            img = face(size, rng)
        elif kind == "texture":
            img = texture(size, rng)
        elif kind == "digit":
            img = next(digit_iter)
        else:
            img = next(shape_iter)
        if not rgb:
            img = img @ np.array([0.299, 0.587, 0.114], np.float32)
        images.append(np.clip(img, FLOOR, 1.0).astype(np.float32))
    return images, kinds


# ----------------------------------------------------------------------------- damage


def shrink_enlarge(img: np.ndarray, scale: float) -> np.ndarray:
    """Blur by shrinking ``scale`` times then enlarging back (bilinear), same shape out.

    ``img`` is float32 (H, W) or (H, W, C) in [0, 1]. Used when no SR model's own degrade
    function is given.
    """
    h, w = img.shape[:2]
    sh, sw = max(1, round(h / scale)), max(1, round(w / scale))
    planes = [img] if img.ndim == 2 else [img[:, :, c] for c in range(img.shape[2])]
    out = []
    for p in planes:
        small = Image.fromarray(p.astype(np.float32), mode="F").resize((sw, sh), Image.Resampling.BILINEAR)
        out.append(np.asarray(small.resize((w, h), Image.Resampling.BILINEAR), np.float32))
    res = out[0] if img.ndim == 2 else np.stack(out, axis=2)
    return np.clip(res, 0.0, 1.0)


def damage(
    img: np.ndarray, dead_rate: float, rng: np.random.Generator, blur: Blur | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Blur (when ``blur`` is given) then kill a ``dead_rate`` share of pixels.

    The blurred image is clipped to [FLOOR, 1] first, so that the only exact zeros are the
    dead pixels. Returns the damaged image (same shape, float32 in [0, 1]) and the dead mask
    (bool (H, W), True = dead).
    """
    out = img if blur is None else np.clip(blur(img), FLOOR, 1.0).astype(np.float32)
    return masks.apply_dead_pixels(out, dead_rate, rng)


# ----------------------------------------------------------------------------- parquet


def to_table(
    ids: list[str],
    images: Iterable[np.ndarray],
    kinds: list[str],
    references: Iterable[np.ndarray] | None = None,
) -> Any:
    """A pyarrow table with ``id``, ``image`` (PNG bytes), ``kind`` and, for test sets,
    ``reference`` (PNG bytes of the clean image)."""
    import pyarrow as pa

    cols: dict[str, Any] = {
        "id": pa.array(ids, pa.string()),
        "image": pa.array([codec.encode_png(im) for im in images], pa.binary()),
        "kind": pa.array(kinds, pa.string()),
    }
    if references is not None:
        cols["reference"] = pa.array([codec.encode_png(r) for r in references], pa.binary())
    return pa.table(cols)


def write_shards(table: Any, folder: Location, n_shards: int) -> list[str]:
    """Write ``table`` as ``part-00000.parquet``... (row ranges in order) under ``folder``."""
    import pyarrow.parquet as pq

    fs, root = folder.filesystem()
    fs.makedirs(root, exist_ok=True)
    n = table.num_rows
    n_shards = max(1, min(n_shards, n))
    bounds = np.linspace(0, n, n_shards + 1).astype(int)
    paths = []
    for s in range(n_shards):
        path = posixpath.join(root, f"part-{s:05d}.parquet")
        with fs.open(path, "wb") as f:
            pq.write_table(table.slice(int(bounds[s]), int(bounds[s + 1] - bounds[s])), f)
        paths.append(path)
    return paths
