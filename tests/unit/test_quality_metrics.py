"""No-reference metrics on images whose value is known."""

import numpy as np
import pytest
from scipy import ndimage

from restore_core import codec, masks, metrics, synth
from tests.conftest import png_bytes


def checkerboard(n: int = 16) -> np.ndarray:
    return (np.indices((n, n)).sum(axis=0) % 2).astype(np.float32)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return synth.photo_crops(1, 64, names=("grass",), seed=0)[0]


def test_flat_image():
    flat = np.full((20, 30), 0.5, np.float32)
    assert metrics.sharpness(flat) == 0.0
    assert metrics.contrast(flat) == 0.0
    assert metrics.entropy(flat) == 0.0
    assert metrics.saturated_fraction(flat) == 0.0
    exp = metrics.exposure(flat)
    assert exp.brightness == pytest.approx(0.5) and exp.dark_fraction == 0.0 and exp.bright_fraction == 0.0


def test_black_and_white_images():
    assert metrics.exposure(np.zeros((8, 8), np.float32)).dark_fraction == 1.0
    white = np.ones((8, 8, 3), np.float32)
    assert metrics.exposure(white).bright_fraction == 1.0
    assert metrics.saturated_fraction(white) == 1.0
    one_channel_hot = np.zeros((8, 8, 3), np.float32)
    one_channel_hot[..., 0] = 1.0  # red is not saturated in *every* channel
    assert metrics.saturated_fraction(one_channel_hot) == 0.0


def test_checkerboard():
    c = checkerboard(32)
    assert metrics.contrast(c) == pytest.approx(0.5)
    assert metrics.entropy(c) == pytest.approx(1.0)
    # interior Laplacian responses are +-4, so their variance is 16
    lap_interior = ndimage.laplace(c.astype(np.float64))[1:-1, 1:-1]
    assert lap_interior.var() == pytest.approx(16.0)
    assert 14.0 < metrics.sharpness(c) <= 16.0
    assert metrics.saturated_fraction(c) == pytest.approx(0.5)


def test_entropy_uniform_ramp_is_eight_bits():
    ramp = (np.arange(256, dtype=np.float32) / 255.0).reshape(16, 16)
    assert metrics.entropy(ramp) == pytest.approx(8.0)


def test_rgb_uses_luminance():
    gray = checkerboard(16)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    assert metrics.contrast(rgb) == pytest.approx(metrics.contrast(gray), abs=1e-6)
    rgba = np.concatenate([rgb, np.ones((16, 16, 1), np.float32)], axis=2)
    assert metrics.entropy(rgba) == pytest.approx(1.0)


def test_blur_lowers_sharpness(photo):
    blurred = ndimage.gaussian_filter(photo, 2.0)
    assert metrics.sharpness(blurred) < metrics.sharpness(photo) / 10


def test_sharpness_ignores_dead_pixels(photo, rng):
    blurred = ndimage.gaussian_filter(photo, 2.0)
    damaged, dead = masks.apply_dead_pixels(blurred, 0.03, rng)
    # the dead spikes alone make the blurred image look sharper than the original
    assert metrics.sharpness(damaged) > metrics.sharpness(photo)
    assert metrics.sharpness(damaged, ignore=dead) == pytest.approx(metrics.sharpness(blurred), rel=0.5)
    assert np.isnan(metrics.sharpness(damaged, ignore=np.ones_like(dead)))


def test_known_dead_fraction():
    img = np.full((10, 10), 0.5, np.float32)
    img[0, :5] = 0.0  # 5 of 100 pixels
    assert metrics.dead_fraction(masks.detect(img)) == pytest.approx(0.05)


def test_exact_duplicate_hash_ignores_encoding(photo):
    u8 = np.rint(photo * 255).astype(np.uint8)
    a, _ = codec.decode(png_bytes(u8))
    # same pixels, different bytes: another PNG compression level
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="PNG", compress_level=0)
    b, _ = codec.decode(buf.getvalue())
    assert buf.getvalue() != png_bytes(u8)
    assert metrics.pixel_hash(a) == metrics.pixel_hash(b)
    changed = a.copy()
    changed[0, 0] = 1.0 - changed[0, 0]
    assert metrics.pixel_hash(changed) != metrics.pixel_hash(a)
    assert len(metrics.pixel_hash(a)) == 64


def test_near_duplicate_hash(rng):
    from skimage.transform import rescale

    scene = synth.photo_crops(1, 96, names=("camera",), seed=0)[0]
    h = metrics.dhash(scene)
    assert 0 <= h < 2**64
    noisy = np.clip(scene + rng.normal(0, 0.01, scene.shape), 0, 1).astype(np.float32)
    brighter = np.clip(scene * 0.9 + 0.05, 0, 1)
    smaller = rescale(scene, 0.5, anti_aliasing=True).astype(np.float32)
    for near in (noisy, brighter, smaller):
        assert metrics.hamming(h, metrics.dhash(near)) <= 4
    others = synth.photo_crops(5, 96, names=("brick", "coins", "text", "grass"), seed=1)
    assert min(metrics.hamming(h, metrics.dhash(o)) for o in others) > 12
    assert metrics.hamming(0, 2**64 - 1) == 64
