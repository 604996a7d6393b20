"""The quality job's verdict survives `ray job submit`: through ``jobs/submit_quality.sh`` against a
real ``ray start --head`` on 127.0.0.1, a warn_on limit passed exits 3, a fail_on limit 1 and a
job that failed 2 (``ray job submit`` alone exits 1 for all three), and ``status.json`` says the
same."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_quality_job import DAMAGED, N_IMAGES, write_images

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "jobs" / "submit_quality.sh"
EXCLUDES = '{"excludes": [".venv", ".git", "out", "artifacts", "bench_out", "demo_out"]}'


@pytest.fixture(scope="module")
def damaged_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 images, 2 of them (5%) with dead pixels and blur."""
    folder = tmp_path_factory.mktemp("quality_in") / "day"
    write_images(folder, damage=True)
    return folder


def submit_night(ray_head, tmp_path: Path, images: Path, *flag_args: str) -> tuple[int, str]:
    """One quality night (2024-03-02) of ``images`` into ``tmp_path/quality`` through the wrapper."""
    return submit(
        ray_head, tmp_path, "--set", f"input.path={images}", "--set", f"output={tmp_path / 'quality'}",
        "--run-date", "2024-03-02", *flag_args,
    )  # fmt: skip


def submit(ray_head, tmp_path: Path, *quality_args: str) -> tuple[int, str]:
    alert_file = tmp_path / "alert.txt"
    proc = subprocess.run(
        [
            "bash",
            str(SCRIPT),
            "--address",
            ray_head.address,
            "--working-dir",
            str(REPO),
            "--python",
            sys.executable,
            "--runtime-env-json",
            EXCLUDES,
            "--alert",
            f"cat > {alert_file}",
            "--",
            "--config",
            str(REPO / "configs" / "quality.yaml"),
            "--set",
            "flags.blurry.value=1.0",
            "--set",
            "flags.grayscale.enabled=false",
            "--set",
            "ray.batch_size=8",
            *quality_args,
        ],
        env={**ray_head.env, "PATH": f"{Path(sys.executable).parent}:{ray_head.env.get('PATH', '')}"},
        capture_output=True,
        text=True,
        timeout=420,
        cwd=REPO,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.timeout(900)
def test_warn_exit_code_through_ray_job_submit(ray_head, damaged_images, tmp_path):
    out = tmp_path / "quality"
    # 5% dead pixels (limit 1%) only warns; 5% blurry is not over blurry's 5% limit: no failure
    code, text = submit_night(ray_head, tmp_path, damaged_images, "--warn-on", "dead_pixels", "--fail-on", "blurry")
    assert code == 3, text[-4000:]
    assert "exit code 3" in text, text[-4000:]  # Ray saw the job's own 3 (and still exited 1)
    quality_lines = [x for x in text.splitlines() if x.startswith("QUALITY ")]
    assert quality_lines and quality_lines[-1].startswith("QUALITY WARN 40 images: dead_pixels 5.00% > 1.00%")
    status = json.loads((out / "run=2024-03-02" / "status.json").read_text())
    assert status["verdict"] == "WARN" and status["exit_code"] == 3
    assert status["failed"] == [] and status["warned"][0].startswith("dead_pixels: 2 of 40 images (5.00%)")
    assert status["counts"]["images"] == N_IMAGES and status["counts"]["flagged"]["dead_pixels"] == len(DAMAGED)
    assert status["run_date"] == "2024-03-02" and status["started"] <= status["finished"]
    assert json.loads((out / "_status" / "run=2024-03-02.json").read_text()) == status
    assert (tmp_path / "alert.txt").read_text().startswith("QUALITY WARN")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fail_and_error_exit_codes_through_ray_job_submit(ray_head, damaged_images, tmp_path):
    out = tmp_path / "quality"
    code, text = submit_night(ray_head, tmp_path, damaged_images, "--fail-on", "dead_pixels", "--warn-on", "blurry")
    assert code == 1, text[-4000:]
    status = json.loads((out / "run=2024-03-02" / "status.json").read_text())
    assert status["verdict"] == "FAIL" and status["exit_code"] == 1 and len(status["failed"]) == 1

    # the job itself fails (its input is gone): 2, and the status file says why
    code, text = submit(
        ray_head,
        tmp_path,
        "--set",
        f"input.path={tmp_path / 'no-such-folder'}",
        "--set",
        f"output={out}",
        "--run-date",
        "2024-03-03",
    )
    assert code == 2, text[-4000:]
    assert [x for x in text.splitlines() if x.startswith("QUALITY ")][-1].startswith("QUALITY ERROR the job failed:")
    status = json.loads((out / "_status" / "run=2024-03-03.json").read_text())
    assert status["verdict"] == "ERROR" and status["exit_code"] == 2 and "no-such-folder" in status["error"]
    assert not (out / "run=2024-03-03").exists()
