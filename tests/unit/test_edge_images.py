"""Edge images through the decoder and the per-row pipeline: each gets a defined result.

The definitions tested here are the ones documented in ``docs/reliability.md``:

- animated / multi-page files: the first frame; EXIF orientation: pixels as stored;
- 16-bit gray stays 16-bit; 16-bit RGB is read at 8 bits (Pillow's limit); CMYK -> RGB;
  palette with transparency -> RGBA; float TIFF with NaN/Inf or values outside [0, 1] -> error row;
- 100% dead images come back unchanged (nothing observed, nothing to infer), ``dead_fraction_out`` 1;
- images smaller than a patch and 1-pixel-wide strips are restored at their own size;
- single-colour images are filled with that colour;
- a header declaring more pixels than ``decode.max_pixels`` is refused before pixels are
  allocated, and the process's peak memory shows it.
"""

from __future__ import annotations

import io
import json
import re
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from restore_core import codec
from restore_core.bases import Bases
from restore_core.config import RestoreConfig, from_dict
from restore_core.errors import ImageDecodeError
from restore_core.pipeline import Restorer
from tests.conftest import png_bytes

REPO = Path(__file__).resolve().parents[2]
PATCH = 6


@pytest.fixture(scope="module")
def restorer(bases: Bases) -> Restorer:
    return Restorer(bases, None, from_dict(RestoreConfig, {"device": "cpu"}))


def restore_one(restorer: Restorer, data: bytes) -> dict:
    """Run one row; return that row as a dict (with ``out`` decoded when ok)."""
    out = restorer({"id": np.array(["x"], dtype=object), "image": np.array([data], dtype=object)})
    row = {k: v[0] for k, v in out.items()}
    assert row["id"] == "x"
    if row["status"] == "ok":
        row["out"], row["out_info"] = codec.decode(row["image"])
    return row


def save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def raw_png(width: int, height: int, bit_depth: int, color_type: int, idat: bytes) -> bytes:
    """A PNG written by hand, so its header may say anything (idat: already compressed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def damaged(shape: tuple[int, ...], value: int = 128, rate: float = 0.3, seed: int = 0) -> tuple[np.ndarray, ...]:
    """uint8 image of ``value`` (random 1..255 when negative) with a ``rate`` share of dead pixels."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 256, shape, dtype=np.uint8) if value < 0 else np.full(shape, value, np.uint8)
    dead = rng.random(shape[:2]) < rate
    a[dead] = 0
    return a, dead


# ----------------------------------------------------------------------------- formats and modes


def test_animated_gif_gives_first_frame(restorer: Restorer):
    frames = [Image.fromarray(np.full((8, 9), v, np.uint8)).convert("P") for v in (60, 120, 250)]
    data = save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    arr, _ = codec.decode(data)
    assert arr.shape == (8, 9, 3) and np.allclose(arr * 255, 60, atol=1)
    row = restore_one(restorer, data)
    assert row["status"] == "ok" and np.allclose(row["out"] * 255, 60, atol=1)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "WEBP"])
def test_multi_frame_png_tiff_webp_give_first_frame(fmt: str):
    frames = [Image.fromarray(np.full((6, 7, 3), v, np.uint8)) for v in (10, 200)]
    kw = {"lossless": True} if fmt == "WEBP" else {}
    arr, _ = codec.decode(save(frames[0], fmt, save_all=True, append_images=frames[1:], **kw))
    assert arr.shape[:2] == (6, 7) and np.allclose(arr * 255, 10, atol=1)


def test_exif_rotated_jpeg_keeps_stored_orientation(restorer: Restorer):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = save(Image.fromarray(np.full((8, 16, 3), 90, np.uint8)), "JPEG", exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).getexif().get(0x0112) == 6
    row = restore_one(restorer, data)
    assert row["status"] == "ok" and row["out"].shape == (8, 16, 3)  # stored 16 wide, not rotated to 8
    assert (row["width"], row["height"]) == (16, 8)


def test_16bit_gray_stays_16bit(restorer: Restorer):
    a, dead = damaged((12, 12), value=-1)
    a16 = a.astype(np.uint16) * 257
    row = restore_one(restorer, png_bytes(a16))
    assert row["status"] == "ok" and row["out_info"].bit_depth == 16 and row["out_info"].mode.startswith("I;16")
    np.testing.assert_allclose(row["out"][~dead], a16[~dead] / 65535.0, atol=1e-6)


