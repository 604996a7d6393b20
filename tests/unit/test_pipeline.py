import numpy as np
import pytest

from imrestore_data import synth
from restore_core import codec, masks
from restore_core.config import RestoreConfig, from_dict
from restore_core.pipeline import Restorer
from tests.conftest import png_bytes


def test_restorer_rows_in_rows_out(bases):
    rng = np.random.default_rng(1)
    clean = synth.shapes(2, 20, seed=1)
    damaged = [masks.apply_dead_pixels(c, 0.3, rng)[0] for c in clean]
    enc = [png_bytes(np.rint(d * 255).astype(np.uint8)) for d in damaged]
    ref = [png_bytes(np.rint(c * 255).astype(np.uint8)) for c in clean]
    batch = {
        "id": np.array(["a", "b", "c", "d"], dtype=object),
        "image": np.array([enc[0], b"garbage", enc[1], b""], dtype=object),
        "reference": np.array([ref[0], None, ref[1], None], dtype=object),
        "label": np.array([1, 2, 3, 4]),
    }
    cfg = from_dict(RestoreConfig, {"fit": {"stride": 2}})
    out = Restorer(bases, None, cfg)(batch)
    assert list(out["id"]) == ["a", "b", "c", "d"]
    assert list(out["status"]) == ["ok", "error", "ok", "error"]
    assert "ImageDecodeError" in out["error"][1] and "empty" in out["error"][3]
    assert out["image"][1] is None
    assert list(out["label"]) == [1, 2, 3, 4]  # pass-through
    img, _ = codec.decode(out["image"][0])
    assert img.shape == (20, 20)
    assert out["psnr_out"][0] > out["psnr_in"][0] + 5
    assert out["dead_fraction_in"][0] > 0.2 and out["dead_fraction_out"][0] < 0.01


def test_hf_struct_and_mask_column(bases):
    clean = synth.shapes(1, 16, seed=2)[0]
    img = png_bytes(np.rint(clean * 255).astype(np.uint8))
    mask = np.zeros((16, 16), np.uint8)
    mask[3, 3] = 255
    batch = {
        "id": np.array(["x"], dtype=object),
        "image": np.array([{"bytes": img, "path": "x.png"}], dtype=object),
        "mask": np.array([png_bytes(mask)], dtype=object),
    }
    out = Restorer(bases, None, RestoreConfig())(batch)
    assert out["status"][0] == "ok"
    assert out["dead_fraction_in"][0] == pytest.approx(1 / 256)


def test_baseline_method_needs_no_bases():
    batch = {
        "id": np.array(["x"], dtype=object),
        "image": np.array([png_bytes(np.full((8, 8, 3), 100, np.uint8))], dtype=object),
    }
    out = Restorer(None, None, from_dict(RestoreConfig, {"fit": {"method": "median"}}))(batch)
    assert out["status"][0] == "ok"
    assert codec.decode(out["image"][0])[0].shape == (8, 8, 3)


def test_no_new_dead_pixels_are_written():
    """A fill or SR that reaches 0 would write new 'dead' pixels; kept zero regions and unfilled
    dead pixels (method none) stay as they are."""
    from restore_core.pipeline import no_new_dead

    img = np.full((4, 4, 3), 0.5, np.float32)
    img[0, 0] = 0.0  # dead, filled with 0 by the method
    img[3, 3] = 0.0  # a zero region the masks kept (not dead)
    dead = np.zeros((4, 4), bool)
    dead[0, 0] = True
    restored = img.copy()
    restored[1, 1] = 0.001  # SR pushed a dark pixel below half an 8-bit step
    out = no_new_dead(restored, img, dead, 8)
    assert (out[0, 0] == np.float32(1 / 255)).all() and (out[1, 1] == np.float32(1 / 255)).all()
    assert (out[3, 3] == 0).all() and out[2, 2, 0] == np.float32(0.5)
    # 16-bit output: one 16-bit step is enough.
    assert no_new_dead(restored, img, dead, 16)[1, 1, 0] == np.float32(0.001)
    # Method none: the dead pixel stays dead, the SR-made zero is still lifted.
    out_none = no_new_dead(restored, img, None, 8)
    assert (out_none[0, 0] == 0).all() and (out_none[1, 1] > 0).all()
    # Enlarged by SR: left alone.
    big = np.zeros((8, 8, 3), np.float32)
    assert no_new_dead(big, img, dead, 8) is big


