"""Hostile input: fuzzing the decoder, the per-row pipeline, id -> path mapping and artifacts.

Properties checked on every generated example:

- ``codec.decode`` either returns a finite float32 array in [0, 1] within the pixel cap, or
  raises :class:`ImageDecodeError` — never another exception type.
- ``Restorer.__call__`` never raises on bad cells: every input id comes out exactly once, in
  order; ``ok`` rows carry a PNG of the decoded size and channels, ``error`` rows a message.
- ``safe_join`` never returns a path outside the root.

The default run uses ``FUZZ_EXAMPLES`` examples per property, derandomised (the same examples
every run); the ``slow`` variants draw ``FUZZ_EXAMPLES_SLOW`` fresh random ones.
"""

from __future__ import annotations

import io
import os
import pickle
import posixpath
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from restore_core import codec
from restore_core.bases import Bases, BasesMeta
from restore_core.config import RestoreConfig, from_dict, load_config
from restore_core.errors import ArtifactError, ConfigError, ImageDecodeError, UserError
from restore_core.io.artifacts import load_bases, save_bases
from restore_core.io.locations import Location
from restore_core.io.paths import UnsafePathError, safe_join, safe_relpath
from restore_core.pipeline import Restorer

FUZZ_EXAMPLES = 200
FUZZ_EXAMPLES_SLOW = 2000
FUZZ_MAX_PIXELS = 20_000  # small cap so that a mutated header cannot make one example slow

DEFAULT = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW = settings(DEFAULT, max_examples=FUZZ_EXAMPLES_SLOW, derandomize=False)


