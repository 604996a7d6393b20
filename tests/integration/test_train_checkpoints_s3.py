"""Ray Train checkpoints on S3 (moto's server on 127.0.0.1, reached by s3fs over HTTP): train-sr
writes its checkpoints and model there, and a rerun resumes from the latest checkpoint."""

from __future__ import annotations

import json

import pytest
import s3fs

from jobs import train_sr
from jobs.config_train_sr import TrainSRConfig
from restore_core.config import from_dict
from restore_core.io.artifacts import load_sr_model
from restore_core.io.locations import Location

# slow: ~50 s idle, ~2 min on a loaded 2-CPU machine; the S3 checkpoint path of train-inpaint shares jobs/training.py
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]


def sr_cfg(opts: dict, epochs: int) -> TrainSRConfig:
    return from_dict(
        TrainSRConfig,
        {
            "input": {"path": "", "storage_options": opts},  # generated digits; options for output/checkpoints
            "output": "s3://models/sr",
            "digits": {"n_train": 64, "n_val": 16, "size": 16},
            "net": {"channels": [4]},
            "train": {"epochs": epochs, "batch_size": 32},
            "workers": {"num_workers": 1},
            "ray": {"num_cpus": 2},
        },
    )


def test_train_sr_checkpoints_on_s3_and_resumes(local_ray, moto_s3):
    opts = moto_s3.storage_options
    fs = s3fs.S3FileSystem(**opts)
    fs.mkdir("models")
    first = train_sr.run(sr_cfg(opts, epochs=1))
    assert first.outputs["checkpoint"].startswith("s3://models/sr/checkpoints/train-sr/checkpoint_")
    fs.invalidate_cache()
    assert {"model.safetensors", "meta.json", "history.json", "training.png", "checkpoints"} <= {
        p.rsplit("/", 1)[1] for p in fs.ls("models/sr")
    }
    run_files = {p.rsplit("/", 1)[1] for p in fs.ls("models/sr/checkpoints/train-sr")}
    assert "_run.json" in run_files and any(f.startswith("checkpoint_") for f in run_files)
    # No credentials in what the run records about itself.
    assert "testing" not in fs.cat_file("models/sr/checkpoints/train-sr/_run.json").decode()
    (epoch1,) = json.loads(fs.cat_file("models/sr/history.json"))

    train_sr.run(sr_cfg(opts, epochs=2))  # continues after epoch 1
    fs.invalidate_cache()
    history = json.loads(fs.cat_file("models/sr/history.json"))
    assert [h["epoch"] for h in history] == [1, 2] and history[0] == epoch1
    assert load_sr_model(Location("s3://models/sr", opts)).meta["epoch"] == 2
