import dataclasses

import numpy as np
import pytest
import torch

import restore_core.sparse_fill as sf
from restore_core.fill import harmonic_fill
from restore_core.refiner import RefinerSpec, build_refiner, calibration, refine
from restore_core.sparse_fill import SparseSpec, dct_matrix, hole_scale, schedule, sparse_fill


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


def _stripes(n: int, size: int, seed: int) -> torch.Tensor:
    """Oriented sinusoidal texture: what a smooth interpolant blurs between missing pixels."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    out = []
    for _ in range(n):
        fy, fx, ph = (torch.rand(3, generator=g) * torch.tensor([1.2, 1.2, 6.3])).tolist()
        out.append(0.5 + 0.35 * torch.sin(fy * yy + fx * xx + ph))
    return torch.stack(out)[:, None]


def test_dct_matrix_is_orthonormal():
    c = dct_matrix(16, torch.float64)
    assert torch.allclose(c @ c.T, torch.eye(16, dtype=torch.float64), atol=1e-12)


def test_observed_pixels_unchanged_and_range(rng):
    x = torch.from_numpy(rng.random((2, 3, 24, 20), dtype=np.float32))
    dead = torch.from_numpy(rng.random((2, 1, 24, 20)) < 0.4)
    start = harmonic_fill(x, dead, order=2)
    out = sparse_fill(x, dead, start, SparseSpec(iters=5, block=8, step=2))
    keep = ~dead.expand_as(x)
    assert torch.equal(out[keep], x[keep])
    assert out.min() >= 0 and out.max() <= 1 and out.shape == x.shape
    off = sparse_fill(x, dead, start, SparseSpec(iters=0))
    assert torch.equal(off, torch.where(dead, start, x))


def test_beats_the_biharmonic_fill_on_texture():
    x = _stripes(3, 48, 0)
    dead = torch.rand(3, 1, 48, 48, generator=torch.Generator().manual_seed(1)) < 0.5
    bih = harmonic_fill(x, dead, order=2)
    out = sparse_fill(x, dead, bih, SparseSpec(iters=50, block=8, step=2))  # thin holes: 25 iterations
    assert _psnr(out, x) > _psnr(bih, x) + 3.0


def test_momentum_gets_further_in_the_same_iterations():
    """The heavy-ball step: on stripes with half their pixels dead, 20 iterations get closer to
    the clean image with it than without (~+0.9 dB here; +0.04..+0.15 dB on the benchmark's
    train split at fewer iterations, docs/restore.md)."""
    x = _stripes(3, 48, 0)
    dead = torch.rand(3, 1, 48, 48, generator=torch.Generator().manual_seed(2)) < 0.5
    bih = harmonic_fill(x, dead, order=2)
    plain, heavy = (
        sparse_fill(x, dead, bih, SparseSpec(iters=20, block=8, step=2, thin_iters=1.0, momentum=m)) for m in (0.0, 0.5)
    )
    assert torch.equal(heavy[~dead.expand_as(x)], x[~dead.expand_as(x)])
    assert _psnr(heavy, x) > _psnr(plain, x) + 0.3


def test_planes_are_independent_of_batch_and_chunking(rng, monkeypatch):
    x = torch.from_numpy(rng.random((3, 2, 20, 20), dtype=np.float32))
    dead = torch.from_numpy(rng.random((3, 1, 20, 20)) < 0.3)
    start = harmonic_fill(x, dead, order=2)
    spec = SparseSpec(iters=4, block=8, step=4)
    whole = sparse_fill(x, dead, start, spec)
    one = sparse_fill(x[1:2], dead[1:2], start[1:2], spec)
    assert torch.allclose(whole[1:2], one, atol=1e-6)
    monkeypatch.setattr(sf, "CHUNK_ELEMENTS", 1)  # one plane a chunk
    assert torch.allclose(sparse_fill(x, dead, start, spec), whole, atol=1e-6)


def test_hole_scale_measures_how_far_dead_pixels_are_from_observed_ones():
    dead = torch.zeros(3, 1, 12, 12, dtype=torch.bool)
    dead[0, 0, ::3, ::2] = True  # single pixels: every one touches an observed pixel
    dead[1, 0, 3:8, 4:9] = True  # a 5x5 block: 16 pixels at distance 1, 8 at 2, 1 at 3
    assert hole_scale(dead).tolist() == pytest.approx([1.0, 35 / 25, 0.0])


def test_thin_holes_get_a_lower_first_threshold_and_fewer_iterations():
    spec = SparseSpec(iters=50, lam_start=0.3, thin_lam_start=0.1, thin_iters=0.6, heavy_iters=3.0)
    thin, thick, mid = schedule(spec, 1.0), schedule(spec, 1.7), schedule(spec, 1.4)
    assert (thin.iters, thin.lam_start) == (30, pytest.approx(0.1))
    assert thick == spec
    assert thin.iters < mid.iters < spec.iters and thin.lam_start < mid.lam_start < spec.lam_start
    heavy, between = schedule(spec, 2.5), schedule(spec, 2.0)
    assert heavy == dataclasses.replace(spec, iters=150) and between.lam_start == spec.lam_start
    assert spec.iters < between.iters < heavy.iters
    # dense scattered pixels (75 % dead) get every iteration back, and dense_iters times more,
    # at the thin threshold; 50 % is thin (so are the probes of a 50 % image, ~62 % dead)
    dense = schedule(dataclasses.replace(spec, dense_iters=2.0), 1.0, rate=0.75)
    assert (dense.iters, dense.lam_start) == (100, pytest.approx(0.1))
    assert schedule(spec, 1.0, rate=0.5) == thin and schedule(spec, 1.0, rate=0.62) == thin
    assert schedule(dataclasses.replace(spec, dense_iters=1.0), 1.0, rate=0.75).iters == 50
    # a thin threshold above the spec's first one is held at it
    assert schedule(SparseSpec(lam_start=0.05), 1.0).lam_start == pytest.approx(0.05)


def test_images_with_different_schedules_in_one_batch(rng):
    """A scattered image and a block-holed one run different schedules; each result is the one it
    gets alone."""
    x = torch.from_numpy(rng.random((2, 1, 24, 24), dtype=np.float32))
    dead = torch.zeros(2, 1, 24, 24, dtype=torch.bool)
    dead[0] = torch.from_numpy(rng.random((1, 24, 24)) < 0.3)
    dead[1, 0, 4:12, 6:14] = True
    start = harmonic_fill(x, dead, order=2)
    spec = SparseSpec(iters=6, block=8, step=4)
    assert schedule(spec, float(hole_scale(dead[:1])[0])) != schedule(spec, float(hole_scale(dead[1:])[0]))
    both = sparse_fill(x, dead, start, spec)
    for i in range(2):
        alone = sparse_fill(x[i : i + 1], dead[i : i + 1], start[i : i + 1], spec)
        assert torch.allclose(both[i : i + 1], alone, atol=1e-6)


def test_tiny_images_and_no_dead_pixels():
    x = torch.rand(1, 1, 5, 7)
    dead = torch.zeros(1, 1, 5, 7, dtype=torch.bool)
    assert torch.equal(sparse_fill(x, dead, x, SparseSpec(iters=3)), x)
    dead[0, 0, 2, 3] = True
    out = sparse_fill(x, dead, x, SparseSpec(iters=3))  # block 16 > the image: replicate padding
    assert out.shape == x.shape and torch.equal(out[~dead.expand_as(x)], x[~dead.expand_as(x)])


def test_spec_is_validated():
    with pytest.raises(ValueError, match="multiple of step"):
        SparseSpec(block=16, step=5)
    with pytest.raises(ValueError, match="iters"):
        SparseSpec(iters=-1)
    with pytest.raises(ValueError, match="thresholds"):
        SparseSpec(lam_start=0.001, lam_end=0.01)
    with pytest.raises(ValueError, match="thin_iters"):
        SparseSpec(thin_iters=1.5)
    with pytest.raises(ValueError, match="momentum"):
        SparseSpec(momentum=1.0)
    with pytest.raises(ValueError, match="heavy_iters"):
        SparseSpec(heavy_iters=0.5)
    with pytest.raises(ValueError, match="dense_iters"):
        SparseSpec(dense_iters=0.5)
    with pytest.raises(ValueError, match="shape"):
        sparse_fill(
            torch.rand(1, 1, 8, 8), torch.zeros(1, 1, 8, 8, dtype=torch.bool), torch.rand(1, 1, 8, 9), SparseSpec()
        )


def test_refine_blends_the_sparse_fill_with_a_measured_weight():
    """On texture, an untrained refiner (= its fill) with the sparse fill as a third direction
    trusts it (weight near 1) and gains what it gains; observed pixels stay the input's."""
    x = _stripes(2, 64, 3)
    dead = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(4)) < 0.5
    model = build_refiner(RefinerSpec(width=4, levels=1))
    spec = SparseSpec(iters=30, block=8, step=2)
    w = calibration(model, x, dead, sparse=spec)
    assert w.shape == (2, 3) and float(w[:, 2].min()) > 0.5
    plain = refine(model, x, dead)
    blended = refine(model, x, dead, sparse=spec)
    assert _psnr(blended, x) > _psnr(plain, x) + 3.0
    keep = ~dead.expand_as(x)
    assert torch.equal(blended[keep], x[keep])
    assert torch.equal(refine(model, x, dead, sparse=SparseSpec(iters=0)), plain)


