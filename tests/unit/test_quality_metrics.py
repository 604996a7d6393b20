"""No-reference metrics on images whose value is known."""

import numpy as np
import pytest
from scipy import ndimage

from imrestore_data import synth
from restore_core import codec, masks, metrics
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
    """pHash: copies changed in ways that keep the picture stay within 4 of 64 bits; other photos,
    and another crop of the same photo, do not."""
    import io

    from PIL import Image
    from skimage.transform import rescale

    photo = synth.load_photo("camera")
    scene = np.ascontiguousarray(photo[100:292, 150:342])
    h = metrics.phash(scene)
    assert 0 <= h < 2**64 and metrics.hash_is_informative(h)
    noisy = np.clip(scene + rng.normal(0, 0.01, scene.shape), 0, 1).astype(np.float32)
    brighter = np.clip(scene * 0.9 + 0.05, 0, 1)
    smaller = rescale(scene, 0.5, anti_aliasing=True).astype(np.float32)
    trimmed = np.asarray(
        Image.fromarray(scene[2:-2, 2:-2], mode="F").resize(scene.shape[::-1], Image.Resampling.BILINEAR), np.float32
    )
    buf = io.BytesIO()
    Image.fromarray(np.rint(scene * 255).astype(np.uint8)).save(buf, format="JPEG", quality=60)
    jpeg = np.asarray(Image.open(buf), np.float32) / 255
    for near in (noisy, brighter, smaller, trimmed, jpeg):
        assert metrics.hamming(h, metrics.phash(near)) <= 4
    shifted = np.ascontiguousarray(photo[100:292, 190:382])  # the same photo, 40 of 192 px further right
    assert metrics.hamming(h, metrics.phash(shifted)) > 8
    others = synth.photo_crops(5, 96, names=("brick", "coins", "text", "grass"), seed=1)
    assert min(metrics.hamming(h, metrics.phash(o)) for o in others) > 12
    assert metrics.hamming(0, 2**64 - 1) == 64


# ----------------------------------------------------------------------------- issue kinds (#14)


