"""train-inpaint then restore through the Ray job, on a real local Ray (2 CPUs): the refiner is
learned from the damaged images themselves, and restore uses it (fit.method auto -> learned)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imrestore_data import synth
from jobs import restore, train_inpaint
from jobs.config_restore import RestoreJobConfig
from jobs.config_train_inpaint import TrainInpaintConfig
from restore_core import masks
from restore_core.config import from_dict
from restore_core.errors import UserError
from restore_core.io.locations import Location
from restore_core.io.refiners import refiner_artifact, save_refiner
from restore_core.refiner import RefinerSpec, build_refiner
from tests.conftest import png_bytes

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
NET = {"width": 8, "levels": 1, "fill_iters": 50}


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> tuple[Path, list[str]]:
    """Two shards of 32x32 shapes with 30 % dead pixels (zeros), and one undecodable row."""
    root = tmp_path_factory.mktemp("inpaint_data")
    rng = np.random.default_rng(5)
    ids: list[str] = []
    for s in range(2):
        rows = []
        for i, img in enumerate(synth.shapes(12, 32, seed=40 + s)):
            bad, _ = masks.apply_dead_pixels(img, 0.3, rng)
            rows.append((f"s{s}-{i}", png_bytes(np.rint(bad * 255).astype(np.uint8))))
        if s == 1:
            rows.insert(3, ("s1-corrupt", b"not a png"))
        ids += [r[0] for r in rows]
        table = pa.table({"id": [r[0] for r in rows], "image": pa.array([r[1] for r in rows], pa.binary())})
        pq.write_table(table, root / f"part-{s}.parquet")
    return root, ids


def inpaint_cfg(data: Path, out: Path, epochs: int) -> TrainInpaintConfig:
    return from_dict(
        TrainInpaintConfig,
        {
            "input": {"path": str(data)},
            "output": str(out),
            "net": NET,
            "train": {"epochs": epochs, "patch_size": 16, "crops_per_image": 2, "batch_size": 16, "val_fraction": 0.2},
            "workers": {"num_workers": 2},
            "ray": {"num_cpus": 2},
        },
    )


def restore_cfg(data: Path, out: Path, refiner: Path, **extra) -> RestoreJobConfig:
    return from_dict(
        RestoreJobConfig,
        {
            "input": {"path": str(data)},
            "output": {"path": str(out), **extra},
            "refiner": str(refiner),
            "fit": {"method": "learned"},  # auto would skip a refiner one epoch did not make better than its fill
            "device": "cpu",
            "ray": {"batch_size": 8, "num_cpus": 2},
        },
    )


@pytest.mark.slow  # a Ray start and a job (20-125 s in CI): run with -m slow
def test_train_inpaint_then_restore_with_the_refiner(local_ray, damaged, tmp_path):
    data, ids = damaged
    model = tmp_path / "refiner"
    summary = train_inpaint.run(inpaint_cfg(data, model, epochs=1))
    assert {"model.safetensors", "meta.json", "history.json", "checkpoints"} <= set(os.listdir(model))
    meta = json.loads((model / "meta.json").read_text())
    assert (
        meta["spec"]["width"] == 8
        and meta["data_fingerprint"]
        and meta["fingerprint"] == (summary.values["content hash"])
    )
    (epoch1,) = meta["training"]["history"]
    assert epoch1["epoch"] == 1 and epoch1["train_crops"] > 0 and np.isfinite(epoch1["val_psnr_hidden"])
    assert summary.outputs["checkpoint"].startswith(f"{model}/checkpoints/train-inpaint/checkpoint_")

    out = tmp_path / "restored"
    result = restore.run(restore_cfg(data, out, model))
    table = pq.read_table(out / "data")
    got = table.column("id").to_pylist()
    assert sorted(got) == sorted(ids) and len(got) == len(set(got))  # every id exactly once
    status = dict(zip(got, table.column("status").to_pylist(), strict=True))
    assert status.pop("s1-corrupt") == "error" and set(status.values()) == {"ok"}
    assert set(table.column("method").to_pylist()) == {"learned"}
    ok = np.asarray(table.column("status").to_pylist()) == "ok"
    assert np.all(np.asarray(table.column("dead_fraction_out").to_pylist())[ok] == 0.0)
    assert result.values["method"] == "learned"
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["artifacts"]["refiner"]["fingerprint"] == meta["fingerprint"]

    # Other weights make other output: the rerun is refused rather than mixing the two.
    other = tmp_path / "other"
    save_refiner(refiner_artifact(build_refiner(RefinerSpec(**NET)), RefinerSpec(**NET)), Location(str(other)))
    with pytest.raises(UserError, match="--overwrite"):
        restore.run(restore_cfg(data, out, other))
    with pytest.raises(UserError, match="no refiner at"):
        restore.run(restore_cfg(data, tmp_path / "out2", tmp_path / "missing"))

    # A rerun with one more epoch continues from the checkpoint of epoch 1.
    again = train_inpaint.run(inpaint_cfg(data, model, epochs=2))
    history = json.loads((model / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and history[0] == epoch1
    assert again.values["content hash"] != summary.values["content hash"]


def _cli(data: Path, out: Path, epochs: int) -> list[str]:
    sets = {
        "input.path": data,
        "output": out,
        "train.epochs": epochs,
        "train.patch_size": 16,
        "train.crops_per_image": 2,
        "train.val_fraction": 0.0,
        "workers.num_workers": 1,
        "ray.num_cpus": 2,
        "net": "{width: 8, levels: 1, fill_iters: 50}",
    }
    cmd = [sys.executable, "-m", "jobs", "train-inpaint", "--config", "configs/train_inpaint.yaml"]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd


@pytest.mark.slow
def test_killed_training_resumes_from_its_last_checkpoint(damaged, tmp_path):
    data, _ = damaged
    out = tmp_path / "refiner"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    runs = out / "checkpoints" / "train-inpaint"
    # Many epochs: it is killed as soon as its first checkpoint is there.
    proc = subprocess.Popen(
        _cli(data, out, 400),
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            if runs.is_dir() and any(p.name.startswith("checkpoint_") for p in runs.iterdir()):
                break
            time.sleep(0.5)
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(1.0)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, its embedded Ray and the training workers
        proc.wait()
    assert not (out / "meta.json").exists()
    done = sorted(p.name for p in runs.iterdir() if p.name.startswith("checkpoint_"))
    assert done
    rerun = subprocess.run(
        _cli(data, out, 3), cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    logs = rerun.stdout + rerun.stderr
    assert "resuming from the latest checkpoint" in logs
    resumed_after = int(logs.split("[train-inpaint] resuming after epoch ")[1].split()[0])
    assert resumed_after >= 1
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, max(3, resumed_after) + 1))
