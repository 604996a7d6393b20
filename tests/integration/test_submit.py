"""Running the restore job on a Ray cluster: `ray job submit` against `ray start --head` on
127.0.0.1 (token authentication, free ports), and a two-node ``ray.cluster_utils.Cluster``
where actors on both nodes use the one copy of the bases the driver put."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import restore
from jobs.config_restore import RestoreJobConfig
from restore_core.config import from_dict
from tests.integration.conftest import BAD_IDS, RAY

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _read(out: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted((out / "data").glob("part-*.parquet"))])


def test_ray_job_submit_to_ray_start_head(restore_dataset, ray_head, tmp_path):
    out = tmp_path / "out"
    submit = subprocess.run(
        [
            RAY,
            "job",
            "submit",
            "--address",
            ray_head.address,
            "--working-dir",
            str(REPO),
            "--runtime-env-json",
            '{"excludes": [".venv", ".git", "out", "artifacts", "bench_out", "demo_out"]}',
            "--",
            sys.executable,
            "-m",
            "jobs",
            "restore",
            "--set",
            f"input.path={restore_dataset.path}",
            "--set",
            f"bases={restore_dataset.bases}",
            "--set",
            f"output.path={out}",
            "--set",
            "fit.max_iter=50",
            "--set",
            "device=cpu",
        ],
        env=ray_head.env,
        capture_output=True,
        text=True,
        timeout=420,
        cwd=REPO,
        check=False,
    )
    assert submit.returncode == 0, (submit.stdout + submit.stderr)[-4000:]
    assert "succeeded" in (submit.stdout + submit.stderr)
    assert "rows ok" in submit.stdout  # the job's summary is streamed back
    table = _read(out)
    assert sorted(table.column("id").to_pylist()) == sorted(restore_dataset.ids)
    errors = {
        i
        for i, s in zip(table.column("id").to_pylist(), table.column("status").to_pylist(), strict=True)
        if s == "error"
    }
    assert errors == set(BAD_IDS)
    assert (out / "_manifest.json").exists()


def test_two_nodes_share_one_bases_object(restore_dataset, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        # Two worker nodes with one (logical) GPU each: one GPU actor lands on each node.
        cluster.add_node(num_cpus=1, num_gpus=1)
        cluster.add_node(num_cpus=1, num_gpus=1)
        cluster.wait_for_nodes()
        cfg = from_dict(
            RestoreJobConfig,
            {
                "input": {"path": str(restore_dataset.path)},
                "output": {"path": str(tmp_path / "out"), "rows_per_shard": 1},
                "bases": str(restore_dataset.bases),
                "fit": {"method": "nmf", "max_iter": 50},  # the bases in the object store: the nmf path
                "device": "cpu",
                "ray": {"address": cluster.address, "num_gpus_per_actor": 1, "batch_size": 1},
            },
        )
        summary = restore.run(cfg)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert summary.values["actors"] == 2
    assert summary.values["actor nodes"] == 2
    # every actor used the same object: the one the driver put
    assert summary.values["bases objects seen by actors"] == summary.values["bases object"] != ""
    assert sorted(_read(tmp_path / "out").column("id").to_pylist()) == sorted(restore_dataset.ids)