def _scene(size: int) -> np.ndarray:
    """The same photo scene at any size: a 1024 px crop area-averaged down to ``size``."""
    from PIL import Image

    big = synth.photo_crops(1, 1024, rgb=True, names=("astronaut",), seed=0, scale_range=(1.0, 1.0))[0]
    small = Image.fromarray(np.rint(big * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, np.float32) / 255.0


@pytest.mark.parametrize("blur_of_width", [0.0, 0.03])
def test_blur_verdict_is_the_same_at_64_256_and_1024(blur_of_width):
    """Blur measured on the working copy: a scene blurred by 3% of its width reads blurry at every
    size, the sharp scene at none (the variance of the Laplacian differs 100-fold across sizes)."""
    verdicts = []
    for size in (64, 256, 1024):
        img = _scene(size)
        if blur_of_width:
            img = ndimage.gaussian_filter(img, (blur_of_width * size, blur_of_width * size, 0))
        verdicts.append(metrics.blur_width(metrics.working_copy(img)) > 1.0)
    assert verdicts == [bool(blur_of_width)] * 3


def test_blur_width_ignores_dead_pixels_and_flat_images(photo, rng):
    work = metrics.working_copy(photo)
    sharp = metrics.blur_width(work)
    blurred = ndimage.gaussian_filter(photo, 2.5)
    damaged, _ = masks.apply_dead_pixels(blurred, 0.15, rng)
    fill = masks.drop_large_regions(masks.zero_pixels(damaged), 16)  # as the quality scorer fills
    assert metrics.blur_width(metrics.working_copy(damaged)) < 1.0  # dead spikes read as sharp edges
    assert sharp < 1.0 < metrics.blur_width(metrics.working_copy(damaged, fill))
    assert np.isnan(metrics.blur_width(np.full((64, 64), 0.4)))  # nothing to measure: not blurry


def test_noise_level_tells_grain_from_a_blur(photo, rng):
    """A soft but noisy image keeps its noise; a blurred one, stored in 8 bits, has only the rounding left."""
    flat = np.full((64, 64), 0.5)
    noisy = flat + rng.normal(0, 2 / 255, flat.shape)
    assert metrics.noise_level(noisy) == pytest.approx(2.0, rel=0.15)
    assert metrics.noise_level(flat) == pytest.approx(0.0, abs=1e-6)
    soft = ndimage.gaussian_filter(photo, 2.0)
    blurred = np.rint(soft * 255) / 255  # stored in 8 bits: the rounding (std 0.29 levels) is all that is left
    grainy = np.rint((soft + rng.normal(0, 1 / 255, soft.shape)) * 255) / 255  # as soft, with 1 level of grain
    assert metrics.noise_level(blurred) < 0.35 < 0.9 < metrics.noise_level(grainy)
    damaged, dead = masks.apply_dead_pixels(blurred, 0.03, rng)
    assert metrics.noise_level(damaged) > 0.5  # dead spikes read as noise (the MAD damps them)...
    assert metrics.noise_level(damaged, dead) < 0.35  # ...unless filled first
    assert np.isnan(metrics.noise_level(np.zeros((4, 64))))


def test_black_content_is_not_dead_pixels(rng):
    img = np.full((64, 64, 3), 0.6, np.float32)
    img[10:40, 5:50] = 0.0  # a genuinely black object
    img[50:, :] = rng.integers(0, 2, (14, 64, 1)) / 255.0  # a dim area quantised to 0 in places
    isolated = metrics.isolated_dead_pixels(img, masks.zero_pixels(img))
    assert not isolated[10:40, 5:50].any() and not isolated[50:].any()
    damaged, dead = masks.apply_dead_pixels(img, 0.03, rng)
    found = metrics.isolated_dead_pixels(damaged, masks.zero_pixels(damaged))
    away = ndimage.binary_erosion(img[..., 0] > 0.5, iterations=2)  # live, not touching black content
    assert (found == dead)[away].all() and dead[away].sum() > 20


def test_grayscale_stored_as_rgb_is_grayscale(photo):
    rgb = np.repeat(photo[..., None], 3, axis=2)
    assert metrics.color_fraction(photo) == 0.0 and metrics.color_fraction(rgb) == 0.0
    colour = synth.photo_crops(1, 64, rgb=True, names=("coffee",), seed=0)[0]
    assert metrics.color_fraction(colour) > 0.5


def test_dark_and_light_quantiles():
    night = np.full((64, 64), 0.04, np.float32)
    night[5:15, 5:15] = 0.95  # lamps: a dark scene that is fine
    assert metrics.luminance_quantiles(night, (0.99,))[0] > 0.3
    dim = synth.photo_crops(1, 64, names=("camera",), seed=0)[0] * 0.15
    assert metrics.luminance_quantiles(dim, (0.99,))[0] < 0.3
    washed = 1 - (1 - synth.photo_crops(1, 64, names=("camera",), seed=0)[0]) * 0.2
    assert metrics.luminance_quantiles(washed, (0.05,))[0] > 0.6


def test_a_dim_photo_is_dark_not_blank(photo, rng):
    """Under-exposed to a couple of dozen 8-bit levels, a photo keeps its contrast against its
    own headroom (dark, not low_information); a flat mid-gray frame with noise does not."""
    dim = np.rint(photo * 0.08 * 255) / 255  # stored in 8 bits
    assert metrics.relative_contrast(dim) > 0.1
    flat = np.clip(0.5 + rng.normal(0, 0.003, (64, 64)), 0, 1)
    assert metrics.relative_contrast(flat) < 0.06
    assert metrics.relative_contrast(np.zeros((8, 8))) == 0.0


def test_content_entropy_leaves_a_plain_background_out(photo, rng):
    on_black = photo.copy()
    on_black[:, :40] = 0.0
    assert metrics.entropy(on_black) < 4.0 < metrics.content_entropy(on_black)
    flat = np.clip(0.5 + rng.normal(0, 0.004, (64, 64)), 0, 1)
    assert metrics.content_entropy(flat) < 3.0
    assert metrics.content_entropy(photo * 0.1) > 3.0  # dim, not empty


def test_plain_hashes_are_not_informative(rng):
    sky = np.tile(np.linspace(0.3, 0.7, 64, dtype=np.float32)[:, None], (1, 64))
    for plain in (sky, np.full((32, 32), 0.5, np.float32), np.clip(0.4 + rng.normal(0, 0.004, (64, 64)), 0, 1)):
        assert not metrics.hash_is_informative(metrics.dhash(plain))
        assert not metrics.hash_is_informative(metrics.phash(plain))
    assert metrics.hash_is_informative(metrics.dhash(synth.photo_crops(1, 64, names=("camera",), seed=0)[0]))
    assert metrics.hash_is_informative(metrics.phash(synth.photo_crops(1, 64, names=("camera",), seed=0)[0]))


def test_noise_level_is_scikit_images_estimate_sigma_bit_for_bit():
    """noise_level computes estimate_sigma's wavelet MAD itself (faster); the blurry rule's
    noise_level < 0.22 must keep every decision, so the numbers must be the same."""
    from skimage import restoration

    from restore_core import metrics as m

    rng = np.random.default_rng(3)
    for k in range(20):
        h, w = (int(x) for x in rng.integers(8, 70, 2))
        img = rng.random((h, w, 3)).astype(np.float32)
        if k % 2:
            img = np.round(img * 255) / 255  # 8-bit levels, as decoded
        want = float(restoration.estimate_sigma(m.luminance(img).astype(np.float64))) * 255.0
        assert m.noise_level(img) == want
    assert np.isnan(m.noise_level(np.zeros((16, 16), np.float32)))  # no detail at all: as estimate_sigma
