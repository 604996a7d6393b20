import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from restore_core import codec
from restore_core.errors import ImageDecodeError
from tests.conftest import png_bytes


def test_roundtrip_gray_rgb_rgba(rng):
    for shape in [(9, 7), (9, 7, 3), (9, 7, 4)]:
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        arr, info = codec.decode(png_bytes(a))
        assert arr.dtype == np.float32 and arr.shape == shape
        assert 0.0 <= arr.min() and arr.max() <= 1.0
        back, _ = codec.decode(codec.encode_like(arr, info))
        np.testing.assert_array_equal(np.rint(back * 255).astype(np.uint8), a)


def test_roundtrip_16bit(rng):
    a = rng.integers(0, 65536, (5, 6), dtype=np.uint16)
    arr, info = codec.decode(png_bytes(a))
    assert info.bit_depth == 16
    np.testing.assert_allclose(arr, a / 65535.0, atol=1e-6)
    back, info2 = codec.decode(codec.encode_like(arr, info))
    assert info2.bit_depth == 16
    np.testing.assert_array_equal(np.rint(back * 65535).astype(np.uint16), a)


def test_palette_becomes_rgb_and_keeps_transparency():
    img = Image.new("P", (4, 4))
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.putpixel((1, 1), 1)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    arr, _ = codec.decode(buf.getvalue())
    assert arr.shape == (4, 4, 3)
    assert arr[1, 1].tolist() == [1.0, 0.0, 0.0]
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=0)
    arr, _ = codec.decode(buf.getvalue())
    assert arr.shape == (4, 4, 4)


def test_cmyk_jpeg_becomes_rgb():
    buf = io.BytesIO()
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(buf, format="JPEG")
    arr, info = codec.decode(buf.getvalue())
    assert arr.shape == (8, 8, 3) and info.mode == "CMYK"


@pytest.mark.parametrize("data", [b"", b"not an image at all", None])
def test_bad_bytes_raise(data):
    with pytest.raises(ImageDecodeError):
        codec.decode(data)


def test_truncated_png_raises(rng):
    data = png_bytes(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    with pytest.raises(ImageDecodeError, match=r"truncated|corrupt|readable"):
        codec.decode(data[: len(data) // 2])


def test_pixel_cap():
    data = png_bytes(np.zeros((100, 100), np.uint8))
    with pytest.raises(ImageDecodeError, match="over the cap"):
        codec.decode(data, max_pixels=5000)


def test_float_tiff_nan_refused():
    a = np.full((4, 4), 0.5, np.float32)
    a[0, 0] = np.nan
    buf = io.BytesIO()
    Image.fromarray(a, mode="F").save(buf, format="TIFF")
    with pytest.raises(ImageDecodeError, match="NaN"):
        codec.decode(buf.getvalue())


# ----------------------------------------------------------------------------- output formats


def _photo_rgb() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[100:228, 150:278])  # 128x128 RGB uint8


def _metadata() -> tuple[bytes, bytes]:
    from PIL import ImageCms

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotated (pixels are stored as they are)
    exif[0x010F] = "TestCam"  # camera make
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return exif.tobytes(), icc


def _saved(arr: np.ndarray, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **params)
    return buf.getvalue()


def _check_metadata(data: bytes, icc: bytes) -> None:
    img = Image.open(io.BytesIO(data))
    assert img.getexif()[0x0112] == 6 and img.getexif()[0x010F] == "TestCam"
    assert img.info.get("icc_profile") == icc


def test_keep_writes_a_jpeg_back_as_jpeg_at_its_quality_with_exif_and_icc():
    exif, icc = _metadata()
    src = _saved(_photo_rgb(), "JPEG", quality=75, exif=exif, icc_profile=icc)
    arr, info = codec.decode(src)
    assert (info.format, info.quality) == ("JPEG", 75)
    out = codec.encode_like(arr, info, "keep")
    reopened = Image.open(io.BytesIO(out))
    assert reopened.format == "JPEG" and codec.estimate_jpeg_quality(reopened) == 75
    _check_metadata(out, icc)
    png = codec.encode_like(arr, info, "png")  # the lossless option, for archives
    assert Image.open(io.BytesIO(png)).format == "PNG"
    _check_metadata(png, icc)
    assert len(out) < 0.5 * len(png)  # a JPEG dataset does not grow several-fold
    assert codec.estimate_jpeg_quality(Image.open(io.BytesIO(codec.encode_like(arr, info, "jpeg", 30)))) == 30


def test_webp_is_lossless_unless_a_quality_is_given_and_keeps_exif():
    exif, icc = _metadata()
    pixels = _photo_rgb()
    arr, info = codec.decode(_saved(pixels, "PNG", exif=exif, icc_profile=icc))
    lossless = codec.encode_like(arr, info, "webp")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(lossless))), pixels)
    _check_metadata(lossless, icc)
    lossy = codec.encode_like(arr, info, "webp", quality=50)
    assert len(lossy) < len(lossless)


def test_jpeg_from_rgba_drops_alpha_at_default_quality():
    rgba = np.dstack([_photo_rgb(), np.full((128, 128), 200, np.uint8)])
    arr, info = codec.decode(_saved(rgba, "PNG"))
    out = Image.open(io.BytesIO(codec.encode_like(arr, info, "jpeg")))
    assert out.mode == "RGB" and codec.estimate_jpeg_quality(out) == codec.DEFAULT_JPEG_QUALITY


def test_keep_writes_png_for_formats_it_does_not_write():
    arr, info = codec.decode(_saved(_photo_rgb(), "BMP"))
    assert Image.open(io.BytesIO(codec.encode_like(arr, info, "keep"))).format == "PNG"
    gray16 = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    arr16, info16 = codec.decode(png_bytes(gray16))
    back, _ = codec.decode(codec.encode_like(arr16, info16, "keep"))
    assert info16.bit_depth == 16 and np.array_equal(np.rint(back * 65535).astype(np.uint16), gray16)


def test_damaged_exif_does_not_cost_the_image():
    arr, info = codec.decode(_saved(_photo_rgb(), "JPEG", quality=80))
    broken = dataclasses.replace(info, exif=b"Exif\x00\x00garbage-not-a-tiff-header")
    out = codec.encode_like(arr, broken, "keep")
    assert codec.decode(out)[0].shape == arr.shape