def test_a_non_finite_start_does_not_reach_the_observed_pixels(rng):
    x = torch.from_numpy(rng.random((1, 1, 32, 32), dtype=np.float32))
    dead = torch.from_numpy(rng.random((1, 1, 32, 32)) < 0.3)
    start = harmonic_fill(x, dead, order=2)
    start[dead] = float("nan")
    out = sparse_fill(x, dead, start, SparseSpec(iters=3, block=8, step=2))
    keep = ~dead.expand_as(x)
    assert torch.equal(out[keep], x[keep])


def test_add_sparse_fill_runs_only_where_the_weight_is_not_zero(rng):
    x = torch.from_numpy(rng.random((3, 1, 24, 24), dtype=np.float32))
    dead = torch.from_numpy(rng.random((3, 1, 24, 24)) < 0.4)
    start = harmonic_fill(x, dead, order=2)
    spec = SparseSpec(iters=5, block=8, step=4)
    weight = torch.tensor([0.5, 0.0, 1.0])
    out = start.clone()
    sf.add_sparse_fill(out, weight, x, dead, start, spec)
    expect = start + weight.view(-1, 1, 1, 1) * (sparse_fill(x, dead, start, spec) - start)
    assert torch.allclose(out, expect, atol=1e-6) and torch.equal(out[1], start[1])


