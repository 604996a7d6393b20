import dataclasses
import json

import numpy as np
import pytest
import torch

from restore_core.fill import harmonic_fill
from restore_core.refiner import (
    RefinerSpec,
    build_refiner,
    calibration,
    random_training_mask,
    refine,
    self_supervised_gain,
    train_refiner,
    training_loss,
)


def test_spec_is_json_simple_and_validated():
    spec = RefinerSpec(channels=3, width=8, levels=1)
    assert RefinerSpec(**json.loads(json.dumps(dataclasses.asdict(spec)))) == spec
    with pytest.raises(ValueError, match="channels"):
        RefinerSpec(channels=2)


@pytest.mark.parametrize(
    "channels, levels, shape", [(1, 2, (2, 1, 17, 23)), (3, 1, (1, 3, 8, 8)), (1, 0, (1, 3, 9, 5))]
)
def test_refine_shapes_and_observed_pixels_unchanged(channels, levels, shape, rng):
    torch.manual_seed(0)
    model = build_refiner(RefinerSpec(channels=channels, width=8, levels=levels))
    for p in model.parameters():  # a net that changes things, not the identity start
        torch.nn.init.normal_(p, std=0.1)
    x = torch.from_numpy(rng.random(shape, dtype=np.float32))
    dead = torch.from_numpy(rng.random((shape[0], 1, *shape[2:])) < 0.4)
    out = refine(model, x, dead)
    assert out.shape == x.shape and out.dtype == torch.float32 and not out.requires_grad
    keep = ~dead.expand_as(x)
    assert torch.equal(out[keep], x[keep])
    assert out.min() >= 0 and out.max() <= 1


def test_a_new_refiner_starts_as_its_fill(rng):
    x = torch.from_numpy(rng.random((2, 1, 16, 16), dtype=np.float32))
    dead = torch.from_numpy(rng.random((2, 1, 16, 16)) < 0.3)
    model = build_refiner(RefinerSpec(width=8))
    fill = harmonic_fill(x, dead, iters=model.spec.fill_iters, order=model.spec.fill_order)
    assert torch.allclose(refine(model, x, dead, calibrate=False), fill, atol=1e-6)
    # calibrated: a zero correction gets weight 0; only the harmonic fill may be blended in
    a, h = calibration(model, x, dead).unbind(1)
    assert torch.equal(a, torch.zeros(2)) and bool(((h >= 0) & (h <= 1)).all())


def _smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True).clamp(0, 1)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


@pytest.mark.parametrize("probe_size", [0, 16])
def test_calibration_refuses_a_harmful_refiner(probe_size):
    x = _smooth_images(4, 32, 0)
    g = torch.Generator().manual_seed(1)
    dead = torch.rand(4, 1, 32, 32, generator=g) < 0.3
    model = build_refiner(RefinerSpec(width=8, levels=1))
    torch.nn.init.constant_(model.out.bias, 0.2)  # a correction that is wrong everywhere
    fill = harmonic_fill(x, dead, iters=model.spec.fill_iters, order=model.spec.fill_order)
    raw = refine(model, x, dead, calibrate=False)
    cal = refine(model, x, dead, probe_size=probe_size)
    a = calibration(model, x, dead, probe_size=probe_size)[:, 0]
    assert float(a.max()) < 0.1
    assert _psnr(raw, x) < _psnr(fill, x) - 10
    assert _psnr(cal, x) > _psnr(fill, x) - 1.0  # the harmonic weight from a 16x16 window is noisy
    keep = ~dead.expand_as(x)
    assert torch.equal(cal[keep], x[keep])


