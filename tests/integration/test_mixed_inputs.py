"""Inputs that look alike but are not (issue 16), through the real jobs on a real local Ray:
Parquet files whose column types differ, and an image folder with odd names and a symlinked
subfolder. Every input row must come out once, with its real id, and the outputs must read as
one table."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import quality, restore
from jobs.config_quality import QualityJobConfig
from jobs.config_restore import RestoreJobConfig
from restore_core.config import from_dict
from tests.conftest import png_bytes

pytestmark = pytest.mark.integration


def _png(seed: int) -> bytes:
    a = np.random.default_rng(seed).integers(20, 256, (12, 12), dtype=np.uint8)
    a[3, 4] = a[7, 7] = 0  # two dead pixels
    return png_bytes(a)


def _mixed_parquet(folder: Path) -> list[str]:
    folder.mkdir()
    pq.write_table(
        pa.table({"id": pa.array([1, 2]), "image": [_png(1), _png(2)], "label": pa.array([7, 8], pa.int32())}),
        folder / "a.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "id": pa.array(["x", "2"]),  # "2" again: ids duplicated across files each come out once per row
                "image": [_png(3), _png(4)],
                "label": pa.array([1.5, 2.5]),
                "extra": pa.array(["e1", "e2"]),
            }
        ),
        folder / "b.parquet",
    )
    return ["1", "2", "x", "2"]


@pytest.mark.timeout(900)
def test_restore_and_quality_read_files_whose_types_differ(local_ray, tmp_path: Path):
    ids = _mixed_parquet(tmp_path / "in")
    cfg = from_dict(
        RestoreJobConfig,
        {
            "input": {"path": str(tmp_path / "in")},
            "output": {"path": str(tmp_path / "out")},
            "fit": {"method": "biharmonic"},
            "ray": {"batch_size": 4, "num_cpus": 2},
        },
    )
    summary = restore.run(cfg)
    assert summary.values["rows"] == 4 and summary.values["rows ok"] == 4
    table = pa.concat_tables(pq.read_table(f) for f in sorted((tmp_path / "out" / "data").glob("part-*.parquet")))
    assert table.column("id").to_pylist() == ids
    assert table.column("label").to_pylist() == [7.0, 8.0, 1.5, 2.5]
    assert table.column("extra").to_pylist() == [None, None, "e1", "e2"]
    assert set(table.column("mask_source").to_pylist()) == {"detected"}

    qcfg = from_dict(
        QualityJobConfig,
        {"input": {"path": str(tmp_path / "in")}, "output": str(tmp_path / "q"), "run_date": "2024-06-30"},
    )
    quality.run(qcfg)
    flags = pq.read_table(tmp_path / "q" / "run=2024-06-30" / "flags.parquet")
    assert sorted(flags.column("id").to_pylist()) == sorted(ids)


@pytest.mark.slow  # the listing itself is unit-tested (tests/unit/test_datasets.py); this is the whole job
@pytest.mark.timeout(900)
def test_quality_keeps_every_odd_name_and_follows_symlinked_folders(local_ray, tmp_path: Path):
    root, elsewhere = tmp_path / "imgs", tmp_path / "elsewhere"
    (root / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    names = ["a?b.png", "c#d.png", "img[1].png", "st*r.png", "%3F.png", "sub/q?x#y.png"]
    for i, n in enumerate(names):
        (root / n).write_bytes(_png(i))
    (elsewhere / "linked.png").write_bytes(_png(99))
    os.symlink(elsewhere, root / "link")
    os.symlink(root, root / "sub" / "loop")  # must not hang or repeat
    cfg = from_dict(
        QualityJobConfig,
        {
            "input": {"path": str(root), "format": "images"},
            "output": str(tmp_path / "q"),
            "run_date": "2024-06-30",
        },
    )
    quality.run(cfg)
    flags = pq.read_table(tmp_path / "q" / "run=2024-06-30" / "flags.parquet")
    assert sorted(flags.column("id").to_pylist()) == sorted([*names, "link/linked.png"])
