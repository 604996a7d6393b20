"""train-sr end to end: the CLI trains with 2 Ray Train workers on a local 2-CPU Ray, and the
restore pipeline loads the checkpoint and applies it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jobs.config_restore import RestoreJobConfig
from restore_core import codec
from restore_core.config import FitConfig, SRConfig
from restore_core.io import sr_models
from restore_core.pipeline import Restorer

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]


def test_train_sr_cli_then_restore_pipeline(tmp_path):
    out = tmp_path / "sr_model"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    cmd = [
        sys.executable,
        "-m",
        "jobs",
        "train-sr",
        "--config",
        "configs/sr_seed.yaml",
        "--json",
        "--set",
        "train.epochs=1",
        "--set",
        "digits.n_train=256",
        "--set",
        "digits.n_val=64",
        "--set",
        "ray.num_cpus=2",
        "--set",
        "workers.num_workers=2",
        "--set",
        f"output={out}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=840, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[train-sr] epoch 1/1" in proc.stdout + proc.stderr  # progress reached the console
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert summary["job"] == "train-sr" and "2 x" in summary["values"]["workers"]
    assert {"model.safetensors", "meta.json", "history.json", "training.png"} <= set(os.listdir(out))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["param_count"] == 23985 and meta["degrade"]["scale"] == 2.8
    assert np.isfinite(meta["val_psnr"]) and meta["history"][0]["val_images"] == 64
    assert meta["history"][0]["train_images"] == 256  # both workers' shards together

    cfg = RestoreJobConfig(fit=FitConfig(method="none"), sr=SRConfig(enabled=True, model=str(out)))
    apply = sr_models.load_sr_apply(cfg.sr, "cpu")
    restorer = Restorer(None, apply, cfg)
    rng = np.random.default_rng(0)
    gray = (rng.random((28, 28)) * 255).astype(np.uint8)
    rgb = (rng.random((33, 21, 3)) * 255).astype(np.uint8)
    batch = {
        "id": np.array(["g", "c"], dtype=object),
        "image": np.array([codec.encode_png(gray / 255.0), codec.encode_png(rgb / 255.0)], dtype=object),
    }
    result = restorer(batch)
    assert list(result["status"]) == ["ok", "ok"], result["error"]
    out_gray, _ = codec.decode(result["image"][0])
    out_rgb, _ = codec.decode(result["image"][1])
    assert out_gray.shape == (28, 28) and out_rgb.shape == (33, 21, 3)
    assert not np.allclose(out_gray, gray / 255.0, atol=1 / 255)  # the model changed the image
