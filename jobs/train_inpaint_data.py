"""The Ray Data side of the train-inpaint job (:mod:`jobs.train_inpaint`): decoded images cut into
random training crops with their observed-pixel masks."""

from __future__ import annotations

import logging
import zlib
from typing import Any

import numpy as np

from jobs import training
from jobs.config_train_inpaint import TrainInpaintConfig
from restore_core import codec, masks
from restore_core.codec import cell_bytes
from restore_core.errors import ImageDecodeError

log = logging.getLogger("jobs.train_inpaint")


def to_samples(img: np.ndarray, channels: int) -> list[np.ndarray]:
    """float32 (H, W[, C]) image -> training images of ``channels`` planes each, (channels, H, W):
    a gray refiner learns from every plane of a colour image (as it restores them: one by one),
    an RGB one from the colour (gray images repeated to RGB, alpha dropped)."""
    planes = img[None] if img.ndim == 2 else np.moveaxis(img, 2, 0)  # (C, H, W)
    planes = np.ascontiguousarray(planes, np.float32)
    if channels == 1:
        return [planes[i : i + 1] for i in range(min(planes.shape[0], 3))]
    return [planes[:3] if planes.shape[0] >= 3 else np.repeat(planes[:1], 3, axis=0)]


def random_crops(
    planes: np.ndarray, observed: np.ndarray, patch: int, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random ``patch`` x ``patch`` crops of (C, H, W) ``planes`` and their (H, W)
    ``observed`` mask; an image smaller than the patch is zero-padded, the padding unobserved."""
    h, w = planes.shape[1:]
    ph, pw = max(0, patch - h), max(0, patch - w)
    if ph or pw:
        planes = np.pad(planes, ((0, 0), (0, ph), (0, pw)))
        observed = np.pad(observed, ((0, ph), (0, pw)))
    h, w = observed.shape
    ys = rng.integers(0, h - patch + 1, n)
    xs = rng.integers(0, w - patch + 1, n)
    images = np.stack([planes[:, y : y + patch, x : x + patch] for y, x in zip(ys, xs, strict=True)])
    obs = np.stack([observed[None, y : y + patch, x : x + patch] for y, x in zip(ys, xs, strict=True)])
    return images.astype(np.float32), obs.astype(np.uint8)  # (n, C, P, P), (n, 1, P, P)


def make_crops(batch: dict[str, np.ndarray], cfg: TrainInpaintConfig, channels: int, val: bool) -> dict[str, Any]:
    """Ray Data stage: encoded images in, crops out (``image`` (n, C, P, P) float32 in [0, 1],
    ``observed`` (n, 1, P, P) uint8, 1 = observed). Each image's crops come from a generator
    seeded by (``train.seed``, the image id): the same data gives the same crops on every run.
    Undecodable images and images with no observed pixel give no crop."""
    c, t = cfg.input, cfg.train
    p = t.patch_size
    images: list[np.ndarray] = []
    observed: list[np.ndarray] = []
    masks_col = batch.get(c.mask_column)
    for i, (image_id, cell) in enumerate(zip(batch[c.id_column], batch[c.image_column], strict=True)):
        if training.is_validation_id(str(image_id), t.val_fraction) != val:
            continue
        try:
            img, _ = codec.decode(cell_bytes(cell), cfg.decode.max_pixels)
            raw_mask = cell_bytes(masks_col[i]) if masks_col is not None else None
            if raw_mask:
                dead = masks.mask_from_png(codec.decode(raw_mask, cfg.decode.max_pixels)[0], img.shape[:2])
            else:
                m = cfg.masks
                dead = masks.detect(img, m.rule, m.saturated_level, m.ignore_zero_regions_larger_than)
        except ImageDecodeError as exc:  # one bad image must not stop training
            log.warning("skipping %s: %s", image_id, exc)
            continue
        if dead.all():
            continue
        rng = np.random.default_rng([t.seed, zlib.crc32(str(image_id).encode())])
        for planes in to_samples(img, channels):
            x, o = random_crops(planes, ~dead, p, t.crops_per_image, rng)
            images.append(x)
            observed.append(o)
    if not images:
        return {"image": np.empty((0, channels, p, p), np.float32), "observed": np.empty((0, 1, p, p), np.uint8)}
    return {"image": np.concatenate(images), "observed": np.concatenate(observed)}