def test_channels_are_thresholded_together(rng):
    """A coefficient is kept or dropped in all channels at once: a gray image given as three equal
    channels is filled as the gray one, and R, G, B with a shared edge keep it in all three."""
    gray = torch.from_numpy(rng.random((1, 1, 24, 24), dtype=np.float32))
    dead = torch.from_numpy(rng.random((1, 1, 24, 24)) < 0.4)
    spec = SparseSpec(iters=6, block=8, step=4)
    one = sparse_fill(gray, dead, harmonic_fill(gray, dead, order=2), spec)
    rgb = gray.expand(1, 3, 24, 24).contiguous()
    three = sparse_fill(rgb, dead, harmonic_fill(rgb, dead, order=2), spec)
    assert torch.allclose(three, one.expand_as(three), atol=1e-5)
    scaled = rgb * torch.tensor([1.0, 0.5, 0.25]).view(1, 3, 1, 1)  # one edge, three contrasts
    joint = sparse_fill(scaled, dead, harmonic_fill(scaled, dead, order=2), spec)
    alone = torch.cat(
        [
            sparse_fill(scaled[:, i : i + 1], dead, harmonic_fill(scaled[:, i : i + 1], dead, order=2), spec)
            for i in range(3)
        ],
        1,
    )
    assert not torch.allclose(joint, alone, atol=1e-4)  # the faint channel keeps what the strong ones see