def test_null_id_is_an_error_row_not_the_id_none(bases):
    img = png_bytes(np.full((12, 12), 100, np.uint8))
    batch = {"id": np.array(["a", None, "None"], dtype=object), "image": np.array([img, img, img], dtype=object)}
    out = Restorer(bases, None, from_dict(RestoreConfig, {}))(batch)
    assert list(out["id"]) == ["a", None, "None"]
    assert list(out["status"]) == ["ok", "error", "ok"]
    assert "no id" in out["error"][1] and "'id'" in out["error"][1]


def _trained_looking_refiner(channels: int = 1):
    """A refiner whose weights are random (so it changes the fill): enough to test plumbing."""
    import torch

    from restore_core.refiner import RefinerSpec, build_refiner

    torch.manual_seed(0)
    model = build_refiner(RefinerSpec(channels=channels, width=8, levels=1))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return model


def test_auto_method_resolves_to_learned_with_a_refiner_else_sparse(bases):
    from restore_core.pipeline import resolve_method

    assert RestoreConfig().fit.method == "auto"
    assert resolve_method("auto", True, True) == "learned"
    assert resolve_method("auto", True, False) == "sparse"
    assert resolve_method("auto", False, False) == "sparse"
    assert resolve_method("biharmonic", True, True) == "biharmonic"
    assert Restorer(bases, None, RestoreConfig(), refiner=_trained_looking_refiner()).method == "learned"
    assert Restorer(bases, None, RestoreConfig()).method == "sparse"
    assert Restorer(None, None, RestoreConfig()).method == "sparse"


def test_learned_method_restores_rows_of_any_size_and_channels(rng):
    sizes = [(20, 20), (13, 29), (20, 20, 3), (16, 16, 4), (20, 20)]
    rows, clean = [], []
    for shape in sizes:
        c = np.clip(synth.shapes(1, max(shape[:2]), rgb=True, seed=len(rows))[0][: shape[0], : shape[1]], 0.02, 1)
        if len(shape) == 2:
            c = c[..., 0]
        elif shape[2] == 4:
            c = np.concatenate([c, np.full((*shape[:2], 1), 0.8)], axis=2)
        u8 = np.rint(c * 255).astype(np.uint8)
        dead = rng.random(shape[:2]) < 0.3
        dam = u8.copy()
        dam[dead] = 0
        rows.append(png_bytes(dam))
        clean.append(u8)
    batch = {"id": np.array([str(i) for i in range(len(rows))], dtype=object), "image": np.array(rows, dtype=object)}
    cfg = from_dict(RestoreConfig, {"fit": {"method": "learned"}, "device": "cpu"})
    out = Restorer(None, None, cfg, refiner=_trained_looking_refiner())(batch)
    assert list(out["status"]) == ["ok"] * len(rows), out["error"]
    assert set(out["method"]) == {"learned"}
    for i, shape in enumerate(sizes):
        img, _ = codec.decode(out["image"][i])
        assert img.shape == shape
        assert out["dead_fraction_out"][i] == 0.0
    # an RGB refiner refuses a gray row (error row), restores the RGB ones
    out3 = Restorer(None, None, cfg, refiner=_trained_looking_refiner(3))(batch)
    assert list(out3["status"]) == ["error", "error", "ok", "ok", "error"]
    assert "gray refiner" in out3["error"][0]


def test_learned_method_needs_a_refiner():
    from restore_core.errors import UserError

    with pytest.raises(UserError, match="refiner"):
        Restorer(None, None, from_dict(RestoreConfig, {"fit": {"method": "learned"}}))


