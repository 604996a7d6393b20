import numpy as np
import pytest

from restore_core import codec, masks, synth
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
