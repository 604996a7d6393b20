from __future__ import annotations

import io

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