def test_calibration_trusts_a_correction_that_helps():
    """A refiner whose correction is the truth gets weight 1 (and the harmonic fill none)."""
    x = _smooth_images(3, 32, 2)
    x = (x + 0.1 * torch.sign(torch.sin(torch.arange(32.0) * 1.3)).view(1, 1, 1, 32)).clamp(0, 1)  # stripes
    g = torch.Generator().manual_seed(3)
    dead = torch.rand(3, 1, 32, 32, generator=g) < 0.3
    model = build_refiner(RefinerSpec(width=8, levels=1))

    class Oracle(torch.nn.Module):  # a "net" that knows the clean images
        def __init__(self) -> None:
            super().__init__()
            self.spec = model.spec

        def forward(self, fill, dead, extra=None, other=None):
            return x.repeat(fill.shape[0] // x.shape[0], 1, 1, 1)  # the probes come batched

    a, h = calibration(Oracle(), x, dead).unbind(1)
    assert float(a.min()) > 0.99 and float(h.max()) < 0.01
    assert _psnr(refine(Oracle(), x, dead), x) > 60


def test_small_windows_borrow_the_batchs_weights_large_ones_do_not():
    """Per-image weights from few probe pixels are pulled towards the batch's pooled fit; a
    64x64 window is fitted on its own, so its result does not depend on the rest of the batch."""
    from restore_core.refiner_calibration import _shrunk_weights

    eye = torch.eye(2, dtype=torch.float64).expand(2, 2, 2)
    grams, rhss = [eye.clone()], [torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)]
    alone = _shrunk_weights(grams, rhss, 0.0)
    assert torch.allclose(alone, torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64))
    pulled = _shrunk_weights(grams, rhss, 3.0)
    assert torch.allclose(pulled[:, 0], torch.tensor([0.625, 0.375], dtype=torch.float64))  # (1 + 3 * 0.5) / 4
    assert torch.equal(_shrunk_weights([eye[:1]], [rhss[0][:1]], 3.0), alone[:1])  # a batch of one: its own

    model = build_refiner(RefinerSpec(width=4, levels=1))
    torch.nn.init.constant_(model.out.bias, 0.05)
    x = _smooth_images(2, 64, 4)
    dead = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(5)) < 0.3
    both = calibration(model, x, dead)
    one = calibration(model, x[:1], dead[:1])
    assert torch.allclose(both[:1], one)


def test_a_costly_direction_that_gains_little_is_left_out():
    """A direction listed as costly (a full-image pass) is dropped from an image's blend when it
    lowers the probes' squared error by less than min_gain times the base fill's, and the rest
    is refitted; one that gains more keeps its weight. Error = miss + w G w - 2 w r."""
    from restore_core.refiner_calibration import _box_least_squares, _drop_small_gains

    gram = torch.eye(2, dtype=torch.float64).repeat(2, 1, 1)
    rhs = torch.tensor([[1.0, 0.01], [0.5, 0.5]], dtype=torch.float64)
    miss = torch.tensor([1.0001, 0.5], dtype=torch.float64)  # both images: 0 error at the optimum
    full = _box_least_squares(gram, rhs)
    assert torch.allclose(full, rhs)
    # image 0: direction 1 removes 1e-4 of the base's error (under 0.005); image 1: half of it
    out = _drop_small_gains(full, gram, rhs, miss, [1], 0.005)
    assert torch.allclose(out, torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64))
    # direction 0 carries nearly all of image 0's gain: listed first, it stays
    assert torch.allclose(_drop_small_gains(full, gram, rhs, miss, [0, 1], 0.005), out)
    assert torch.equal(_drop_small_gains(full, gram, rhs, miss, [1], 1e-5), full)
    # a direction at 0 is never brought back by a later drop's refit: here dropping the third
    # direction would otherwise hand its share to the first (directions net, harmonic, sparse)
    d = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([0.06, -0.01, 1.0], dtype=torch.float64)
    g3, r3, m3 = (d @ d.T)[None], (d @ t)[None], (t @ t)[None]
    w3 = _box_least_squares(g3, r3)
    assert w3[0, 0] == 0 and w3[0, 2] > 0
    out3 = _drop_small_gains(w3, g3, r3, m3, [0, 2], 0.005)
    assert out3[0, 0] == 0
    # the drops of one image together cost at most min_gain: two directions of 0.4 % each, one goes
    g2 = torch.eye(3, dtype=torch.float64)[None]
    r2 = torch.tensor([[1.0, 0.002**0.5 * 2**0.5, 0.002**0.5 * 2**0.5]], dtype=torch.float64)
    m2 = torch.tensor([1.0 + 0.008], dtype=torch.float64)  # 0 error at the full fit
    w2 = _box_least_squares(g2, r2)
    out2 = _drop_small_gains(w2, g2, r2, m2, [1, 2], 0.005)
    assert int((out2[0, 1:] == 0).sum()) == 1


