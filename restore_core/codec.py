"""Encoded image bytes <-> float32 arrays in [0, 1].

Layout: (H, W) for one channel, (H, W, C) for C in {2, 3, 4}; dtype float32; range [0, 1].
Channels are kept: L stays gray, LA/RGB/RGBA keep their channels, palette images become RGB
(RGBA when the palette has transparency), CMYK becomes RGB, 16-bit and 32-bit integer images
are scaled by their full range, float images must already lie in [0, 1] and hold no NaN/Inf.
EXIF orientation is not applied: pixels are restored as stored, so outputs align with inputs.
Animated or multi-page files (GIF, APNG, WebP, multi-page TIFF, MPO) give their first frame only.

Hostile bytes: only the formats in :data:`DECODE_FORMATS` are tried (Pillow's other plugins,
EPS through Ghostscript among them, are never reached), and the pixel cap is checked on the
declared size from the header, before any pixel buffer is allocated.
"""

from __future__ import annotations

import dataclasses
import io
import warnings
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from restore_core.errors import ImageDecodeError

DEFAULT_MAX_PIXELS = 64_000_000

#: Output formats (``output.image_format``; ``keep`` writes the input's format when it is one of
#: these, else PNG) and the Pillow format each is written with.
OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "tiff": "TIFF"}
#: JPEG quality when neither the config nor the input says one (a non-JPEG input written as JPEG).
DEFAULT_JPEG_QUALITY = 90
#: Sum of the JPEG standard's luminance quantization table (ITU T.81 Annex K.1): what libjpeg
#: scales by quality, so a file's table sum gives its quality setting back.
_STD_LUMA_TABLE_SUM = 3688
#: Metadata blocks larger than this are not carried over (a hostile file must not bloat output).
MAX_METADATA_BYTES = 1 << 20

#: Pillow plugins allowed to parse input bytes: the raster formats datasets use (JPEG covers
#: Pillow's MPO, the multi-frame JPEGs of phone cameras). Anything else is refused.
DECODE_FORMATS = ("PNG", "JPEG", "TIFF", "GIF", "BMP", "DIB", "WEBP", "PPM")


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """What was decoded: source format and mode, and the bit depth to write back."""

    format: str
    mode: str
    width: int
    height: int
    channels: int
    bit_depth: int  # 8 or 16 (PNG output depth)
    quality: int = 0  # JPEG: the encoder's quality setting, estimated from the tables; else 0
    exif: bytes | None = None  # raw EXIF block, written back as it was (orientation included)
    icc_profile: bytes | None = None  # ICC colour profile, written back as it was


def decode(
    data: bytes | bytearray | memoryview | None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, ImageInfo]:
    """Decode image bytes to a float32 array in [0, 1].

    Parameters
    ----------
    data : bytes
        Any Pillow-readable encoded image (PNG, JPEG, TIFF, GIF, BMP, WebP...).
    max_pixels : int
        Images with more pixels than this are refused before their pixels are read.

    Returns
    -------
    array : np.ndarray
        float32, (H, W) or (H, W, C), values in [0, 1].
    info : ImageInfo

    Raises
    ------
    ImageDecodeError
        Empty, truncated, undecodable, too large, or non-finite images.
    """
    if data is None:
        raise ImageDecodeError("image is missing (null)")
    raw = bytes(data)
    if len(raw) == 0:
        raise ImageDecodeError("image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Our own cap below decides on sizes; Pillow's warning threshold (89M pixels) must
            # not refuse images a user allowed. Its hard limit (2x that) still raises.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # Pillow warns about damaged metadata (corrupt EXIF, odd TIFF tags) and then goes on;
            # the row's outcome says what matters, and a hostile dataset must not flood the logs.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
            img = Image.open(io.BytesIO(raw), formats=DECODE_FORMATS)
            width, height = img.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"image is {width}x{height} = {width * height} pixels, over the cap of "
                    f"{max_pixels} (decode.max_pixels)"
                )
            if width == 0 or height == 0:
                raise ImageDecodeError(f"image has zero size ({width}x{height})")
            fmt = img.format or "unknown"
            # Animated / multi-page files: open() leaves us on frame 0 and load() reads only it;
            # asking for n_frames would walk every frame of a hostile file.
            img.load()
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(
            f"image declares more pixels than the cap of {max_pixels} (decode.max_pixels): {exc}"
        ) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"not a readable image ({len(raw)} bytes; formats tried: {', '.join(DECODE_FORMATS)})"
        ) from None
    except Exception as exc:
        # Pillow's plugins raise many types on hostile bytes (OSError, SyntaxError, struct.error,
        # ValueError, EOFError, IndexError, ...); callers get one type whatever the cause.
        raise ImageDecodeError(f"cannot decode {len(raw)}-byte image (truncated or corrupt?): {exc}") from None
    try:
        return _to_array(img, fmt)
    except ImageDecodeError:
        raise
    except Exception as exc:
        raise ImageDecodeError(f"cannot convert {fmt} image of mode {img.mode!r}: {exc}") from None


