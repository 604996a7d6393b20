from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

# Tests run beside Ray workers on small machines; one BLAS/OpenMP thread in the test process
# avoids oversubscription (measured: 2 threads were ~20x slower than 1 on a loaded 2-core box).
torch.set_num_threads(1)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    """Encode a uint8/uint16 array with Pillow (test helper)."""
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG") if mode else Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