def test_16bit_rgb_is_read_at_8_bits():
    a = (np.arange(4 * 5 * 3).reshape(4, 5, 3) * 1000).astype(">u2")
    rows = b"".join(b"\0" + a[i].tobytes() for i in range(4))
    arr, info = codec.decode(raw_png(5, 4, 16, 2, zlib.compress(rows)))
    assert arr.shape == (4, 5, 3) and info.bit_depth == 8
    np.testing.assert_allclose(arr, (a >> 8) / 255.0, atol=1e-6)  # the high byte


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_becomes_rgb(restorer: Restorer, fmt: str):
    rgb, _ = damaged((10, 10, 3), value=-1, rate=0.0)
    row = restore_one(restorer, save(Image.fromarray(rgb).convert("CMYK"), fmt))
    assert row["status"] == "ok" and row["out"].shape == (10, 10, 3) and row["channels"] == 3


def test_palette_with_transparency_becomes_rgba(restorer: Restorer):
    rgb, _ = damaged((10, 10, 3), value=-1, rate=0.0)
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    row = restore_one(restorer, save(pal, "PNG", transparency=0))
    assert row["status"] == "ok" and row["out"].shape == (10, 10, 4)
    row = restore_one(restorer, save(pal, "PNG"))
    assert row["status"] == "ok" and row["out"].shape == (10, 10, 3)


def test_bilevel_la_and_int32_modes(restorer: Restorer):
    bilevel = save(Image.fromarray(np.eye(8, dtype=bool)), "PNG")
    la = save(Image.fromarray(np.dstack([np.full((8, 8), 99, np.uint8), np.full((8, 8), 255, np.uint8)]), "LA"), "PNG")
    i32 = save(Image.fromarray((np.arange(64).reshape(8, 8) * 1000).astype(np.int32), mode="I"), "TIFF")
    for data, shape in [(bilevel, (8, 8)), (la, (8, 8, 2)), (i32, (8, 8))]:
        row = restore_one(restorer, data)
        assert row["status"] == "ok" and row["out"].shape == shape


@pytest.mark.parametrize(
    ("bad", "message"), [(np.nan, "NaN or Inf"), (np.inf, "NaN or Inf"), (-np.inf, "NaN or Inf"), (1.5, r"\[0, 1\]")]
)
def test_float_tiff_nonfinite_or_out_of_range_is_an_error_row(restorer: Restorer, bad: float, message: str):
    a = np.full((6, 6), 0.5, np.float32)
    a[2, 3] = bad
    row = restore_one(restorer, save(Image.fromarray(a, mode="F"), "TIFF"))
    assert row["status"] == "error" and row["image"] is None
    assert "ImageDecodeError" in row["error"] and re.search(message, row["error"])


def test_float_tiff_in_range_restores_at_16_bits(restorer: Restorer):
    a = np.linspace(0.1, 0.9, 64, dtype=np.float32).reshape(8, 8)
    a[3, 3] = 0.0
    row = restore_one(restorer, save(Image.fromarray(a, mode="F"), "TIFF"))
    assert row["status"] == "ok" and row["out_info"].bit_depth == 16
    assert 0.0 < row["out"][3, 3] < 1.0  # the dead pixel was filled


def test_unlisted_formats_are_refused():
    """Only DECODE_FORMATS are parsed: an ICO / TGA / PSD never reaches its Pillow plugin."""
    img = Image.fromarray(np.full((16, 16, 3), 40, np.uint8))
    for fmt in ("ICO", "TGA", "PCX", "SGI"):
        with pytest.raises(ImageDecodeError, match="formats tried"):
            codec.decode(save(img, fmt))
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ImageDecodeError, match="formats tried"):
        codec.decode(eps)


# ----------------------------------------------------------------------------- content extremes


@pytest.mark.parametrize("shape", [(16, 16), (16, 16, 3), (1, 1), (3, 2, 4)])
def test_all_dead_image_is_an_error_row_passed_through(restorer: Restorer, shape: tuple[int, ...]):
    """Issue 16: nothing observed, nothing to fill from: an error row, the input bytes as they were."""
    data = png_bytes(np.zeros(shape, np.uint8))
    row = restore_one(restorer, data)
    assert row["status"] == "error" and "nothing observed" in row["error"]
    assert row["image"] == data  # passed through untouched
    assert row["dead_fraction_in"] == 1.0 and np.isnan(row["dead_fraction_out"])


