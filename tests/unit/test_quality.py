"""The quality step (restore_core/quality.py): rows in, metric rows out; duplicates; only-flagged restore."""

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import ndimage

from imrestore_data import synth
from jobs.config_quality import QualityJobConfig
from restore_core import codec, masks, quality
from restore_core.config import QualityConfig, RestoreConfig, from_dict
from restore_core.errors import ConfigError, UserError
from restore_core.io import runs
from restore_core.io.locations import Location
from restore_core.pipeline import OUTPUT_COLUMNS, Restorer
from tests.conftest import png_bytes


def enc(img: np.ndarray) -> bytes:
    return png_bytes(np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    return synth.photo_crops(4, 48, names=("grass", "gravel", "coins"), seed=0)


def test_scorer_rows_in_rows_out(photos, rng):
    dead, _ = masks.apply_dead_pixels(photos[1], 0.05, rng)
    blurred = ndimage.gaussian_filter(photos[2], 3.0)
    batch = {
        "id": np.array(["a", "b", "c", "d", "e"], dtype=object),
        "image": np.array([enc(photos[0]), enc(dead), enc(blurred), b"junk", enc(photos[0])], dtype=object),
        "label": np.array([1, 2, 3, 4, 5]),
    }
    cfg = from_dict(QualityConfig, {"flags": {"blurry": {"value": 1.0}, "grayscale": {"enabled": False}}})
    out = quality.QualityScorer(cfg)(batch)
    assert list(out["id"]) == ["a", "b", "c", "d", "e"]
    assert list(out["status"]) == ["ok", "ok", "ok", "error", "ok"]
    assert "image" not in out and list(out["label"]) == [1, 2, 3, 4, 5]
    assert out["dead_fraction"][1] == pytest.approx(0.05, abs=0.02)
    assert list(out["flags"]) == ["", "dead_pixels", "blurry", "decode_error", ""]
    assert out["decode_error"].tolist() == [0, 0, 0, 1, 0]
    assert np.isnan(out["sharpness"][3]) and out["width"][0] == 48
    assert out["sha256"][0] == out["sha256"][4] and out["sha256"][0] != out["sha256"][1]
    thumb, _ = codec.decode(out["thumbnail"][1])
    assert max(thumb.shape[:2]) <= 96 and out["thumbnail"][0] is None
    assert np.isnan(out["psnr"]).all()
    pa.table({k: pa.array(list(v)) for k, v in out.items()})  # Arrow-writable as it is


def test_reference_gives_psnr(photos):
    batch = {
        "id": np.array(["a"], dtype=object),
        "image": np.array([enc(np.clip(photos[0] + 0.02, 0, 1))], dtype=object),
        "reference": np.array([enc(photos[0])], dtype=object),
    }
    out = quality.QualityScorer(QualityConfig())(batch)
    assert 25 < out["psnr"][0] < 40 and 0 < out["ssim"][0] <= 1


def test_unknown_flag_metric_names_the_key():
    cfg = from_dict(QualityConfig, {"flags": {"tiny": {"metric": "widht", "op": "<", "value": 64}}})
    with pytest.raises(ConfigError, match=r"flags\.tiny\.metric"):
        quality.QualityScorer(cfg)
    with pytest.raises(ConfigError, match="fail_on"):
        from_dict(QualityJobConfig, {"fail_on": ["blury"]})


def test_near_duplicate_groups():
    base = 0x0F0F_F0F0_1234_ABCD
    hashes = [base, base ^ 0b111, base ^ (1 << 63), 0xFFFF_0000_FFFF_0000, base, 0, 0, 0x1]
    labels = quality.near_duplicate_groups(hashes, 4)
    assert labels[0] == labels[1] == labels[2] == labels[4] == 0
    assert labels[3] == 3
    assert labels[5] == labels[6] == labels[7] == 5
    # brute force agrees on random hashes
    rng = np.random.default_rng(0)
    h = rng.integers(0, 2**63, 300, dtype=np.int64).astype(np.uint64)
    h[100:110] = h[0] ^ np.uint64(3)
    lab = quality.near_duplicate_groups(h, 3)
    for i in range(0, 300, 7):
        for j in range(300):
            if int(h[i] ^ h[j]).bit_count() <= 3:
                assert lab[i] == lab[j]


def test_duplicate_columns():
    sha = ["x", "x", "y", "z", None]
    dh = [f"{5:016x}", f"{5:016x}", f"{7:016x}", f"{0xFFFF_FFFF_0000_0000:016x}", None]
    cols = quality.duplicate_columns(sha, dh, 4)
    assert cols["exact_duplicates"].tolist() == [1, 1, 0, 0, 0]
    assert cols["near_duplicates"].tolist() == [1, 1, 2, 0, 0]  # 5 and 7 differ in one bit
    assert cols["duplicate_group"].tolist() == [0, 0, 0, -1, -1]


def test_restore_only_flagged(tmp_path, photos, rng):
    damaged = [masks.apply_dead_pixels(p, 0.2, rng)[0] for p in photos[:3]]
    raw = [enc(d) for d in damaged]
    batch = {
        "id": np.array(["a", "b", "c"], dtype=object),
        "image": np.array(raw, dtype=object),
        "label": np.array([7, 8, 9]),
    }
    cfg = from_dict(RestoreConfig, {"fit": {"method": "median"}})
    full = Restorer(None, None, cfg)(batch)
    out = Restorer(None, None, cfg, flagged_ids={"b"})(batch)
    assert list(out) == list(full)  # same columns, same order
    assert list(out["status"]) == ["ok", "ok", "ok"]
    assert list(out["method"]) == ["skipped", "median", "skipped"]
    assert out["image"][0] == raw[0] and out["image"][2] == raw[2]  # untouched bytes
    assert out["image"][1] == full["image"][1]
    assert out["dead_fraction_in"][1] > 0.1 and np.isnan(out["dead_fraction_in"][0])
    assert out["width"].dtype == full["width"].dtype and list(out["label"]) == [7, 8, 9]
    none = Restorer(None, None, cfg, flagged_ids=set())(batch)
    assert list(none["method"]) == ["skipped"] * 3 and set(none) >= set(OUTPUT_COLUMNS)
    assert none["width"].dtype == np.int64 and none["psnr_out"].dtype == np.float64


def test_read_flagged_ids(tmp_path):
    run = tmp_path / "run=2024-01-02"
    run.mkdir()
    pq.write_table(
        pa.table({"id": ["a", "b", "c"], "flags": ["dead_pixels,blurry", "", "blurry"]}), run / "flags.parquet"
    )
    assert runs.read_flagged_ids(Location(str(run))) == {"a"}
    assert runs.read_flagged_ids(Location(str(run)), ["blurry"]) == {"a", "c"}
    with pytest.raises(UserError, match="only_flagged"):
        runs.read_flagged_ids(Location(str(tmp_path)))


def test_shape_columns_are_relative_to_the_run():
    w = np.array([128] * 20 + [32, 128, 256, 128], dtype=float)
    h = np.array([128] * 20 + [32, 48, 256, np.nan], dtype=float)
    cols = quality.shape_columns(w, h, floor=0.08)
    size, aspect = cols["size_deviation"], cols["aspect_deviation"]
    assert (size[:20] == 0).all() and (aspect[:20] == 0).all()
    assert size[20] > 3 and size[22] > 3 and aspect[20] == 0 and aspect[22] == 0  # odd size, square
    assert aspect[21] > 3 and size[21] == 0  # a 128x48 strip: odd shape, not odd size
    assert np.isnan(size[23]) and np.isnan(aspect[23])
    # a run of mixed sizes spreads the scale: the same 32x32 is no longer far out
    mixed = quality.shape_columns(np.geomspace(32, 512, 40), np.geomspace(32, 512, 40), floor=0.08)
    assert mixed["size_deviation"].max() < 3


def test_plain_images_are_not_near_duplicates_of_one_another():
    flat = f"{0:016x}"
    sky = f"{0xFFFF_FFFF_FFFF_FFFF:016x}"
    photo = f"{0x0F0F_F0F0_1234_ABCD:016x}"
    sha = ["a", "b", "c", "d", "d", "e", "f"]
    dh = [flat, flat, sky, photo, photo, f"{0x0F0F_F0F0_1234_ABCF:016x}", sky]
    cols = quality.duplicate_columns(sha, dh, 4, min_bits=8)
    assert cols["near_duplicates"].tolist() == [0, 0, 0, 1, 1, 2, 0]
    assert cols["exact_duplicates"].tolist() == [0, 0, 0, 1, 1, 0, 0]


def test_flag_rule_also_and_unless():
    cfg = QualityConfig()
    nan = float("nan")
    cols = {
        "blur_width": np.array([0.5, 1.5, 0.5, nan, 1.5]),
        "detail_ratio": np.array([1.0, nan, 0.5, nan, nan]),
        "relative_contrast": np.array([0.5, 0.5, 0.5, 0.5, 0.01]),
        "luma_p99": np.array([0.9, 0.9, 0.9, 0.1, 0.1]),
    }
    raised = quality.evaluate_flags(cols, cfg.flags)
    assert raised["blurry"].tolist() == [False, True, True, False, False]  # either condition; not on a blank frame
    assert raised["dark"].tolist() == [False, False, False, True, False]  # a blank dark frame is low_information
    assert raised["low_information"].tolist() == [False, False, False, False, True]
    assert cfg.flags["blurry"].describe() == (
        "blur_width > 1 and blur_deviation > 2 or blur_width > 1 and noise_level < 0.22 or detail_ratio < 0.95"
    )
    with pytest.raises(ConfigError, match=r"flags\.dark\.unless"):
        from_dict(QualityConfig, {"flags": {"dark": {"unless": ["nope"]}}})
    with pytest.raises(ConfigError, match=r"flags\.blurry\.also\.metric"):
        quality.QualityScorer(from_dict(QualityConfig, {"flags": {"blurry": {"also": {"metric": "sharp"}}}}))


def test_flag_rule_require_is_an_and_applied_once_its_column_is_there():
    """blurry needs wide edges and either far wider than the run's (blur_deviation, a run-wide
    column) or no pixel noise left (noise_level); without the run-wide column (one batch) the
    required condition is left out, so a batch's flags are a superset of the run's."""
    cfg = QualityConfig()
    cols = {
        "blur_width": np.array([1.5, 1.5, 1.5, 0.5, 1.5]),
        "noise_level": np.array([0.8, 0.1, 0.8, 0.1, float("nan")]),
        "relative_contrast": np.full(5, 0.5),
    }
    assert quality.evaluate_flags(cols, cfg.flags)["blurry"].tolist() == [True, True, True, False, True]
    cols["blur_deviation"] = np.array([0.5, 0.5, 3.0, 3.0, 0.5])
    # soft by nature (noisy, typical width) | noiseless | far wider than the run | sharp | NaN noise
    assert quality.evaluate_flags(cols, cfg.flags)["blurry"].tolist() == [False, True, True, False, False]
    mine = from_dict(QualityConfig, {"flags": {"blurry": {"require": {"value": 4.0}}}})  # merged key by key
    assert mine.flags["blurry"].require is not None and mine.flags["blurry"].require.metric == "blur_deviation"
    assert quality.evaluate_flags(cols, mine.flags)["blurry"].tolist() == [False, True, False, False, False]
    with pytest.raises(ConfigError, match=r"flags\.blurry\.also\.require\.metric"):
        quality.QualityScorer(from_dict(QualityConfig, {"flags": {"blurry": {"also": {"require": {"metric": "x"}}}}}))


def test_blur_columns_are_relative_to_the_run():
    sharp_run = np.array([0.45, 0.5, 0.55, 0.5, 0.6, 0.4, 0.5, 1.5, float("nan")])
    dev = quality.blur_columns(sharp_run, floor=0.15)["blur_deviation"]
    assert dev[7] > 5 and np.all(np.abs(dev[:7]) < 2) and np.isnan(dev[8])
    assert dev[5] < 0  # sharper than typical: negative
    soft_run = np.array([1.2, 1.4, 1.3, 1.25, 1.35, 1.5, 1.1])  # a soft photo set: nothing stands out
    assert np.all(quality.blur_columns(soft_run, floor=0.15)["blur_deviation"] < 2)
    assert np.isnan(quality.blur_columns(np.full(3, np.nan), floor=0.15)["blur_deviation"]).all()


def test_old_flag_names_are_aliases():
    cfg = from_dict(QualityJobConfig, {"flags": {"underexposed": {"value": 0.2}}, "fail_on": ["near_duplicate"]})
    assert cfg.flags["dark"].value == 0.2 and "underexposed" not in cfg.flags
    assert cfg.fail_on == ["near_duplicates"]
    with pytest.raises(ConfigError, match="old name"):
        from_dict(QualityConfig, {"flags": {"underexposed": {}, "dark": {}}})


def test_every_issue_kind_on_small_images(rng):
    """One image per kind through the scorer: each raises its own flag and no other."""
    import imrestore_report as report

    base = synth.photo_crops(12, 64, rgb=True, names=("astronaut", "coffee", "chelsea"), seed=3)
    odd = synth.photo_crops(2, 96, rgb=True, names=("coffee",), seed=4)
    gray = np.repeat(synth.photo_crops(1, 64, names=("astronaut",), seed=5)[0][..., None], 3, axis=2)
    dead, _ = masks.apply_dead_pixels(base[2], 0.01, rng)
    imgs = {
        "clean0": base[0], "clean1": base[1], "clean5": base[5], "clean6": base[6], "clean7": base[7],
        "dead": dead,
        "blurry": ndimage.gaussian_filter(base[3], (2.5, 2.5, 0)),
        "dark": base[4] * 0.15,
        "light": 1 - (1 - base[8]) * 0.2,
        "blank": np.full((64, 64, 3), [0.3, 0.5, 0.7], np.float32) + rng.normal(0, 0.003, (64, 64, 3)),
        "gray": gray,
        "small": base[9][::2, ::2],
        "strip": odd[0][:24, :],
        "copy_a": base[10], "copy_b": base[10],
    }  # fmt: skip
    ids = list(imgs)
    batch = {"id": np.array(ids, dtype=object), "image": np.array([enc(imgs[i]) for i in ids], dtype=object)}
    cfg = QualityConfig()
    table = report.with_run_flags(quality.table_from_columns(quality.QualityScorer(cfg)(batch)), cfg)
    got = dict(zip(table.column("id").to_pylist(), table.column("flags").to_pylist(), strict=True))
    want = {
        "dead": "dead_pixels", "blurry": "blurry", "dark": "dark", "light": "light", "blank": "low_information",
        "gray": "grayscale", "small": "odd_size", "strip": "odd_aspect_ratio",
        "copy_a": "exact_duplicates", "copy_b": "exact_duplicates",
    }  # fmt: skip
    assert got == {i: want.get(i, "") for i in ids}


def test_demo_blurred_images_are_flagged_blurry_and_its_clean_ones_are_not(tmp_path):
    """The demo's own data (python -m jobs demo): its 32 test images are blurred (shrunk and
    enlarged by 2, 64 px) then given 15% dead pixels; its training images are clean."""
    from jobs import demo_jobs
    from jobs.config_demo import DemoConfig

    demo_jobs.make_data(DemoConfig(), str(tmp_path))
    scorer = quality.QualityScorer(QualityConfig())
    flagged = {}
    for part in ("train", "test"):
        t = pq.read_table(tmp_path / part).to_pydict()
        batch = {k: np.array(t[k], dtype=object) for k in ("id", "image", "reference") if k in t}
        flagged[part] = ["blurry" in f.split(",") for f in scorer(batch)["flags"]]
    assert len(flagged["test"]) == 32 and all(flagged["test"])
    assert len(flagged["train"]) == 192 and not any(flagged["train"])


def test_null_id_is_an_error_row_not_the_id_none(photos):
    """Issue 16: a null id never comes out as the string "None"."""
    batch = {"id": np.array(["a", None], dtype=object), "image": np.array([enc(photos[0])] * 2, dtype=object)}
    out = quality.QualityScorer(QualityConfig())(batch)
    assert list(out["id"]) == ["a", None]
    assert list(out["status"]) == ["ok", "error"] and "no id" in out["error"][1]
    assert "None" not in quality.table_from_columns(out).column("id").to_pylist()


def test_unreadable_reference_keeps_the_metrics(photos):
    """Issue 16: a bad reference leaves psnr/ssim empty and says so; the row is scored."""
    batch = {
        "id": np.array(["a", "b"], dtype=object),
        "image": np.array([enc(photos[0])] * 2, dtype=object),
        "reference": np.array([b"junk", enc(photos[1][:10])], dtype=object),
    }
    out = quality.QualityScorer(QualityConfig())(batch)
    assert list(out["status"]) == ["ok", "ok"] and out["decode_error"].tolist() == [0, 0]
    assert np.isnan(out["psnr"]).all() and np.isfinite(out["sharpness"]).all()
    assert all("reference not used" in e for e in out["error"])


def test_alpha_does_not_make_pixels_dead(photos):
    """Issue 16: a transparent pixel is not a dead pixel; an opaque black one is."""
    gray = np.maximum(np.rint(photos[0] * 255), 1).astype(np.uint8)
    rgb = np.dstack([gray, gray, gray])
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:10] = 0  # transparent band
    rgb[20, 20] = 0  # one opaque black pixel
    batch = {"id": np.array(["a"], dtype=object), "image": np.array([png_bytes(np.dstack([rgb, alpha]))], dtype=object)}
    out = quality.QualityScorer(QualityConfig())(batch)
    assert out["dead_fraction"][0] == pytest.approx(1 / (48 * 48))


def test_thumbnails_are_jpeg_gray_stays_gray_and_alpha_is_left_out() -> None:
    from PIL import Image

    from restore_core.quality import thumbnail_jpeg, thumbnail_suffix

    rng = np.random.default_rng(0)
    for shape, mode in (((200, 100), "L"), ((50, 60, 2), "L"), ((64, 64, 3), "RGB"), ((30, 300, 4), "RGB")):
        data = thumbnail_jpeg(rng.random(shape, dtype=np.float32), 96)
        with Image.open(io.BytesIO(data)) as im:
            assert (im.format, im.mode) == ("JPEG", mode)
            assert max(im.size) <= 96
        assert thumbnail_suffix(data) == ".jpg"
    png = io.BytesIO()
    Image.new("L", (4, 4)).save(png, format="PNG")
    assert thumbnail_suffix(png.getvalue()) == ".png"  # a run before JPEG thumbnails
