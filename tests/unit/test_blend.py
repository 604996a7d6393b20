"""The no-training restorer (fit.method sparse): the calibrated blend of the harmonic, biharmonic
and sparse-transform fills."""

import numpy as np
import torch

from imrestore_data.digits import digits
from restore_core.blend import blend_fill
from restore_core.fill import flat_holes, harmonic_fill
from restore_core.masks import damage_mask
from restore_core.sparse_fill import SparseSpec, sparse_fill
from tests.unit.test_sparse_fill import _psnr, _stripes


def _mask(n: int, size: int, kind: str, rate: float, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([damage_mask((size, size), kind, rate, rng) for _ in range(n)]))[:, None]


def test_observed_pixels_unchanged_range_and_no_damage(rng):
    x = torch.from_numpy(rng.random((2, 3, 40, 36), dtype=np.float32))
    dead = torch.from_numpy(rng.random((2, 1, 40, 36)) < 0.3)
    out = blend_fill(x, dead, SparseSpec(iters=5))
    keep = ~dead.expand_as(x)
    assert torch.equal(out[keep], x[keep])
    assert out.min() >= 0 and out.max() <= 1 and out.shape == x.shape
    assert torch.equal(blend_fill(x, torch.zeros_like(dead)), x)


def test_beats_the_biharmonic_fill_on_texture_scattered_and_blocks():
    x = _stripes(3, 64, 0)
    for kind in ("scattered", "blocks"):
        dead = _mask(3, 64, kind, 0.3, 1)
        bih = harmonic_fill(x, dead, order=2)
        assert _psnr(blend_fill(x, dead), x) > _psnr(bih, x) + 3.0, kind


def test_no_worse_than_biharmonic_where_the_sparse_fill_rings():
    # large holes over thin strokes on black (generated digits): the sparse fill alone loses to
    # the biharmonic fill, the probe keeps the blend at least as good
    x = torch.from_numpy(digits(8, 32, seed=13)[0])[:, None]
    dead = _mask(8, 32, "blocks", 0.5, 6)
    bih = _psnr(harmonic_fill(x, dead, order=2), x)
    alone = _psnr(sparse_fill(x, dead, harmonic_fill(x, dead, order=2), SparseSpec()), x)
    blend = _psnr(blend_fill(x, dead), x)
    assert alone < bih - 0.1  # the case is one where the sparse fill rings
    assert blend > bih - 0.05 and blend > alone + 0.1


def test_large_images_are_independent_of_their_batch():
    x = _stripes(3, 64, 3)
    dead = _mask(3, 64, "scattered", 0.4, 4)
    whole = blend_fill(x, dead, SparseSpec(iters=10))
    one = blend_fill(x[1:2], dead[1:2], SparseSpec(iters=10))
    assert torch.allclose(whole[1:2], one, atol=1e-5)


def test_without_the_sparse_fill_it_blends_the_two_harmonic_fills():
    x = _stripes(2, 48, 5)
    dead = _mask(2, 48, "scattered", 0.5, 6)
    harmonic = harmonic_fill(x, dead, order=1)
    bih = harmonic_fill(x, dead, order=2)
    out = blend_fill(x, dead, SparseSpec(iters=0))
    # every filled pixel lies between (or at) the two fills: weights in [0, 1]
    lo, hi = torch.minimum(harmonic, bih), torch.maximum(harmonic, bih)
    assert bool(((out >= lo - 1e-5) & (out <= hi + 1e-5)).all())


def test_flat_neighbourhoods_get_their_value_and_stroke_edges_do_not():
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 8:24, 15:17] = 0.9  # a stroke on black
    dead = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    dead[0, 0, 4, 4] = dead[0, 0, 12, 14] = True  # in the background / next to the stroke
    dead[0, 0, 20:28, 2:10] = True  # a block: its centre sees too few known pixels
    flat, value = flat_holes(x * ~dead, dead)
    assert flat[0, 0, 4, 4] and value[0, 0, 4, 4] == 0
    assert not flat[0, 0, 12, 14] and not flat[0, 0, 24, 6] and not flat[~dead].any()
    out = blend_fill(x, dead)
    assert out[0, 0, 4, 4] == 0  # exactly black, whatever the sparse fills ring there


def test_images_too_small_to_probe_get_the_biharmonic_fill():
    x = torch.from_numpy(digits(6, 32, seed=2)[0])[:, None]
    x = torch.nn.functional.interpolate(x, size=(8, 8), mode="area")
    dead = _mask(6, 8, "scattered", 0.3, 3)
    bih = harmonic_fill(x, dead, order=2)
    flat, value = flat_holes(x * ~dead, dead)
    assert torch.equal(blend_fill(x, dead), torch.where(flat, value, bih))