@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (2, 3), (5, 5), (PATCH - 1, PATCH + 3), (3, 4, 3)])
def test_smaller_than_a_patch(restorer: Restorer, shape: tuple[int, ...]):
    a, dead = damaged(shape, value=-1, rate=0.3, seed=sum(shape))
    if shape != (1, 1):
        dead[0, 0] = True
        a[0, 0] = 0
    row = restore_one(restorer, png_bytes(a))
    if dead.all():  # a 1x1 image whose one pixel is dead: nothing observed (issue 16)
        assert row["status"] == "error" and "nothing observed" in row["error"]
        return
    assert row["status"] == "ok" and row["out"].shape == shape
    assert np.all(np.isfinite(row["out"]))
    np.testing.assert_allclose(row["out"][~dead], a[~dead] / 255.0, atol=1 / 255 + 1e-6)  # observed kept


@pytest.mark.parametrize(("value", "channels"), [(128, 1), (255, 1), (1, 1), (77, 3), (255, 3)])
def test_single_colour_is_filled_with_that_colour(restorer: Restorer, value: int, channels: int):
    shape = (20, 20) if channels == 1 else (20, 20, channels)
    a, dead = damaged(shape, value=value, rate=0.3)
    row = restore_one(restorer, png_bytes(a))
    assert row["status"] == "ok"
    np.testing.assert_allclose(row["out"][dead], value / 255.0, atol=0.02)
    assert row["dead_fraction_out"] == 0.0
    # Without dead pixels the image comes back bit-identical.
    row = restore_one(restorer, png_bytes(np.full(shape, value, np.uint8)))
    assert np.array_equal(np.rint(row["out"] * 255).astype(np.uint8), np.full(shape, value, np.uint8))


def _strip_rows(restorer: Restorer, length: int) -> None:
    a, dead = damaged((1, length), value=-1, rate=0.3, seed=3)
    for arr, d in [(a, dead), (a.T.copy(), dead.T)]:
        row = restore_one(restorer, png_bytes(arr))
        assert row["status"] == "ok" and row["out"].shape == arr.shape
        np.testing.assert_allclose(row["out"][~d], arr[~d] / 255.0, atol=1e-6)
        assert row["dead_fraction_out"] == 0.0


def test_one_pixel_wide_strips(restorer: Restorer):
    _strip_rows(restorer, 5_000)


@pytest.mark.slow
def test_one_pixel_wide_strips_100000(restorer: Restorer):
    _strip_rows(restorer, 100_000)


# ----------------------------------------------------------------------------- bombs and memory

# Runs in a fresh interpreter and, before each decode, resets the kernel's peak-RSS counter
# (writing 5 to /proc/self/clear_refs resets VmHWM), so that the peak after the decode is what
# that decode needed on top of the current resident set. Prints {name: [outcome, MiB]}.
_MEASURE = textwrap.dedent(
    """
    import json, re, sys
    from restore_core import codec
    from restore_core.errors import ImageDecodeError

    def status(key):
        return int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))

    files = json.loads(sys.stdin.read())
    cap = int(sys.argv[1])
    result = {}
    for name, path in files.items():
        data = open(path, "rb").read()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = status("VmRSS")
        try:
            arr, _ = codec.decode(data, max_pixels=cap)
            outcome = f"ok {arr.shape}"
            del arr
        except ImageDecodeError as exc:
            outcome = f"refused: {exc}"
        result[name] = [outcome, (status("VmHWM") - before) / 1024.0]
    print(json.dumps(result))
    """
)


def _measure(files: dict[str, Path], cap: int) -> dict[str, list]:
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(cap)],
        input=json.dumps({k: str(v) for k, v in files.items()}),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=240,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _zeros_idat(n_bytes: int) -> bytes:
    z = zlib.compressobj(9)
    chunk = bytes(1 << 20)
    parts = [z.compress(chunk) for _ in range(n_bytes >> 20)]
    return b"".join([*parts, z.compress(bytes(n_bytes & ((1 << 20) - 1))), z.flush()])