def estimate_jpeg_quality(img: Image.Image) -> int:
    """The quality (1-100) a JPEG was saved with, from its luminance quantization table, as
    libjpeg's scaling maps it (exact for files written by libjpeg/Pillow); 0 when not a JPEG."""
    tables = getattr(img, "quantization", None) or {}
    luma = tables.get(0)
    if not luma or len(luma) != 64:
        return 0
    scale = 100.0 * float(sum(luma)) / _STD_LUMA_TABLE_SUM  # libjpeg's percentage scaling
    quality = (200.0 - scale) / 2.0 if scale <= 100.0 else 5000.0 / scale
    return int(min(100, max(1, round(quality))))


def _metadata(img: Image.Image, fmt: str) -> dict[str, object]:
    """What is carried over to the output file: quality estimate, EXIF, ICC profile."""

    def block(key: str) -> bytes | None:
        value = img.info.get(key)
        return bytes(value) if isinstance(value, bytes | bytearray) and 0 < len(value) <= MAX_METADATA_BYTES else None

    return {
        "quality": estimate_jpeg_quality(img) if fmt == "JPEG" else 0,
        "exif": block("exif"),
        "icc_profile": block("icc_profile"),
    }


def _to_array(img: Image.Image, fmt: str) -> tuple[np.ndarray, ImageInfo]:
    mode = img.mode
    meta = _metadata(img, fmt)
    bit_depth = 8
    if mode == "P":
        has_alpha = "transparency" in img.info or (img.palette is not None and img.palette.mode == "RGBA")
        img = img.convert("RGBA" if has_alpha else "RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    elif mode == "1":
        img = img.convert("L")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    elif mode == "La":
        img = img.convert("LA")
    elif mode == "RGBa":
        img = img.convert("RGBA")
    elif mode == "RGBX":
        img = img.convert("RGB")

    # Scaling is done in place: peak memory is the Pillow buffer + one float32 array, not two.
    m = img.mode
    if m in ("L", "LA", "RGB", "RGBA"):
        arr = np.asarray(img, dtype=np.uint8).astype(np.float32)
        arr /= 255.0
    elif m.startswith("I;16"):
        arr = np.asarray(img).astype(np.float32)
        arr /= 65535.0
        bit_depth = 16
    elif m == "I":
        raw = np.asarray(img)
        bit_depth = 16
        if raw.min() >= 0 and raw.max() <= 65535:
            arr = raw.astype(np.float32)
            arr /= 65535.0
        else:
            arr = (raw.astype(np.float64) / float(np.iinfo(np.int32).max)).clip(0, 1).astype(np.float32)
    elif m == "F":
        arr = np.asarray(img, dtype=np.float32)
        bit_depth = 16
        if not np.isfinite(arr).all():
            raise ImageDecodeError("float image holds NaN or Inf values")
        if arr.min() < 0 or arr.max() > 1:
            raise ImageDecodeError(f"float image values span [{arr.min():.3g}, {arr.max():.3g}], expected [0, 1]")
    else:
        try:
            arr = np.asarray(img.convert("RGB"), dtype=np.uint8).astype(np.float32)
            arr /= 255.0
        except (OSError, ValueError) as exc:
            raise ImageDecodeError(f"unsupported image mode {mode!r}: {exc}") from None
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    channels = 1 if arr.ndim == 2 else int(arr.shape[2])
    info = ImageInfo(
        format=fmt,
        mode=mode,
        width=int(arr.shape[1]),
        height=int(arr.shape[0]),
        channels=channels,
        bit_depth=bit_depth,
        **meta,  # type: ignore[arg-type]
    )
    return arr, info


def encode_png(arr: np.ndarray, bit_depth: int = 8) -> bytes:
    """Encode a float array in [0, 1] to PNG bytes.

    Parameters
    ----------
    arr : np.ndarray
        (H, W) or (H, W, C) with C in {1, 2, 3, 4}; values are clipped to [0, 1].
    bit_depth : int
        8, or 16 for one-channel images (PNG's 16-bit gray). Multi-channel 16-bit is written
        as 8-bit because Pillow cannot write 16-bit RGB PNG.
    """
    buf = io.BytesIO()
    to_pil(arr, bit_depth).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def to_pil(arr: np.ndarray, bit_depth: int = 8) -> Image.Image:
    """A Pillow image of a float array in [0, 1] (clipped; NaN as 0).

    (H, W) gives mode L (I;16 with ``bit_depth`` 16), (H, W, 2|3|4) gives LA, RGB or RGBA.
    """
    a = np.asarray(arr, dtype=np.float32)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (2, 3, 4)):
        raise ValueError(f"cannot encode array of shape {a.shape}")
    a = np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=0.0).clip(0.0, 1.0)
    if a.ndim == 2 and bit_depth == 16:
        return Image.fromarray(np.rint(a * 65535.0).astype(np.uint16))
    return Image.fromarray(np.rint(a * 255.0).astype(np.uint8))