# ----------------------------------------------------------------------------- seed corpus


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _corpus() -> dict[str, bytes]:
    """Small valid files of every format and mode the decoder accepts (mutation seeds)."""
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    rgb[rng.random((10, 12)) < 0.2] = 0  # some dead pixels, so the fill path runs
    gray = rgb[:, :, 0]
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    frames = [Image.fromarray(np.full((8, 9), v, np.uint8)).convert("P") for v in (30, 120, 250)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return {
        "png_gray": _save(Image.fromarray(gray), "PNG"),
        "png_rgb": _save(Image.fromarray(rgb), "PNG"),
        "png_rgba": _save(Image.fromarray(np.dstack([rgb, gray])), "PNG"),
        "png_16": _save(Image.fromarray(gray.astype(np.uint16) * 257), "PNG"),
        "png_palette_trns": _save(pal, "PNG", transparency=0),
        "jpeg_rgb": _save(Image.fromarray(rgb), "JPEG", quality=80),
        "jpeg_gray": _save(Image.fromarray(gray), "JPEG"),
        "jpeg_cmyk": _save(Image.fromarray(rgb).convert("CMYK"), "JPEG"),
        "gif_animated": gif.getvalue(),
        "tiff_float": _save(Image.fromarray(gray.astype(np.float32) / 255.0, mode="F"), "TIFF"),
        "tiff_rgb": _save(Image.fromarray(rgb), "TIFF"),
        "bmp": _save(Image.fromarray(rgb), "BMP"),
        "webp": _save(Image.fromarray(rgb), "WEBP", lossless=True),
        "ppm": _save(Image.fromarray(rgb), "PPM"),
    }


CORPUS = _corpus()
MAGICS = [v[:16] for v in CORPUS.values()]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid file with a few random edits: flips, overwrites, deletions, insertions, cuts."""
    data = bytearray(draw(st.sampled_from(sorted(CORPUS.values()))))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "delete", "insert", "truncate", "dup"]))
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[pos] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "truncate":
            del data[pos:]
        else:
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 256))]
    return bytes(data)


hostile_bytes = st.one_of(
    st.binary(max_size=4096),  # random bytes
    st.builds(lambda m, tail: m + tail, st.sampled_from(MAGICS), st.binary(max_size=2048)),  # a format's magic
    mutated(),
)
hostile_cell = st.one_of(
    hostile_bytes,
    st.sampled_from(sorted(CORPUS.values())),  # some rows must be fine
    st.none(),
    st.builds(lambda b: {"bytes": b, "path": "x.png"}, hostile_bytes),  # Hugging Face struct
    st.just({"bytes": None, "path": "missing.png"}),
    st.integers(),
    st.text(max_size=20),
)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def restorer(bases: Bases) -> Restorer:
    cfg = from_dict(
        RestoreConfig,
        {"device": "cpu", "decode": {"max_pixels": FUZZ_MAX_PIXELS}, "fit": {"max_iter": 60}},
    )
    return Restorer(bases, None, cfg)


# ----------------------------------------------------------------------------- decoder


def check_decode(data: bytes) -> None:
    try:
        arr, info = codec.decode(data, max_pixels=FUZZ_MAX_PIXELS)
    except ImageDecodeError as exc:
        assert str(exc)  # a readable message, never empty
        return
    assert arr.dtype == np.float32 and arr.ndim in (2, 3)
    assert arr.shape[:2] == (info.height, info.width) and arr.size // info.channels <= FUZZ_MAX_PIXELS
    assert np.isfinite(arr).all() and arr.min() >= 0.0 and arr.max() <= 1.0
    # Whatever decoded must also encode (the pipeline writes it back).
    back, _ = codec.decode(codec.encode_like(arr, info))
    assert back.shape == arr.shape


def test_corpus_decodes():
    """The mutation seeds are valid: a fuzz run over garbage alone would prove little."""
    for name, data in CORPUS.items():
        arr, info = codec.decode(data)
        assert arr.shape[:2] == (info.height, info.width), name


@DEFAULT
@given(hostile_bytes)
def test_decode_hostile_bytes(data: bytes):
    check_decode(data)


@pytest.mark.slow
@SLOW
@given(hostile_bytes)
def test_decode_hostile_bytes_slow(data: bytes):
    check_decode(data)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_decode_every_truncation_point(name: str):
    """Every prefix of every seed file (step 7 bytes): an array or ImageDecodeError."""
    data = CORPUS[name]
    for cut in range(0, len(data), 7):
        check_decode(data[:cut])


# ----------------------------------------------------------------------------- pipeline


def check_rows(restorer: Restorer, cells: list, ids: list) -> None:
    batch = {"id": np.array(ids, dtype=object), "image": np.empty(len(cells), dtype=object)}
    batch["image"][:] = cells
    batch["keep"] = np.arange(len(cells))
    out = restorer(batch)  # must not raise, whatever the cells hold
    assert list(out["id"]) == [None if i is None else str(i) for i in ids]  # every id, once, in order (null stays null)
    assert list(out["keep"]) == list(range(len(cells)))  # pass-through columns stay aligned
    assert all(len(col) == len(cells) for col in out.values())
    for i in range(len(cells)):
        status = out["status"][i]
        assert status in ("ok", "error")
        if status == "ok":
            img, _ = codec.decode(out["image"][i])
            h, w, c = int(out["height"][i]), int(out["width"][i]), int(out["channels"][i])
            assert img.shape[:2] == (h, w) and (1 if img.ndim == 2 else img.shape[2]) == c
            assert out["error"][i] is None
        else:
            assert out["image"][i] is None
            assert isinstance(out["error"][i], str) and out["error"][i]


@DEFAULT
@given(st.lists(hostile_cell, min_size=1, max_size=6))
def test_restorer_hostile_rows(restorer: Restorer, cells: list):
    check_rows(restorer, cells, [f"row-{i}" for i in range(len(cells))])


@pytest.mark.slow
@SLOW
@given(st.lists(hostile_cell, min_size=1, max_size=6))
def test_restorer_hostile_rows_slow(restorer: Restorer, cells: list):
    check_rows(restorer, cells, [f"row-{i}" for i in range(len(cells))])


@settings(DEFAULT, max_examples=50)
@given(st.lists(st.one_of(st.text(max_size=30), st.integers(), st.none()), min_size=1, max_size=5))
def test_restorer_odd_ids_come_out_once(restorer: Restorer, ids: list):
    """Ids of any type or content (duplicates included) come out exactly as given."""
    check_rows(restorer, [CORPUS["png_gray"]] * len(ids), ids)


def test_restorer_every_seed_format_restores(restorer: Restorer):
    out = restorer(
        {
            "id": np.array(sorted(CORPUS), dtype=object),
            "image": np.array([CORPUS[k] for k in sorted(CORPUS)], dtype=object),
        }
    )
    assert list(out["status"]) == ["ok"] * len(CORPUS), list(zip(out["id"], out["error"], strict=True))


def test_restorer_missing_id_column_is_a_user_error(restorer: Restorer):
    with pytest.raises(UserError, match=r"input\.id_column"):
        restorer({"name": np.array(["a"], dtype=object), "image": np.array([CORPUS["png_gray"]], dtype=object)})


def test_restorer_missing_image_column_gives_error_rows(restorer: Restorer):
    out = restorer({"id": np.array(["a", "b"], dtype=object)})
    assert list(out["status"]) == ["error", "error"] and "no 'image' column" in out["error"][0]


# ----------------------------------------------------------------------------- ids -> paths

ROOT = "s3://bucket/out/images"


@DEFAULT
@given(
    st.one_of(
        st.text(max_size=60),
        st.lists(
            st.sampled_from(["..", ".", "", "a", "b.png", "/", "\\", "~", "s3:", "C:", "%2e%2e", "\x00"]), max_size=8
        ).map("/".join),
    )
)
def test_safe_join_never_leaves_root(row_id: str):
    try:
        path = safe_join(ROOT, row_id, ".png")
    except UnsafePathError:
        return
    assert path.startswith(ROOT + "/")
    rel = path[len(ROOT) + 1 :]
    assert ".." not in rel.split("/") and not rel.startswith("/") and "\\" not in rel
    assert posixpath.normpath(path).startswith(posixpath.normpath(ROOT) + "/")


@pytest.mark.parametrize(
    "row_id",
    [
        "../x.png",
        "a/../../x.png",
        "/etc/passwd",
        "s3://other/k.png",
        "C:\\x.png",
        "C:x.png",
        "a\\..\\..\\x",
        "a\x00b.png",
        "",
        "   ",
        ".",
        "./",
        "a/" + "x" * 300,
        "/".join(["ab"] * 400),
        "..",
        "file:///etc/passwd",
    ],
)
def test_safe_relpath_refuses_escapes(row_id: str):
    with pytest.raises(UnsafePathError):
        safe_relpath(row_id)


@pytest.mark.parametrize(
    ("row_id", "rel"),
    [
        ("a/b/c.png", "a/b/c.png"),
        ("./a//b.png", "a/b.png"),
        ("x..y.png", "x..y.png"),
        ("..a", "..a"),
        (42, "42"),
        ("ünï/cödé.png", "ünï/cödé.png"),
    ],
)
def test_safe_relpath_keeps_ordinary_ids(row_id: object, rel: str):
    assert safe_relpath(row_id) == rel
    assert safe_join("/out/", row_id) == "/out/" + rel


# ----------------------------------------------------------------------------- artifacts


def _good_bases() -> Bases:
    H = np.random.default_rng(0).random((4, 9)).astype(np.float32)
    return Bases(H, BasesMeta(mode="patch", k=4, n_pixels=9, channels=1, patch_size=3))


class _Tripwire:
    """Unpickling this creates a file: proves whether a loader ever runs pickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_bases_pickle_payload_is_never_executed(tmp_path: Path):
    save_bases(_good_bases(), Location(str(tmp_path / "b")))
    sentinel = tmp_path / "pwned"
    payload = np.empty(1, dtype=object)
    payload[0] = _Tripwire(str(sentinel))
    np.save(tmp_path / "b" / "bases.npy", payload, allow_pickle=True)
    with pytest.raises(ArtifactError, match="cannot be read"):
        load_bases(Location(str(tmp_path / "b")))
    # A raw pickle in place of the .npy too.
    (tmp_path / "b" / "bases.npy").write_bytes(pickle.dumps(_Tripwire(str(sentinel))))
    with pytest.raises(ArtifactError):
        load_bases(Location(str(tmp_path / "b")))
    assert not sentinel.exists()


def test_bases_header_claiming_huge_array_is_refused_without_allocating(tmp_path: Path):
    save_bases(_good_bases(), Location(str(tmp_path / "b")))
    npy = tmp_path / "b" / "bases.npy"
    raw = npy.read_bytes()
    # Rewrite the header's shape to a 4 TB array; the file keeps its 144 data bytes.
    header_len = int.from_bytes(raw[8:10], "little")  # format 1.0: magic (6) + version (2) + length (2)
    header = raw[10 : 10 + header_len].decode("latin1").replace("(4, 9)", "(1000000, 1000000)").rstrip()
    pad = (64 - (10 + len(header) + 1) % 64) % 64
    header = header + " " * pad + "\n"
    hacked = raw[:8] + len(header).to_bytes(2, "little") + header.encode("latin1") + raw[10 + header_len :]
    npy.write_bytes(hacked)
    with pytest.raises(ArtifactError, match="declares"):
        load_bases(Location(str(tmp_path / "b")))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"k": 0, "n_pixels": 9}, "k must be at least 1"),
        ({"patch_size": -3}, "patch_size must be at least 1|shape"),
        ({"mode": "global", "image_shape": [0, 9]}, "image_shape must be positive"),
        ({"channels": 2}, "channels must be 1 or 3"),
        ({"mode": "weird"}, "mode must be"),
        ({"image_shape": "abc"}, "malformed"),
        ({"k": "four"}, "malformed"),
    ],
)
def test_bases_hostile_meta_refused(tmp_path: Path, edit: dict, message: str):
    import json

    save_bases(_good_bases(), Location(str(tmp_path / "b")))
    meta_path = tmp_path / "b" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta.update(edit)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=message):
        load_bases(Location(str(tmp_path / "b")))


