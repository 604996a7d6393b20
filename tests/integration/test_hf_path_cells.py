"""Hugging Face datasets whose image cells point at files ({bytes: null, path}): the restore and
quality jobs read the files relative to the dataset folder and give real rows; cells whose file
is missing or outside the dataset become error rows, and every id appears once."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from jobs import quality, restore
from jobs.config_quality import QualityJobConfig
from jobs.config_restore import RestoreJobConfig
from restore_core.config import from_dict
from tests.unit.test_datasets import path_only_folder

pytestmark = pytest.mark.integration

GOOD = {"rel", "abs", "embedded"}
BAD = {"missing", "climb", "outside", "null"}


@pytest.mark.slow  # 26 s in CI: a restore and a quality run
def test_restore_and_quality_read_path_only_cells(local_ray, tmp_path):
    root = path_only_folder(tmp_path)
    rcfg = from_dict(
        RestoreJobConfig,
        {
            "input": {"path": str(root)},
            "output": {"path": str(tmp_path / "restored")},
            "fit": {"method": "median"},
            "ray": {"batch_size": 4, "num_cpus": 2},
        },
    )
    summary = restore.run(rcfg)
    assert summary.values["rows ok"] == len(GOOD) and summary.values["rows error"] == len(BAD)
    assert "MB -> " in summary.values["image bytes in -> out"]  # the dataset's size change
    table = pq.read_table(tmp_path / "restored" / "data")
    status = dict(zip(table.column("id").to_pylist(), table.column("status").to_pylist(), strict=True))
    assert sorted(status) == sorted(GOOD | BAD)
    assert {i for i, s in status.items() if s == "ok"} == GOOD
    errors = dict(zip(table.column("id").to_pylist(), table.column("error").to_pylist(), strict=True))
    assert "could not be read" in errors["climb"] and "could not be read" in errors["missing"]
    widths = dict(zip(table.column("id").to_pylist(), table.column("width").to_pylist(), strict=True))
    assert all(widths[i] == 5 for i in GOOD)

    qcfg = from_dict(
        QualityJobConfig,
        {"input": {"path": str(root)}, "output": str(tmp_path / "quality"), "run_date": "2000-01-01",
         "ray": {"batch_size": 4, "num_cpus": 2}},
    )  # fmt: skip
    quality.run(qcfg)
    scored = pq.read_table(tmp_path / "quality" / "run=2000-01-01" / "data")
    qstatus = dict(zip(scored.column("id").to_pylist(), scored.column("status").to_pylist(), strict=True))
    assert {i for i, s in qstatus.items() if s == "ok"} == GOOD and sorted(qstatus) == sorted(GOOD | BAD)