@pytest.mark.parametrize("method", ["auto", "learned", "sparse", "nmf", "fill", "biharmonic"])
def test_with_a_mask_column_kept_pixels_are_byte_identical_and_fills_may_be_black(method, bases):
    # Zero-lift fix: black content next to the mask stays black, filled pixels may be 0, and every
    # pixel outside the mask is the input's, byte for byte.
    img = np.zeros((16, 16, 3), np.uint8)
    img[:, 12:] = (np.arange(4 * 16 * 3).reshape(16, 4, 3) % 251).astype(np.uint8)
    mask = np.zeros((16, 16), np.uint8)
    mask[2:6, 1:5] = 255  # dead pixels inside a black region: the right fill is 0
    mask[10, 13] = 255
    batch = {
        "id": np.array(["x"], dtype=object),
        "image": np.array([png_bytes(img)], dtype=object),
        "mask": np.array([png_bytes(mask)], dtype=object),
    }
    refiner = _trained_looking_refiner() if method in ("auto", "learned") else None
    cfg = from_dict(RestoreConfig, {"fit": {"method": method}, "device": "cpu"})
    out = Restorer(bases if method == "nmf" else None, None, cfg, refiner=refiner)(batch)
    assert out["status"][0] == "ok", out["error"][0]
    restored, _ = codec.decode(out["image"][0])
    u8 = np.rint(restored * 255).astype(np.uint8)
    keep = mask == 0
    assert np.array_equal(u8[keep], img[keep])
    if method in ("sparse", "nmf", "fill", "biharmonic"):
        assert (u8[2:6, 1:5] == 0).all()  # a black surround fills black, not 1/255


def test_without_a_mask_column_filled_zeros_are_still_lifted(bases):
    # Dead pixels found as zeros: a fill at 0 would be found dead again, so it is lifted.
    img = np.zeros((12, 12), np.uint8)
    img[:, 6:] = 200
    img[3, 8] = 0  # a dead pixel in the bright half
    batch = {"id": np.array(["x"], dtype=object), "image": np.array([png_bytes(img)], dtype=object)}
    cfg = from_dict(RestoreConfig, {"fit": {"method": "fill"}})
    out = Restorer(None, None, cfg)(batch)
    restored, _ = codec.decode(out["image"][0])
    assert restored[3, 8] > 0.5
    assert (restored[:, :5] > 0).all()  # the zero region was taken as dead and filled, never left at 0


# ----------------------------------------------------------------------------- issue 16


def _batch(images, **cols):
    n = len(images)
    out = {"id": np.array([f"r{i}" for i in range(n)], dtype=object), "image": np.array(images, dtype=object)}
    out.update({k: np.array(v, dtype=object) for k, v in cols.items()})
    return out


