from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

# Tests run beside Ray workers on small machines; one BLAS/OpenMP thread in the test process
# avoids oversubscription (measured: 2 threads were ~20x slower than 1 on a loaded 2-core box).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def bases():
    """Small gray 6x6 patch bases (k=16) learned from generated shapes; shared by unit tests."""
    import warnings

    from imrestore_data import synth
    from restore_core import nmf, sampling
    from restore_core.bases import Bases, BasesMeta

    imgs = synth.shapes(10, 32, seed=0)
    rng = np.random.default_rng(0)
    X = np.concatenate([sampling.sample_patches(im, 6, 1, 60, rng) for im in imgs])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nmf.ConvergenceWarning)
        res = nmf.learn_bases(X, 16, max_iter=20, seed=0)
    return Bases(res.H_, BasesMeta(mode="patch", k=16, n_pixels=36, channels=1, patch_size=6))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    """Encode a uint8/uint16 array with Pillow (test helper)."""
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG") if mode else Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def scored_quality_rows(cfg: Any) -> Any:
    """36 scored rows of 48x48 photo crops with one of each run-wide case: an exact copy (5 of 4),
    near copies (6 of 4, 9 of 8), dead pixels (12, 13), an odd size (20), a plain image and its
    exact copy (21, 22) and an undecodable cell (30)."""
    from imrestore_data import synth
    from restore_core import masks, quality

    def enc(img: np.ndarray) -> bytes:
        return png_bytes(np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8))

    rng = np.random.default_rng(4)
    imgs = list(synth.photo_crops(36, 48, names=("grass", "gravel", "coins", "text", "brick"), seed=11))
    blobs = [enc(i) for i in imgs]
    ids = [f"img-{k:03d}" for k in range(len(imgs))]
    blobs[5] = blobs[4]  # exact copy
    blobs[6] = enc(np.clip(imgs[4] * 1.03, 0, 1))  # near copy of 4 (and 5)
    blobs[9] = enc(np.clip(imgs[8] * 0.97, 0, 1))  # near copy of 8
    blobs[12] = enc(masks.apply_dead_pixels(imgs[12], 0.05, rng)[0])
    blobs[13] = enc(masks.apply_dead_pixels(imgs[13], 0.02, rng)[0])
    blobs[20] = enc(synth.photo_crops(1, 20, names=("grass",), seed=3)[0])  # odd size
    blobs[21] = enc(np.zeros((48, 48)))  # plain: dark / low information, uninformative hash
    blobs[22] = blobs[21]  # ... and its exact copy
    blobs[30] = b"not an image"
    batch = {"id": np.array(ids, dtype=object), "image": np.array(blobs, dtype=object)}
    return quality.table_from_columns(quality.QualityScorer(cfg)(batch))
