import dataclasses
import warnings

import numpy as np
import pytest

from imrestore_data import synth
from restore_core import masks, metrics, nmf
from restore_core.bases import Bases, BasesMeta
from restore_core.config import FitConfig
from restore_core.errors import UserError
from restore_core.inpaint import NMFInpainter, restore_image


def _damage(img, rate=0.4, seed=1):
    return masks.apply_dead_pixels(img, rate, np.random.default_rng(seed))


def test_patch_mode_fills_and_keeps_observed(bases):
    clean = synth.shapes(1, 29, seed=5)[0]  # odd size: exercises edge padding
    damaged, dead = _damage(clean)
    out = NMFInpainter(bases, FitConfig(stride=2)).restore_batch([damaged], [dead])[0]
    assert out.shape == clean.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out[~dead], damaged[~dead])
    assert metrics.psnr(clean, out) > metrics.psnr(clean, damaged) + 8


def test_batch_equals_one_by_one(bases):
    imgs = synth.shapes(3, 20, seed=9)
    pairs = [_damage(im, seed=i) for i, im in enumerate(imgs)]
    inp = NMFInpainter(bases, FitConfig(stride=3, tol=1e-7, max_iter=2000))
    together = inp.restore_batch([d for d, _ in pairs], [m for _, m in pairs])
    for (d, m), t in zip(pairs, together, strict=True):
        alone = inp.restore_batch([d], [m])[0]
        np.testing.assert_allclose(alone, t, atol=2e-3)


def test_gray_bases_on_rgb_and_rgba(bases):
    rgb = synth.shapes(1, 24, rgb=True, seed=2)[0]
    rgba = np.concatenate([rgb, np.ones((24, 24, 1), np.float32)], axis=2)
    for img in (rgb, rgba):
        damaged, dead = _damage(img)
        out = NMFInpainter(bases, FitConfig()).restore_batch([damaged], [dead])[0]
        assert out.shape == img.shape
        assert metrics.psnr(img, out) > metrics.psnr(img, damaged)


def test_small_all_dead_and_flat_images(bases):
    inp = NMFInpainter(bases, FitConfig())
    tiny = np.full((3, 4), 0.5, np.float32)
    dead = np.zeros((3, 4), bool)
    dead[1, 1] = True
    out = inp.restore_batch([np.where(dead, 0, tiny).astype(np.float32)], [dead])[0]
    assert out.shape == (3, 4) and np.isfinite(out).all()
    all_dead = np.zeros((10, 10), np.float32)
    out = inp.restore_batch([all_dead], [np.ones((10, 10), bool)])[0]
    assert np.isfinite(out).all() and out.shape == (10, 10)


def test_large_hole_gets_fallback_fill(bases):
    img = np.full((30, 30), 0.6, np.float32)
    dead = np.zeros((30, 30), bool)
    dead[5:25, 5:25] = True
    out = NMFInpainter(bases, FitConfig()).restore_batch([np.where(dead, 0, img)], [dead])[0]
    assert np.abs(out - 0.6).max() < 0.05


def test_global_mode_and_size_mismatch():
    imgs = synth.shapes(30, 12, seed=3)
    X = imgs.reshape(30, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nmf.ConvergenceWarning)
        res = nmf.learn_bases(X, 10, max_iter=50)
    b = Bases(res.H_, BasesMeta(mode="global", k=10, n_pixels=144, channels=1, image_shape=(12, 12)))
    damaged, dead = _damage(imgs[0])
    ours = NMFInpainter(b, FitConfig()).restore_batch([damaged], [dead])[0]
    seed = NMFInpainter(b, FitConfig(method="reference", reference_iter=300)).restore_batch([damaged], [dead])[0]
    np.testing.assert_array_equal(ours[~dead], damaged[~dead])
    assert not np.array_equal(seed[~dead], damaged[~dead])  # the write-up reconstructs everything
    assert metrics.psnr(imgs[0], ours) > metrics.psnr(imgs[0], seed)
    with pytest.raises(UserError, match="global for 12x12"):
        NMFInpainter(b, FitConfig()).restore_batch([np.zeros((10, 10), np.float32)], [np.zeros((10, 10), bool)])


def test_baselines_change_only_dead_pixels():
    clean = synth.shapes(1, 24, seed=4)[0]
    damaged, dead = _damage(clean, 0.3)
    for method in ("biharmonic", "median", "none"):
        out = restore_image(damaged, dead, method)
        np.testing.assert_array_equal(out[~dead], damaged[~dead])
        if method != "none":
            assert metrics.psnr(clean, out) > metrics.psnr(clean, damaged) + 5
    with pytest.raises(ValueError):
        restore_image(damaged, dead, "nmf")