def _photo(shape, seed=0):
    """A textured image with no zero pixel (values 20..255)."""
    rng = np.random.default_rng(seed)
    return rng.integers(20, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("method", ["nmf", "biharmonic", "median"])
def test_mask_marking_every_pixel_dead_is_an_error_row_passed_through(bases, method):
    img = png_bytes(_photo((12, 12)))
    full = png_bytes(np.full((12, 12), 255, np.uint8))
    cfg = from_dict(RestoreConfig, {"fit": {"method": method}})
    out = Restorer(bases if method == "nmf" else None, None, cfg)(_batch([img, img], mask=[full, None]))
    assert list(out["status"]) == ["error", "ok"]
    assert "nothing observed" in out["error"][0] and "mask column 'mask'" in out["error"][0]
    assert out["image"][0] == img  # the input, byte for byte
    assert out["dead_fraction_in"][0] == 1.0


def test_min_observed_fraction_turns_mostly_dead_rows_into_errors(bases):
    mask = np.zeros((10, 10), np.uint8)
    mask[:9] = 255  # 90 % dead, 10 % observed
    img = png_bytes(_photo((10, 10)))
    rows = _batch([img], mask=[png_bytes(mask)])
    assert Restorer(bases, None, RestoreConfig())(rows)["status"][0] == "ok"  # default 0: only "none observed"
    cfg = from_dict(RestoreConfig, {"fit": {"min_observed_fraction": 0.25}})
    out = Restorer(bases, None, cfg)(rows)
    assert out["status"][0] == "error" and "fit.min_observed_fraction=0.25" in out["error"][0]
    assert out["image"][0] == img


@pytest.mark.parametrize("channels", [2, 4])
def test_alpha_is_kept_and_only_colour_is_restored(bases, channels):
    """LA/RGBA: transparent pixels are not dead for being transparent, opaque black ones are;
    alpha comes back as it was (issue 16)."""
    rng = np.random.default_rng(3)
    colour = _photo((16, 16, channels - 1), seed=4)
    alpha = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    alpha[:4] = 0  # a transparent band whose colour is kept as is
    dead = rng.random((16, 16)) < 0.2
    colour[dead] = 0
    rgba = np.dstack([colour, alpha])
    for method in ("nmf", "biharmonic"):
        cfg = from_dict(RestoreConfig, {"fit": {"method": method}})
        out = Restorer(bases if method == "nmf" else None, None, cfg)(_batch([png_bytes(rgba)]))
        assert out["status"][0] == "ok", out["error"][0]
        got, info = codec.decode(out["image"][0])
        assert info.channels == channels
        np.testing.assert_array_equal(np.rint(got[:, :, -1] * 255), alpha)  # alpha untouched
        assert out["dead_fraction_in"][0] == pytest.approx(dead.mean())
        assert out["dead_fraction_out"][0] == 0.0
        filled = np.rint(got[:, :, :-1] * 255)
        assert np.all(filled[dead].max(axis=-1) > 0)  # opaque black pixels were filled
        np.testing.assert_array_equal(filled[~dead], colour[~dead])  # the others kept


def test_masks_ignore_alpha():
    la = np.zeros((2, 2, 2), np.float32)
    la[0, 0] = [0.0, 1.0]  # opaque black: dead
    la[0, 1] = [0.5, 0.0]  # transparent grey: not dead
    la[1, :] = [0.3, 0.0]
    assert masks.detect(la).tolist() == [[True, False], [False, False]]
    # an RGBA mask PNG that is opaque everywhere marks only its non-black pixels
    m = np.zeros((2, 2, 4), np.float32)
    m[..., 3] = 1.0
    m[1, 1, 0] = 1.0
    assert masks.mask_from_png(m, (2, 2)).tolist() == [[False, False], [False, True]]


def test_unreadable_reference_keeps_the_restored_image(bases):
    img = _photo((12, 12))
    img[3, 3] = 0
    ref_small = png_bytes(_photo((6, 6)))
    out = Restorer(bases, None, RestoreConfig())(
        _batch([png_bytes(img)] * 3, reference=[b"not an image", ref_small, png_bytes(_photo((12, 12), 1))])
    )
    assert list(out["status"]) == ["ok", "ok", "ok"]
    for i in (0, 1):
        assert out["image"][i] is not None and codec.decode(out["image"][i])[0].shape == (12, 12)
        assert np.isnan(out["psnr_out"][i]) and np.isnan(out["psnr_in"][i])
        assert "reference not used" in out["error"][i]
    assert "ImageDecodeError" in out["error"][0] and "6x6" in out["error"][1]
    assert out["error"][2] is None and np.isfinite(out["psnr_out"][2])


def test_dead_fraction_out_follows_the_mask_when_there_is_one(bases):
    """An all-zero mask says nothing is dead: in 0 and out 0, however black the image is; an
    empty or null mask cell falls back to detection and says so in mask_source (issue 16)."""
    img = _photo((12, 12))
    img[:4, :4] = 0  # black content (16/144 = 0.11 of the image)
    zero_mask = png_bytes(np.zeros((12, 12), np.uint8))
    some = np.zeros((12, 12), np.uint8)
    some[8, 8] = some[9, 9] = 255
    enc = png_bytes(img)
    rows = _batch([enc] * 4, mask=[zero_mask, png_bytes(some), b"", None])
    out = Restorer(bases, None, RestoreConfig())(rows)
    assert list(out["status"]) == ["ok"] * 4
    assert list(out["mask_source"]) == ["column", "column", "detected", "detected"]
    assert out["dead_fraction_in"][0] == 0.0 and out["dead_fraction_out"][0] == 0.0
    assert out["dead_fraction_in"][1] == pytest.approx(2 / 144) and out["dead_fraction_out"][1] == 0.0
    assert out["dead_fraction_in"][2] == pytest.approx(16 / 144) and out["dead_fraction_out"][2] == 0.0
    # the zero mask kept the black block black: nothing was filled
    np.testing.assert_array_equal(np.rint(codec.decode(out["image"][0])[0] * 255), img)
    # method none: nothing filled, so what was dead is still dead
    none = Restorer(None, None, from_dict(RestoreConfig, {"fit": {"method": "none"}}))(rows)
    assert none["dead_fraction_out"][1] == pytest.approx(2 / 144)
    assert none["dead_fraction_out"][0] == 0.0


def test_mask_of_another_size_names_the_mask_column(bases):
    out = Restorer(bases, None, RestoreConfig())(
        _batch([png_bytes(_photo((12, 12)))], mask=[png_bytes(np.zeros((5, 7), np.uint8))])
    )
    assert out["status"][0] == "error" and "mask column 'mask'" in out["error"][0] and "7x5" in out["error"][0]


def test_palette_transparency_stays_transparent(bases):
    """A palette PNG with a transparent index decodes to RGBA: its transparent pixels stay
    transparent after the restore, whatever their colour (issue 16)."""
    import io

    from PIL import Image

    idx = np.random.default_rng(5).integers(1, 8, (12, 12), dtype=np.uint8)
    idx[:3] = 0  # index 0: transparent black
    pal = Image.fromarray(idx, mode="P")
    pal.putpalette([0, 0, 0, *np.random.default_rng(6).integers(30, 256, 21).tolist()])
    buf = io.BytesIO()
    pal.save(buf, format="PNG", transparency=0)
    before, _ = codec.decode(buf.getvalue())
    out = Restorer(bases, None, RestoreConfig())(_batch([buf.getvalue()]))
    assert out["status"][0] == "ok"
    after, info = codec.decode(out["image"][0])
    assert info.channels == 4
    np.testing.assert_array_equal(after[..., 3], before[..., 3])
    assert np.all(after[:3, :, 3] == 0)


def test_output_keeps_the_input_format_and_counts_bytes():
    import io

    from PIL import Image

    rng = np.random.default_rng(2)
    clean = synth.photo_crops(2, 48, names=("coffee", "chelsea"), seed=0)
    blobs = []
    for c in clean:
        damaged = np.rint(masks.apply_dead_pixels(c, 0.1, rng)[0] * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(damaged).save(buf, format="JPEG", quality=85)
        blobs.append(buf.getvalue())
    batch = {"id": np.array(["a", "b"], dtype=object), "image": np.array(blobs, dtype=object)}
    for fmt, expected in (("keep", "JPEG"), ("png", "PNG"), ("webp", "WEBP")):
        cfg = from_dict(RestoreConfig, {"fit": {"method": "median"}, "output": {"image_format": fmt}})
        out = Restorer(None, None, cfg)(batch)
        assert list(out["status"]) == ["ok", "ok"]
        assert list(out["bytes_in"]) == [len(b) for b in blobs]
        assert list(out["bytes_out"]) == [len(b) for b in out["image"]]
        assert {Image.open(io.BytesIO(b)).format for b in out["image"]} == {expected}
        if fmt == "keep":
            assert all(codec.estimate_jpeg_quality(Image.open(io.BytesIO(b))) == 85 for b in out["image"])
