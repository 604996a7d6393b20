import numpy as np
import pytest
import torch

from restore_core.fill import fill_image, harmonic_fill, push_pull_fill


def _ramp(h: int = 24, w: int = 28) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (0.1 + 0.02 * xx + 0.015 * yy).astype(np.float32)


def test_harmonic_fill_reproduces_a_linear_ramp():
    # A linear function is harmonic: dead pixels away from the border come back exactly.
    ramp = _ramp()
    dead = np.zeros(ramp.shape, bool)
    dead[4:15, 3:20] = True  # a block
    dead[18:22:2, 5:25:3] = True  # scattered pixels
    damaged = np.where(dead, 0.0, ramp).astype(np.float32)
    out = harmonic_fill(torch.from_numpy(damaged)[None, None], torch.from_numpy(dead)[None, None], iters=500, tol=1e-7)
    assert np.abs(out[0, 0].numpy() - ramp).max() < 1e-4


def test_observed_pixels_are_unchanged_bit_for_bit(rng):
    x = torch.from_numpy(rng.random((3, 2, 16, 12), dtype=np.float32))
    dead = torch.from_numpy(rng.random((3, 1, 16, 12)) < 0.5)
    out = harmonic_fill(x, dead, iters=20)
    keep = ~dead.expand_as(x)
    assert torch.equal(out[keep], x[keep])
    assert out.min() >= 0 and out.max() <= 1
    # the values under dead pixels are ignored
    x2 = torch.where(dead, torch.zeros_like(x), x)
    assert torch.allclose(harmonic_fill(x2, dead, iters=20), out)


def test_batch_independence(rng):
    # Each (image, channel) is its own system with its own stop: the result of an image does not
    # depend on the others in the batch.
    x = torch.from_numpy(rng.random((4, 3, 20, 20), dtype=np.float32))
    dead = torch.from_numpy(rng.random((4, 1, 20, 20)) < np.array([0.1, 0.5, 0.8, 0.3])[:, None, None, None])
    together = harmonic_fill(x, dead)
    for i in range(4):
        alone = harmonic_fill(x[i : i + 1], dead[i : i + 1])
        assert torch.allclose(alone, together[i : i + 1], atol=1e-5)


def test_edge_cases(rng):
    x = torch.from_numpy(rng.random((2, 1, 8, 8), dtype=np.float32))
    nothing = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    assert torch.equal(harmonic_fill(x, nothing), x)
    everything = torch.ones(2, 1, 8, 8, dtype=torch.bool)
    assert torch.equal(harmonic_fill(x, everything), torch.zeros_like(x))
    # one observed pixel: the whole image takes its value
    one = everything.clone()
    one[:, :, 3, 4] = False
    out = harmonic_fill(x, one)
    assert torch.allclose(out, x[:, :, 3:4, 4:5].expand_as(x), atol=1e-4)
    with pytest.raises(ValueError, match="B, 1, H, W"):
        harmonic_fill(x, nothing[:, :, 0])


def test_push_pull_fill_fills_every_hole(rng):
    x = torch.from_numpy(rng.random((1, 3, 13, 9), dtype=np.float32))
    dead = torch.zeros(1, 1, 13, 9, dtype=torch.bool)
    dead[..., 2:11, 1:8] = True
    out = push_pull_fill(x, dead)
    assert torch.isfinite(out).all() and torch.equal(out[~dead.expand_as(x)], x[~dead.expand_as(x)])
    lo, hi = x[~dead.expand_as(x)].min(), x[~dead.expand_as(x)].max()
    assert out.min() >= lo - 1e-6 and out.max() <= hi + 1e-6


def test_fill_image_numpy_layouts(rng):
    ramp = _ramp(12, 12)
    dead = np.zeros((12, 12), bool)
    dead[5, 6] = True
    gray = fill_image(np.where(dead, 0, ramp), dead)
    assert gray.shape == (12, 12) and abs(gray[5, 6] - ramp[5, 6]) < 1e-5
    rgb = fill_image(np.stack([ramp, 1 - ramp, ramp / 2], axis=2), dead)
    assert rgb.shape == (12, 12, 3) and abs(rgb[5, 6, 1] - (1 - ramp[5, 6])) < 1e-5
