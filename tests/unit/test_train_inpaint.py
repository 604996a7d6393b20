"""train-inpaint without Ray: config ranges, the crops it trains on, and the checkpoint place
(jobs/training.py) that train-sr shares."""

import json
from pathlib import Path

import numpy as np
import pytest

from jobs import train_inpaint, training
from jobs.config_ray import TrainCheckpointConfig
from jobs.config_train_inpaint import TrainInpaintConfig
from restore_core.config import from_dict, load_config, to_dict
from restore_core.errors import ConfigError, UserError
from restore_core.io.locations import Location
from tests.conftest import png_bytes

BASE = {"input": {"path": "data"}, "output": "out"}
REPO = Path(__file__).resolve().parents[2]


def _cfg(**sections):
    data = json.loads(json.dumps(BASE))
    for key, value in sections.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    return from_dict(TrainInpaintConfig, data)


def test_the_shipped_config_loads_and_passes_the_checks():
    cfg = load_config(TrainInpaintConfig, REPO / "configs" / "train_inpaint.yaml", ["input.path=x"])
    train_inpaint.check_config(cfg)
    spec = train_inpaint.make_spec(cfg)
    assert spec.channels == 1 and not spec.use_bases


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"train": {"batch_size": 0}}, "train.batch_size"),
        ({"train": {"lr": 0.0}}, "train.lr"),
        ({"train": {"lr": 3.0}}, "train.lr"),
        ({"train": {"patch_size": 4}}, "train.patch_size"),
        ({"train": {"patch_size": 4096}}, "train.patch_size"),
        ({"train": {"crops_per_image": 0}}, "train.crops_per_image"),
        ({"train": {"val_fraction": 1.0}}, "train.val_fraction"),
        ({"train": {"val_fraction": -0.1}}, "train.val_fraction"),
        ({"checkpoints": {"keep": 0}}, "checkpoints.keep"),
        ({"workers": {"num_workers": 0}}, "workers.num_workers"),
        ({"workers": {"cpus_per_worker": 0.0}}, "workers.cpus_per_worker"),
        ({"workers": {"use_gpu": True, "gpus_per_worker": 0.0}}, "workers.gpus_per_worker"),
        ({"net": {"depth": 3}}, "net.depth"),
        ({"net": {"channels": 3}}, "not net.channels"),
        ({"output": ""}, "output"),
        ({"input": {"path": ""}}, "input.path"),
    ],
)
def test_out_of_range_settings_are_one_line_naming_the_key(section, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")) as err:
        train_inpaint.check_config(_cfg(**section))
    assert "\n" not in str(err.value)


def test_spec_values_and_bases_are_checked():
    with pytest.raises(UserError, match="net: refiner width"):
        train_inpaint.make_spec(_cfg(net={"width": 1}))
    with pytest.raises(UserError, match="use_bases is true but bases is empty"):
        train_inpaint.make_spec(_cfg(net={"use_bases": True}))
    assert train_inpaint.make_spec(_cfg(bases="b")).use_bases  # bases given: the refiner takes them
    assert not train_inpaint.make_spec(_cfg(bases="b", net={"use_bases": False})).use_bases
    assert train_inpaint.make_spec(_cfg(channels="rgb")).channels == 3
    with pytest.raises(ConfigError, match="channels"):
        _cfg(channels="auto")


def test_random_crops_pad_small_images_as_unobserved():
    planes = np.full((1, 5, 6), 0.5, np.float32)
    observed = np.ones((5, 6), bool)
    x, o = train_inpaint.random_crops(planes, observed, 8, 3, np.random.default_rng(0))
    assert x.shape == (3, 1, 8, 8) and o.shape == (3, 1, 8, 8) and o.dtype == np.uint8
    assert o[:, 0, :5, :6].all() and not o[:, 0, 5:, :].any() and not o[:, 0, :, 6:].any()
    assert np.all(x[:, 0, :5, :6] == 0.5)


def test_to_samples_splits_colour_for_a_gray_refiner():
    rgb = np.random.default_rng(0).random((4, 4, 3)).astype(np.float32)
    gray_samples = train_inpaint.to_samples(rgb, 1)
    assert len(gray_samples) == 3 and all(s.shape == (1, 4, 4) for s in gray_samples)
    np.testing.assert_array_equal(gray_samples[2][0], rgb[..., 2])
    (as_rgb,) = train_inpaint.to_samples(rgb[..., 0], 3)
    assert as_rgb.shape == (3, 4, 4) and np.all(as_rgb[0] == as_rgb[2])


def _batch(with_mask: bool):
    rng = np.random.default_rng(3)
    img = rng.integers(1, 256, (12, 12), dtype=np.uint8)
    img[2, 3] = 0  # a zero pixel: dead by detection, content when a mask is given
    mask = np.zeros((12, 12), np.uint8)
    mask[5, 5] = 255
    batch = {
        "id": np.array(["a", "bad"], dtype=object),
        "image": np.array([png_bytes(img), b"not an image"], dtype=object),
    }
    if with_mask:
        batch["mask"] = np.array([png_bytes(mask), None], dtype=object)
    return batch


@pytest.mark.parametrize("with_mask", [False, True])
def test_make_crops_observed_from_mask_column_else_detection(with_mask):
    cfg = _cfg(train={"patch_size": 12, "crops_per_image": 1, "val_fraction": 0.0})
    out = train_inpaint.make_crops(_batch(with_mask), cfg, 1, val=False)
    assert out["image"].shape == (1, 1, 12, 12)  # the undecodable row gives no crop, no failure
    observed = out["observed"][0, 0].astype(bool)
    assert observed[2, 3] == with_mask and observed[5, 5] != with_mask
    again = train_inpaint.make_crops(_batch(with_mask), cfg, 1, val=False)
    np.testing.assert_array_equal(again["image"], out["image"])  # seeded by the id
    none = train_inpaint.make_crops(_batch(with_mask), cfg, 1, val=True)
    assert none["image"].shape == (0, 1, 12, 12)


def test_run_identity_leaves_out_epochs_workers_and_storage():
    a = training.run_identity(to_dict(_cfg(train={"epochs": 3}, workers={"num_workers": 1})))
    b = training.run_identity(to_dict(_cfg(train={"epochs": 9}, checkpoints={"path": "s3://x"})))
    assert a == b
    assert a != training.run_identity(to_dict(_cfg(train={"lr": 0.01})))


def test_checkpoint_place_refuses_other_settings_and_can_start_afresh(tmp_path):
    ckpt = TrainCheckpointConfig()
    out = str(tmp_path / "model")
    place = training.checkpoint_place("job", ckpt, Location(out), {"lr": 1})
    assert place.url == f"{out}/checkpoints/job" and not place.resuming
    (tmp_path / "model" / "checkpoints" / "job" / "checkpoint_0").mkdir()
    assert training.checkpoint_place("job", ckpt, Location(out), {"lr": 1}).resuming
    with pytest.raises(UserError, match=r"other settings; set checkpoints\.resume=false"):
        training.checkpoint_place("job", ckpt, Location(out), {"lr": 2})
    fresh = training.checkpoint_place("job", TrainCheckpointConfig(resume=False), Location(out), {"lr": 2})
    assert not fresh.resuming and not (tmp_path / "model" / "checkpoints" / "job" / "checkpoint_0").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"cannot use .* for checkpoints"):
        training.checkpoint_place("job", TrainCheckpointConfig(path=str(tmp_path / "file" / "sub")), Location(out), {})


def test_restore_refuses_a_refiner_with_other_bases_than_it_was_trained_with():
    from jobs.config_restore import RestoreJobConfig
    from jobs.restore_plan import check_refiner_bases
    from restore_core.bases import Bases, BasesMeta
    from restore_core.io.refiners import RefinerArtifact

    meta = BasesMeta(mode="patch", k=2, n_pixels=4, channels=1, patch_size=2)
    bases = Bases(np.ones((2, 4), np.float32), meta)
    cfg = RestoreJobConfig(refiner="r", bases="b")
    with_bases = RefinerArtifact({}, {"bases_fingerprint": bases.fingerprint()})
    check_refiner_bases(cfg, with_bases, bases)  # the same bases: fine
    check_refiner_bases(cfg, RefinerArtifact({}, {}), None)  # a refiner without bases needs none
    other = Bases(np.full((2, 4), 2.0, np.float32), meta)
    with pytest.raises(UserError, match="trained with other bases"):
        check_refiner_bases(cfg, with_bases, other)
    with pytest.raises(UserError, match="takes NMF bases as an input"):
        check_refiner_bases(cfg, with_bases, None)
