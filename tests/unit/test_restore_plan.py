"""The restore job's preflight (jobs/restore_plan.py): a checked plan, or one line, before Ray starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.config_restore import RestoreJobConfig
from jobs.restore_plan import preflight, resume
from restore_core.bases import Bases, BasesMeta
from restore_core.config import from_dict
from restore_core.errors import ArtifactError, UserError
from restore_core.io.artifacts import save_bases
from restore_core.io.locations import Location
from tests.conftest import png_bytes


def _dataset(folder: Path, n: int = 3, side: int = 6) -> str:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = [png_bytes(rng.integers(1, 255, (side, side), dtype=np.uint8)) for _ in range(n)]
    pq.write_table(pa.table({"id": [f"i{i}" for i in range(n)], "image": images}), folder / "part-0.parquet")
    return str(folder)


def _cfg(tmp_path: Path, **over: object) -> RestoreJobConfig:
    data = {"input": {"path": _dataset(tmp_path / "in")}, "output": {"path": str(tmp_path / "out")}, **over}
    return from_dict(RestoreJobConfig, data)


def test_preflight_plans_without_ray_and_resume_writes_the_plan(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from jobs.restore_plan import preflight\n"
        "from tests.unit.test_restore_plan import _cfg\n"
        "from pathlib import Path\n"
        f"plan = preflight(_cfg(Path({str(tmp_path)!r}), fit={{'method': 'median'}}))\n"
        "assert plan.method == 'median' and plan.bases is None and len(plan.shards) == 1, plan\n"
        "assert 'ray' not in sys.modules, 'preflight imported ray'\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    plan = resume(preflight(_cfg(tmp_path / "again", fit={"method": "median"})))
    assert [s.index for s in plan.pending()] == [s.index for s in plan.shards]
    assert (tmp_path / "again" / "out" / "_plan.json").is_file()


def test_preflight_refuses_corrupt_bases_and_bases_for_other_images(tmp_path: Path) -> None:
    meta = BasesMeta(mode="patch", k=2, n_pixels=9, channels=1, patch_size=3)
    save_bases(Bases(np.ones((2, 9), np.float32), meta), Location(str(tmp_path / "bases")))
    nmf = {"method": "nmf"}
    assert preflight(_cfg(tmp_path, bases=str(tmp_path / "bases"))).method == "sparse"  # auto: no bases needed
    assert preflight(_cfg(tmp_path / "a", bases=str(tmp_path / "bases"), fit=nmf)).method == "nmf"
    (tmp_path / "bases" / "bases.npy").write_bytes(b"not numpy")
    with pytest.raises(ArtifactError):
        preflight(_cfg(tmp_path / "b", bases=str(tmp_path / "bases"), fit=nmf))
    wide = BasesMeta(mode="global", k=2, n_pixels=64, channels=1, image_shape=(8, 8))
    save_bases(Bases(np.ones((2, 64), np.float32), wide), Location(str(tmp_path / "global")))
    with pytest.raises(UserError, match="8"):
        preflight(_cfg(tmp_path / "c", bases=str(tmp_path / "global"), fit=nmf))


def test_preflight_refuses_cuda_without_a_gpu(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present here")
    with pytest.raises(UserError, match="cuda"):
        preflight(_cfg(tmp_path, device="cuda", fit={"method": "median"}))


def test_a_folder_started_when_auto_meant_another_method_is_not_finished_with_this_one(tmp_path: Path) -> None:
    # auto without a refiner was `fill` before `sparse` existed: the same config, other output
    import json

    from jobs.restore_plan import resume_settings
    from restore_core.io import shards as shard_io

    plan = preflight(_cfg(tmp_path))
    assert plan.method == "sparse" and plan.bases is None
    resume(plan)
    doc_path = tmp_path / "out" / "_plan.json"
    doc = json.loads(doc_path.read_text())
    assert doc["settings"]["fit.method_auto"] == "sparse"
    old = resume_settings(plan.cfg, None, None, None, method="fill", redacted=True)  # as the older version ran
    doc.update(fingerprint=shard_io.settings_fingerprint(resume_settings(plan.cfg, None, None, None, method="fill")))
    doc["settings"] = old
    doc_path.write_text(json.dumps(doc))
    with pytest.raises(UserError, match=r"fit\.method_auto"):
        resume(plan)
    fixed = preflight(_cfg(tmp_path / "y", fit={"method": "median"}))  # a method named: not affected
    assert "fit.method_auto" not in resume_settings(fixed.cfg, None, None, None, method=fixed.method)