def test_fitconfig_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        FitConfig().stride = 3  # type: ignore[misc]


def test_prior_fill_and_refine_are_used(bases):
    clean = synth.shapes(1, 24, seed=6)[0]
    damaged, dead = _damage(clean, 0.6)
    base = FitConfig(stride=2, prior=0.05)

    def run(**kw):
        return NMFInpainter(bases, dataclasses.replace(base, **kw)).restore_batch([damaged], [dead])[0]

    smooth, bih, refined = (
        run(prior_fill="smooth"),
        run(prior_fill="biharmonic"),
        run(prior_fill="biharmonic", refine=1),
    )
    assert not np.array_equal(smooth[dead], bih[dead])
    assert not np.array_equal(bih[dead], refined[dead])
    for out in (bih, refined):
        np.testing.assert_array_equal(out[~dead], damaged[~dead])
    # A dominant prior makes the fill follow its target: closer to biharmonic than to the smooth fill.
    from restore_core import baselines

    strong = run(prior_fill="biharmonic", prior=100.0)
    target = baselines.biharmonic(damaged, dead)
    other = baselines.smooth_fill(damaged, dead)
    assert np.abs(strong - target)[dead].mean() < np.abs(strong - other)[dead].mean()


def test_large_images_are_tiled_with_the_same_result(bases):
    clean = synth.shapes(1, 70, seed=11)[0]
    damaged, dead = _damage(clean, 0.4, seed=3)
    inp = NMFInpainter(bases, FitConfig(stride=2, tol=1e-6, max_iter=500))
    whole = inp.restore_batch([damaged], [dead], tile=128)[0]
    tiled = inp.restore_batch([damaged], [dead], tile=40)[0]  # 3x3 tiles with 12-pixel margins
    assert tiled.shape == clean.shape
    np.testing.assert_array_equal(tiled[~dead], damaged[~dead])
    assert abs(metrics.psnr(clean, tiled) - metrics.psnr(clean, whole)) < 0.3
    assert np.abs(tiled - whole).mean() < 0.01


def test_only_patches_with_a_dead_pixel_are_fitted(bases, monkeypatch):
    """Sparse defects: the solver sees the few patches around the dead pixels, and the result
    equals a full fit of every patch (the skipped ones feed no dead pixel)."""
    clean = synth.shapes(1, 40, seed=3)[0]
    dead = np.zeros(clean.shape, bool)
    dead[20, 20] = dead[5, 33] = True
    damaged = np.where(dead, 0.0, clean).astype(np.float32)
    seen: list[int] = []
    real = nmf.fit_weights

    def spy(X, *args, **kwargs):
        seen.append(int(X.shape[0]))
        return real(X, *args, **kwargs)

    monkeypatch.setattr(nmf, "fit_weights", spy)
    fit = FitConfig(stride=2, tol=1e-7, max_iter=2000)
    out = NMFInpainter(bases, fit).restore_batch([damaged], [dead])[0]
    # A 6x6 patch every 2 pixels: at most 3 x 3 patches hold a given pixel.
    assert 0 < sum(seen) <= 2 * 9
    full = NMFInpainter(bases, dataclasses.replace(fit, keep_observed=False)).restore_batch([damaged], [dead])[0]
    assert sum(seen) > 18 * 18 - 1  # the full reconstruction fits every patch
    np.testing.assert_allclose(out[dead], full[dead], atol=1e-4)
    np.testing.assert_array_equal(out[~dead], damaged[~dead])


def test_reference_method_fits_the_damaged_image_as_the_write_up_does(bases):
    """method seed sees the dead pixels as zeros (no prior, no fallback fill), so it restores
    far worse than nmf: it is the reference to beat, not a disguised biharmonic fill."""
    clean = synth.shapes(1, 24, seed=4)[0]
    damaged, dead = _damage(clean, rate=0.5)
    seed = NMFInpainter(bases, FitConfig(method="reference", reference_iter=200)).restore_batch([damaged], [dead])[0]
    ours = NMFInpainter(bases, FitConfig()).restore_batch([damaged], [dead])[0]
    assert metrics.psnr(clean, ours) > metrics.psnr(clean, seed) + 5
    # Its dead pixels come from fits that counted them as zeros: dark, far below the truth.
    assert seed[dead].mean() < 0.8 * clean[dead].mean()