def from_pil(img: Image.Image) -> tuple[np.ndarray, ImageInfo]:
    """A Pillow image as :func:`decode` would give it: float32 in [0, 1], channels kept."""
    try:
        return _to_array(img, img.format or "unknown")
    except ImageDecodeError:
        raise
    except Exception as exc:
        raise ImageDecodeError(f"cannot convert image of mode {img.mode!r}: {exc}") from None


def output_format(info: ImageInfo, image_format: str = "png") -> str:
    """The Pillow format an image decoded as ``info`` is written in: ``image_format`` (png, jpeg,
    webp, tiff), or with ``keep`` the input's own when it is one of those (else PNG)."""
    if image_format == "keep":
        return info.format if info.format in OUTPUT_FORMATS.values() else "PNG"
    if image_format not in OUTPUT_FORMATS:
        raise ValueError(f"image format {image_format!r}: choose keep, {', '.join(OUTPUT_FORMATS)}")
    return OUTPUT_FORMATS[image_format]


def encode_like(arr: np.ndarray, info: ImageInfo, image_format: str = "png", quality: int = 0) -> bytes:
    """Encode ``arr`` (float in [0, 1]) like the decoded source ``info``.

    Parameters
    ----------
    arr : np.ndarray
        (H, W) or (H, W, C), as :func:`to_pil` takes it.
    info : ImageInfo
        The source's: bit depth (16-bit gray stays 16-bit in PNG/TIFF), format (for ``keep``),
        JPEG quality estimate, and the EXIF block and ICC profile, written back unchanged.
    image_format : {"keep", "png", "jpeg", "webp", "tiff"}
        See :func:`output_format`.
    quality : int
        JPEG/WebP quality 1-100. 0: JPEG uses the source's estimated quality (else
        :data:`DEFAULT_JPEG_QUALITY`), WebP is written lossless. JPEG drops an alpha channel.
    """
    fmt = output_format(info, image_format)
    img = to_pil(arr, info.bit_depth if fmt in ("PNG", "TIFF") else 8)
    params: dict[str, object] = {}
    if info.icc_profile:
        params["icc_profile"] = info.icc_profile
    if info.exif:
        params["exif"] = info.exif
    if fmt == "PNG":
        params["compress_level"] = 1
    elif fmt == "JPEG":
        if img.mode in ("LA", "RGBA"):
            img = img.convert(img.mode[:-1])
        params["quality"] = quality or info.quality or DEFAULT_JPEG_QUALITY
    elif fmt == "WEBP":
        params.update({"quality": quality} if quality else {"lossless": True})
    elif fmt == "TIFF":
        params["compression"] = "tiff_deflate"
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt, **params)
    except (OSError, ValueError, SyntaxError):
        # A damaged EXIF block or profile from the input must not cost the restored pixels.
        buf = io.BytesIO()
        img.save(buf, format=fmt, **{k: v for k, v in params.items() if k not in ("exif", "icc_profile")})
    return buf.getvalue()


def cell_bytes(value: Any) -> bytes | None:
    """Image bytes from a cell: raw bytes, or a Hugging Face ``{"bytes", "path"}`` struct.

    A struct whose bytes are null was not filled by the reader
    (:func:`restore_core.io.datasets.embed_path_cells`): its file is missing or outside the
    dataset, which is this row's error.
    """
    if value is None:
        return None
    if isinstance(value, dict):
        path = value.get("path")
        value = value.get("bytes")
        if value is None:
            if path:
                raise ImageDecodeError(
                    f"image cell has no bytes and its file {str(path)[:200]!r} could not be read "
                    "(paths are read relative to input.path and must stay inside it)"
                )
            return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, np.ndarray) and value.dtype == np.uint8:
        return value.tobytes()
    raise ImageDecodeError(f"image cell holds {type(value).__name__}, expected encoded bytes")
