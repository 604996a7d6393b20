"""Images for training, tests and benchmarks, generated or bundled with scikit-image.

All images are float32 in [0, 1]. ``photo_crops`` uses scikit-image's bundled photos
except ``lfw_subset``, which is kept aside for held-out checks.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: scikit-image photos used for training and benchmarks (lfw_subset is held out).
PHOTO_NAMES = (
    "astronaut",
    "camera",
    "coffee",
    "chelsea",
    "rocket",
    "motorcycle_left",
    "motorcycle_right",
    "immunohistochemistry",
    "moon",
    "page",
    "text",
    "coins",
    "grass",
    "gravel",
    "brick",
    "cell",
    "hubble_deep_field",
    "colorwheel",
)


def load_photo(name: str) -> np.ndarray:
    """A scikit-image bundled photo as float32 in [0, 1] (gray (H, W) or RGB (H, W, 3))."""
    import skimage.data

    if name == "lfw_subset":
        raise ValueError("lfw_subset is held out for evaluation and must not be used")
    if name in ("motorcycle_left", "motorcycle_right"):
        left, right, _ = skimage.data.stereo_motorcycle()
        img = left if name == "motorcycle_left" else right
    else:
        img = getattr(skimage.data, name)()
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    if img.dtype == np.uint8:
        out = img.astype(np.float32) / 255.0
    elif img.dtype == np.uint16:
        out = img.astype(np.float32) / 65535.0
    elif img.dtype == bool:
        out = img.astype(np.float32)
    else:
        f = img.astype(np.float32)
        out = (f - f.min()) / max(float(f.max() - f.min()), 1e-8)
    return out


def _gray(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return img
    return (img[:, :, :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).astype(np.float32)


def photo_crops(
    n: int,
    size: int,
    *,
    rgb: bool = False,
    names: tuple[str, ...] = PHOTO_NAMES,
    seed: int = 0,
    scale_range: tuple[float, float] = (0.5, 1.0),
) -> np.ndarray:
    """``n`` random crops of ``size`` x ``size`` from the bundled photos.

    Returns (n, size, size) gray or (n, size, size, 3) RGB float32. Crops are taken at a
    random scale (downscaled first) so that one photo gives many different views.
    """
    from skimage.transform import rescale

    rng = np.random.default_rng(seed)
    photos = []
    for name in names:
        p = load_photo(name)
        if rgb and p.ndim == 2:
            p = np.repeat(p[:, :, None], 3, axis=2)
        if not rgb:
            p = _gray(p)
        photos.append(p)
    out = np.empty((n, size, size, 3) if rgb else (n, size, size), dtype=np.float32)
    for i in range(n):
        p = photos[int(rng.integers(len(photos)))]
        s = float(rng.uniform(*scale_range))
        min_side = min(p.shape[:2])
        # Never smaller than the crop (half a pixel of margin against rounding); photos smaller
        # than the crop are enlarged.
        s = max(s, (size + 0.5) / min_side)
        if abs(s - 1.0) > 1e-3 or min_side < size:
            p = rescale(p, s, anti_aliasing=s < 1, channel_axis=-1 if p.ndim == 3 else None).astype(np.float32)
        y = int(rng.integers(0, p.shape[0] - size + 1))
        x = int(rng.integers(0, p.shape[1] - size + 1))
        out[i] = p[y : y + size, x : x + size]
    return np.clip(out, 0.0, 1.0)


def shapes(n: int, size: int, *, rgb: bool = False, seed: int = 0) -> np.ndarray:
    """Procedural images: smooth gradients, ellipses, rectangles and stripes, lightly blurred.

    Returns (n, size, size) or (n, size, size, 3) float32 in [0, 1].
    """
    rng = np.random.default_rng(seed)
    c = 3 if rgb else 1
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    out = np.empty((n, size, size, c), dtype=np.float32)
    for i in range(n):
        base = rng.uniform(0.1, 0.5, c).astype(np.float32)
        gx, gy = rng.uniform(-0.3, 0.3, 2)
        img = base[None, None, :] + (gx * xx + gy * yy)[..., None]
        for _ in range(int(rng.integers(2, 7))):
            color = rng.uniform(0.0, 1.0, c).astype(np.float32)
            kind = rng.integers(3)
            cx, cy = rng.uniform(0, 1, 2)
            if kind == 0:
                rx, ry = rng.uniform(0.05, 0.35, 2)
                sel = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
            elif kind == 1:
                w, h = rng.uniform(0.05, 0.4, 2)
                sel = (np.abs(xx - cx) <= w / 2) & (np.abs(yy - cy) <= h / 2)
            else:
                freq = rng.uniform(4, 16)
                angle = rng.uniform(0, np.pi)
                sel = np.sin(freq * np.pi * (xx * np.cos(angle) + yy * np.sin(angle))) > 0.3
            img[sel] = 0.5 * img[sel] + 0.5 * color
        img = ndimage.gaussian_filter(img, sigma=(0.7, 0.7, 0))
        out[i] = np.clip(img, 0.0, 1.0)
    return out if rgb else out[..., 0]
