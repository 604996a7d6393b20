"""An image folder scored by the quality job on a real local Ray, the actors reading the files
themselves (jobs/quality_read.py): a file that vanishes between the listing and the read, and
one that is not an image, each become an error row that says why; every file listed gives its
id exactly once, in the actor pool as in the driver."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import quality, quality_read
from jobs.config_quality import QualityJobConfig
from restore_core.config import from_dict
from tests.conftest import png_bytes

pytestmark = pytest.mark.integration

GONE = "sub/gone.png"
BAD = "bad.png"


def _folder(root: Path) -> list[str]:
    """Nine decodable PNG files (two in sub/), the file that will vanish, one that is not an image."""
    rng = np.random.default_rng(5)
    ids = [f"ok-{k}.png" for k in range(7)] + ["sub/ok-7.png", "sub/ok-8.png", GONE]
    for name in ids:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(png_bytes(rng.integers(30, 220, (16, 16, 3), dtype=np.uint8)))
    (root / BAD).write_bytes(b"not an image at all")
    return sorted([*ids, BAD])


@pytest.mark.timeout(600)
@pytest.mark.parametrize("where", ["ray", "driver"])
def test_vanished_and_undecodable_files_are_error_rows(local_ray, tmp_path, monkeypatch, caplog, where):
    ids = _folder(tmp_path / "imgs")
    monkeypatch.setenv("IMRESTORE_PROGRESS_SECONDS", "0")  # a progress line at every update
    caplog.set_level(logging.INFO, logger="jobs.progress")
    listed = quality_read.path_blocks

    def list_then_delete(*args: Any, **kwargs: Any) -> Any:
        blocks = listed(*args, **kwargs)
        (tmp_path / "imgs" / GONE).unlink(missing_ok=True)  # after the listing, before any read
        return blocks

    monkeypatch.setattr(quality_read, "path_blocks", list_then_delete)
    cfg = from_dict(
        QualityJobConfig,
        {
            "input": {"path": str(tmp_path / "imgs"), "format": "images"},
            "output": str(tmp_path / "q"),
            "run_date": "2024-07-01",
            "local_score_max_rows": 0 if where == "ray" else 1000,
            "ray": {"batch_size": 4, "num_cpus": 2},
        },
    )
    quality.run(cfg)
    run = tmp_path / "q" / "run=2024-07-01"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["scored_in"] == where
    rows = pq.read_table(run / "data").to_pylist()
    assert sorted(r["id"] for r in rows) == ids  # every listed file once, none dropped
    by_id = {r["id"]: r for r in rows}
    gone, bad = by_id[GONE], by_id[BAD]
    assert (gone["status"], bad["status"]) == ("error", "error")
    assert "could not be read" in gone["error"] and "FileNotFoundError" in gone["error"], gone["error"]
    assert "could not be read" not in bad["error"] and bad["error"].startswith("ImageDecodeError"), bad["error"]
    assert gone["decode_error"] == bad["decode_error"] == 1.0
    assert all(r["status"] == "ok" for i, r in by_id.items() if i not in (GONE, BAD))
    assert summary["rows"] == len(ids) and summary["errors"] == 2
    assert summary["flags"]["decode_error"]["count"] == 2
    flags = pq.read_table(run / "flags.parquet").column("id").to_pylist()
    assert sorted(flags) == ids
    lines = [r.getMessage() for r in caplog.records if r.name == "jobs.progress"]
    assert any(m.startswith("scoring: 0/11 images (0%)") for m in lines), lines
    assert any(m.startswith("scoring: 11/11 images (100%)") for m in lines), lines


@pytest.mark.slow  # 13 s in CI
@pytest.mark.timeout(600)
def test_actors_write_one_shard_a_batch_when_a_block_holds_several(local_ray, tmp_path):
    """Parquet read blocks of 20 rows scored 4 at a time: each batch is its own shard (named by
    task and place in it), none overwritten, every row once."""
    rng = np.random.default_rng(6)
    (tmp_path / "in").mkdir()
    ids = [f"p{f}-{k:02d}" for f in range(2) for k in range(20)]
    for f in range(2):
        part = ids[f * 20 : (f + 1) * 20]
        blobs = [png_bytes(rng.integers(30, 220, (16, 16, 3), dtype=np.uint8)) for _ in part]
        pq.write_table(pa.table({"id": part, "image": pa.array(blobs, pa.binary())}), tmp_path / "in" / f"{f}.parquet")
    cfg = from_dict(
        QualityJobConfig,
        {
            "input": {"path": str(tmp_path / "in")},
            "output": str(tmp_path / "q"),
            "run_date": "2024-07-02",
            "local_score_max_rows": 0,
            "ray": {"batch_size": 4, "num_cpus": 2},
        },
    )
    quality.run(cfg)
    data = tmp_path / "q" / "run=2024-07-02" / "data"
    assert sorted(pq.read_table(data).column("id").to_pylist()) == ids
    assert len(list(data.glob("part-*.parquet"))) == 10