def _bombs(tmp: Path) -> dict[str, Path]:
    small = np.full((16, 16, 3), 50, np.uint8)
    jpeg = bytearray(save(Image.fromarray(small), "JPEG"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)  # SOF0: height, width
    gif = bytearray(save(Image.fromarray(small[:, :, 0]).convert("P"), "GIF"))
    gif[6:10] = struct.pack("<HH", 65535, 65535)  # logical screen
    bmp = bytearray(save(Image.fromarray(small), "BMP"))
    bmp[18:26] = struct.pack("<ii", 50000, 50000)
    tiff = bytearray(save(Image.fromarray(small[:, :, 0]), "TIFF", compression="tiff_deflate"))
    files = {
        # 100000 x 100000 declared, a few bytes of data: over Pillow's own hard limit too.
        "png_100000x100000": raw_png(100_000, 100_000, 8, 0, zlib.compress(b"\0" * 1000)),
        # A real zlib bomb: 8000 x 8000 gray of zeros, 64 MB of pixels in about 65 KB.
        "png_zlib_bomb_8000x8000": raw_png(8000, 8000, 8, 0, _zeros_idat(8000 * 8001)),
        "png_16bit_rgba_30000x30000": raw_png(30_000, 30_000, 16, 6, zlib.compress(b"\0" * 1000)),
        "jpeg_sof_60000x60000": bytes(jpeg),
        "gif_screen_65535x65535": bytes(gif),
        "bmp_50000x50000": bytes(bmp),
    }
    # TIFF: rewrite ImageWidth/ImageLength (tags 256/257, SHORT or LONG) in the first IFD.
    ifd = struct.unpack("<I", tiff[4:8])[0]
    for i in range(struct.unpack("<H", tiff[ifd : ifd + 2])[0]):
        e = ifd + 2 + 12 * i
        tag = struct.unpack("<H", tiff[e : e + 2])[0]
        if tag in (256, 257):
            tiff[e + 2 : e + 12] = struct.pack("<HII", 4, 1, 70000)
    files["tiff_70000x70000"] = bytes(tiff)
    paths = {}
    for name, data in files.items():
        p = tmp / f"{name}.bin"
        p.write_bytes(data)
        paths[name] = p
    return paths


MAX_PIXELS_TEST = 1_000_000
BOMB_RSS_LIMIT_MIB = 10  # a refused file may cost parsing buffers (2-5 MiB seen), never its pixels


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_bombs_refused_by_pixel_cap_without_allocating(tmp_path: Path):
    files = _bombs(tmp_path)
    # Positive control in the same process, last: a legitimate image at the cap must show up in
    # the peak, or the measurement would prove nothing.
    legit = tmp_path / "legit.png"
    legit.write_bytes(png_bytes(np.random.default_rng(0).integers(0, 256, (1000, 1000, 4), dtype=np.uint8)))
    result = _measure({**files, "legit_1000x1000_rgba": legit}, MAX_PIXELS_TEST)
    for name in files:
        outcome, grew = result[name]
        assert outcome.startswith("refused") and "max_pixels" in outcome, (name, outcome)
        assert grew < BOMB_RSS_LIMIT_MIB, (name, grew)
    outcome, grew = result["legit_1000x1000_rgba"]
    assert outcome.startswith("ok (1000, 1000, 4)")
    assert grew > 15, grew  # 1M pixels x 4 channels x float32 = 15.3 MiB at least
    # ...and at most 8 bytes a sample: the bound docs/reliability.md gives for decode.max_pixels.
    assert grew < MAX_PIXELS_TEST * 4 * 8 / 2**20, grew


def test_pixel_cap_is_the_configured_one():
    """decode.max_pixels is honoured exactly, above Pillow's 89M-pixel warning threshold too."""
    header_only = raw_png(10_000, 10_000, 8, 0, zlib.compress(b"\0"))  # 100M pixels declared
    with pytest.raises(ImageDecodeError, match="over the cap of 99999999"):
        codec.decode(header_only, max_pixels=99_999_999)
    with pytest.raises(ImageDecodeError, match="truncated or corrupt"):  # past the cap: tries to read
        codec.decode(header_only, max_pixels=100_000_000)


def test_bomb_in_a_batch_is_one_error_row(bases: Bases, tmp_path: Path):
    cfg = from_dict(RestoreConfig, {"device": "cpu", "decode": {"max_pixels": MAX_PIXELS_TEST}})
    restorer = Restorer(bases, None, cfg)
    files = _bombs(tmp_path)
    good = png_bytes(damaged((10, 10), value=-1)[0])
    cells = [good, *[p.read_bytes() for p in files.values()], good]
    ids = [f"r{i}" for i in range(len(cells))]
    batch = {"id": np.array(ids, dtype=object), "image": np.empty(len(cells), dtype=object)}
    batch["image"][:] = cells
    out = restorer(batch)
    assert list(out["id"]) == ids
    assert list(out["status"]) == ["ok"] + ["error"] * len(files) + ["ok"]
    assert all("max_pixels" in e for e in out["error"][1:-1])
