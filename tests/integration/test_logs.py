"""What a person reads: a job's log holds its steps, counts and outputs, not Ray's chatter
(worker lines, dedup notices, Ray Data's plans, deprecation warnings); --verbose brings them back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import png_bytes

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
RAY_CHATTER = ("(pid=", "(raylet)", "RAY_DEDUP_LOGS", "Execution plan of Dataset", "DeprecationWarning", "core_worker")


def _restore(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    data = tmp_path / "in"
    data.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    blobs = [png_bytes(rng.integers(0, 256, (12, 12), dtype=np.uint8)) for _ in range(3)]
    pq.write_table(pa.table({"id": ["a", "b", "c"], "image": pa.array(blobs, pa.binary())}), data / "p.parquet")
    env = {k: v for k, v in os.environ.items() if k not in ("IMRESTORE_VERBOSE", "RAY_ADDRESS")}
    return subprocess.run(
        [sys.executable, "-m", "jobs", "restore", "--config", "default", "--set", f"input.path={data}",
         "--set", f"output.path={tmp_path / 'out'}", "--set", "fit.method=median", "--set", "ray.num_cpus=2",
         "--overwrite", *extra],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, check=False,
    )  # fmt: skip


def test_default_log_is_the_jobs_own(tmp_path):
    out = _restore(tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    for chatter in RAY_CHATTER:
        assert chatter not in text, chatter
    assert "restoring 1 shards (3 rows)" in out.stderr  # the step and its count
    assert "Ray's logs in " in out.stderr  # where Ray's own output went instead
    assert f"{tmp_path / 'out'}/data" in out.stdout  # where the outputs are
    assert "rows ok: 3" in " ".join(out.stdout.split())


@pytest.mark.slow
def test_verbose_shows_rays_own_output(tmp_path):
    out = _restore(tmp_path, "--verbose")
    assert out.returncode == 0, out.stderr
    assert "Execution plan of Dataset" in out.stdout + out.stderr