def test_random_training_mask_kinds_and_rates():
    g = torch.Generator().manual_seed(0)
    m = random_training_mask((64, 1, 32, 32), g, "cpu")
    assert m.dtype == torch.bool and m.shape == (64, 1, 32, 32)
    rates = m.float().mean(dim=(1, 2, 3))
    assert 0.02 < float(rates.min()) and float(rates.max()) < 0.95
    assert float(rates.std()) > 0.05  # rates vary between images
    # some images are hidden in whole rows or columns (lines)
    full_rows = m[:, 0].all(dim=2).any(dim=1) | m[:, 0].all(dim=1).any(dim=1)
    assert bool(full_rows.any())
    # same generator state, same masks
    assert torch.equal(m, random_training_mask((64, 1, 32, 32), torch.Generator().manual_seed(0), "cpu"))


def test_training_loss_only_sees_observed_pixels(rng):
    # The loss must not depend on the values under unobserved pixels: it trains on damaged data.
    model = build_refiner(RefinerSpec(width=8, levels=1))
    x = torch.from_numpy(rng.random((2, 1, 16, 16), dtype=np.float32))
    observed = torch.from_numpy(rng.random((2, 1, 16, 16)) > 0.3)
    a = training_loss(model, x, observed, torch.Generator().manual_seed(3))
    y = torch.where(observed, x, torch.rand(x.shape, generator=torch.Generator().manual_seed(9)))
    b = training_loss(model, y, observed, torch.Generator().manual_seed(3))
    assert a.ndim == 0 and a.requires_grad
    assert torch.allclose(a, b)


def test_loss_decreases_on_a_tiny_set():
    # Self-supervised on damaged images only: on stripes one pixel wide the fill averages a dead
    # pixel's neighbours across the stripes (wrong by half the contrast); the refiner learns to
    # follow the stripe, so the loss on a fixed batch (fixed hidden pixels) falls far below the
    # untrained refiner's (which is its fill).
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    cols = np.arange(16) % 2
    clean = np.stack([np.tile(np.where(cols == p, 0.8, 0.2), (16, 1)) for p in rng.integers(0, 2, 8)])
    clean = (clean * rng.uniform(0.6, 1.0, (8, 1, 1))).astype(np.float32)
    observed = rng.random(clean.shape) > 0.2
    damaged = np.where(observed, clean, 0.0).astype(np.float32)
    spec = RefinerSpec(width=8, levels=1, fill_order=1, fill_iters=50)
    x = torch.from_numpy(damaged)[:, None]
    m = torch.from_numpy(observed)[:, None]

    def fixed_loss(model: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(training_loss(model, x, m, torch.Generator().manual_seed(7)))

    before = fixed_loss(build_refiner(spec))
    losses: list[float] = []
    model = train_refiner(
        damaged,
        observed,
        spec,
        steps=100,
        lr=3e-3,
        batch_size=8,
        seed=0,
        crop=16,
        ema_decay=0.0,
        progress=lambda step, loss: losses.append(loss),
    )
    assert model.steps_done == 100 and len(losses) == 2 and not model.training
    assert fixed_loss(model) < 0.5 * before
    # the check a job runs on rows kept aside: 0 dB for an untrained refiner, clearly > 0 now
    gain = self_supervised_gain(model, x, m, torch.Generator().manual_seed(11))
    assert gain > 3.0
    assert self_supervised_gain(build_refiner(spec), x, m, torch.Generator().manual_seed(11)) == pytest.approx(0.0)


def test_the_net_runs_only_on_the_images_asked_for(rng):
    """refine runs the net's full-image pass only on the images whose calibrated weight is not 0:
    on those it gives what the whole batch gives; the others keep their fill."""
    from restore_core.refiner_net import _predict

    model = build_refiner(RefinerSpec(width=4, levels=1))
    torch.nn.init.normal_(model.out.weight, std=0.1)  # a net that changes its fill
    x = torch.from_numpy(rng.random((3, 2, 16, 16), dtype=np.float32))
    dead = torch.from_numpy(rng.random((3, 1, 16, 16)) < 0.4)
    with torch.no_grad():
        full, filled, _ = _predict(model, x, dead, None)
        rows = torch.tensor([True, False, True])
        some, _, _ = _predict(model, x, dead, None, rows=rows)
    assert torch.allclose(some[rows], full[rows], atol=1e-6)
    assert torch.equal(some[1], filled[1]) and not torch.allclose(full[1], filled[1])
