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