@pytest.mark.parametrize("damage", ["nan", "inf", "negative", "wrong_shape", "float64"])
def test_restorer_refuses_bad_in_memory_bases_before_any_row(damage: str):
    """Bases that reach the Restorer without load_bases (e.g. through ray.put) are checked too."""
    b = _good_bases()
    H = b.H.copy()
    meta = b.meta
    if damage == "nan":
        H[1, 2] = np.nan
    elif damage == "inf":
        H[0, 0] = np.inf
    elif damage == "negative":
        H[0, 0] = -1.0
    elif damage == "wrong_shape":
        H = H[:, :5].copy()
    else:
        H = H.astype(np.float64)
    with pytest.raises(ArtifactError, match="bases"):
        Restorer(Bases(H, meta), None, from_dict(RestoreConfig, {"fit": {"method": "nmf"}}))


def test_yaml_config_is_safe_loaded(tmp_path: Path):
    sentinel = tmp_path / "pwned"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"bases: !!python/object/apply:os.system ['touch {sentinel}']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(RestoreConfig, cfg)
    touch = "!!python/object/apply:pathlib.Path.touch"
    cfg.write_text(f"bases: {touch} [!!python/object/apply:pathlib.Path ['{sentinel}']]\n")
    with pytest.raises(ConfigError):
        load_config(RestoreConfig, cfg)
    # An override that YAML refuses stays a plain string: never a constructed object.
    tag = f"!!python/object/apply:os.system ['touch {sentinel}']"
    assert load_config(RestoreConfig, None, [f"bases={tag}"]).bases == tag
    assert not os.path.exists(sentinel)
