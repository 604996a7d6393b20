"""The demo, as a new user runs it: ``python -m jobs demo --out DIR --small``, twice.

The first run makes every artifact and prints the PSNR/SSIM table; the second reuses them all.
Slow (it runs every job on a local Ray); CI runs the same command in .ci/run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500)]


def _demo(out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IMRESTORE_LOG": "INFO"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "jobs", "demo", "--out", str(out), "--small", "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        check=False,
        timeout=1400,
    )


def test_demo_runs_end_to_end_then_reuses_everything(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = _demo(out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])
    steps = {k[5:]: v for k, v in summary["values"].items() if k.startswith("step ")}
    assert set(steps) >= {
        "data",
        "learn-bases",
        "train-sr",
        "train-inpaint",
        "restore learned",
        "restore sparse",
        "restore nmf",
        "restore nmf+sr",
        "quality",
    }
    assert all(v.startswith("done") for v in steps.values()), steps

    # The dataset: Parquet shards, the test set keeping the clean image in `reference`.
    test = pq.read_table(out / "data" / "test")
    assert {"id", "image", "reference", "kind"} <= set(test.column_names)
    assert set(test.column("kind").to_pylist()) == {"face", "texture", "digit", "shape"}

    # The table: restoration beats the damaged input by a wide margin, for every method.
    table = summary["table"]
    assert "damaged input" in table and "nmf+sr" in table and "learned" in table
    rows = json.loads((out / "report" / "summary.json").read_text())["results"]
    by = {r["method"]: r for r in rows}
    for method in ("learned", "sparse", "nmf", "biharmonic", "median", "nmf+sr"):
        assert by[method]["ok"] == by[method]["rows"] == test.num_rows
        assert by[method]["psnr"] > by["damaged input"]["psnr"] + 8.0, rows
        assert by[method]["dead_after"] == 0.0

    # The before/after grid is a real picture of the images, not an empty canvas.
    grid = np.asarray(Image.open(out / "report" / "before_after.png").convert("L"), np.float32)
    assert grid.shape[0] > 300 and grid.shape[1] > 600 and grid.std() > 20
    assert (out / "sr_model" / "training.png").stat().st_size > 0
    assert (out / "refiner" / "model.safetensors").stat().st_size > 0
    assert summary["outputs"]["quality report"].endswith(".html")

    # Second run: everything reused, same numbers.
    again = _demo(out)
    assert again.returncode == 0, again.stderr[-4000:]
    summary2 = json.loads(again.stdout[again.stdout.index("{") :])
    steps2 = {k[5:]: v for k, v in summary2["values"].items() if k.startswith("step ")}
    assert all(v == "reused" for v in steps2.values()), steps2
    assert summary2["table"] == summary["table"]
