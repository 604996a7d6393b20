"""The restore job on a real local Ray over real Parquet files: every id once, bad rows as
errors, results equal to restore_core in-process, atomic shards, resume after a kill."""

from __future__ import annotations

import json
import logging
import math
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

from jobs import restore
from jobs.config_restore import RestoreJobConfig
from restore_core.config import from_dict
from restore_core.errors import UserError
from restore_core.io.artifacts import load_bases
from restore_core.io.locations import Location
from restore_core.pipeline import Restorer
from tests.integration.conftest import BAD_IDS, make_dataset_tables

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
IGNORED = {"seconds"}  # wall-clock per row: the only column allowed to differ between runs


def make_cfg(input_path, bases_path, out_path, /, **sections) -> RestoreJobConfig:
    data = {
        "input": {"path": str(input_path)},
        "output": {"path": str(out_path)},
        "bases": str(bases_path),
        "fit": {"method": "nmf", "max_iter": 50},  # these tests run the NMF solver through Ray
        "device": "cpu",
        "ray": {"batch_size": 4, "num_cpus": 2},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value) if isinstance(value, dict) else data.__setitem__(key, value)
    return from_dict(RestoreJobConfig, data)


def read_output(folder: Path) -> pa.Table:
    files = sorted((folder / "data").glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


def _nan_safe(value):
    # NaN != NaN, so metric columns that are NaN (no reference) would never compare equal.
    return "nan" if isinstance(value, float) and math.isnan(value) else value


def comparable(folder: Path) -> dict[str, dict[str, list]]:
    """Every output shard's columns (except wall-clock ones) as plain, NaN-comparable lists."""
    out = {}
    for f in sorted((folder / "data").glob("*")):
        table = pq.read_table(f).drop_columns(sorted(IGNORED))
        out[f.name] = {name: [_nan_safe(v) for v in table.column(name).to_pylist()] for name in table.column_names}
    return out


@pytest.mark.timeout(900)  # includes the module's Ray start-up
def test_restore_every_id_once_bad_rows_errors_equal_in_process(
    local_ray, restore_dataset, tmp_path, monkeypatch, caplog, capsys
):
    cfg = make_cfg(restore_dataset.path, restore_dataset.bases, tmp_path / "out")
    # stderr is not a terminal under capsys: progress is logged, here at every update
    monkeypatch.setenv("IMRESTORE_PROGRESS_SECONDS", "0")
    caplog.set_level(logging.INFO, logger="jobs.progress")
    summary = restore.run(cfg)
    out = read_output(tmp_path / "out")
    n = len(restore_dataset.ids)
    progress = [r.getMessage() for r in caplog.records if r.name == "jobs.progress"]
    assert progress[0].startswith(f"restoring: 0/{n} images (0%)") and "images/s" in progress[-1]
    assert progress[-1].startswith(f"restoring: {n}/{n} images (100%)"), progress

    ids = out.column("id").to_pylist()
    assert sorted(ids) == sorted(restore_dataset.ids) and len(ids) == len(set(ids))
    status = dict(zip(ids, out.column("status").to_pylist(), strict=True))
    assert {i for i, s in status.items() if s == "error"} == set(BAD_IDS)
    errors = dict(zip(ids, out.column("error").to_pylist(), strict=True))
    assert all(errors[i] for i in BAD_IDS) and all(errors[i] is None for i in ids if i not in BAD_IDS)
    assert summary.values["rows ok"] == len(ids) - len(BAD_IDS) and summary.values["rows error"] == len(BAD_IDS)
    assert summary.values["dead pixel fraction before"] > 0.2
    assert summary.values["dead pixel fraction after"] < summary.values["dead pixel fraction before"]
    # one output shard per input file, in input order, pass-through column kept
    assert [p.name for p in sorted((tmp_path / "out" / "data").iterdir())] == [
        f"part-0000{i}.parquet" for i in range(3)
    ]
    assert pq.read_table(tmp_path / "out" / "data" / "part-00001.parquet").column("label").to_pylist() == [1] * 5
    assert not (tmp_path / "out" / "_tmp").exists()

    # the same rows through restore_core in-process give the same images and metrics
    restorer = Restorer(load_bases(Location(str(restore_dataset.bases))), None, cfg)
    for table, expected_name in zip(make_dataset_tables(), sorted((tmp_path / "out" / "data").iterdir()), strict=True):
        batch = {c: np.asarray(table.column(c).to_pylist(), dtype=object) for c in table.column_names}
        want = restorer(batch)
        got = pq.read_table(expected_name)
        assert got.column("id").to_pylist() == list(want["id"])
        assert got.column("image").to_pylist() == list(want["image"])
        assert got.column("status").to_pylist() == list(want["status"])
        np.testing.assert_allclose(got.column("dead_fraction_out").to_numpy(), want["dead_fraction_out"].astype(float))

    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["rows"] == {"rows": 15, "ok": 12, "error": 3}
    assert (
        manifest["artifacts"]["bases"]["fingerprint"] == load_bases(Location(str(restore_dataset.bases))).fingerprint()
    )
    assert manifest["config"]["input"]["path"] == str(restore_dataset.path)
    assert {"ray", "torch", "pyarrow"} <= set(manifest["versions"])


@pytest.mark.timeout(900)
def test_default_without_a_refiner_restores_with_the_sparse_blend(local_ray, restore_dataset, tmp_path):
    # fit.method auto, no refiner: the no-training blend, bases (set but unused) not loaded
    cfg = make_cfg(restore_dataset.path, restore_dataset.bases, tmp_path / "out", fit={"method": "auto"})
    summary = restore.run(cfg)
    out = read_output(tmp_path / "out")
    ids = out.column("id").to_pylist()
    assert sorted(ids) == sorted(restore_dataset.ids) and len(ids) == len(set(ids))
    method = dict(zip(ids, out.column("method").to_pylist(), strict=True))
    status = dict(zip(ids, out.column("status").to_pylist(), strict=True))
    assert {i for i, s in status.items() if s == "error"} == set(BAD_IDS)
    assert all(method[i] == "sparse" for i in ids if i not in BAD_IDS), method
    assert summary.values["dead pixel fraction after"] < summary.values["dead pixel fraction before"]
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["rows"] == {"rows": 15, "ok": 12, "error": 3}
    assert manifest["artifacts"]["bases"] is None  # set, but not loaded: auto without a refiner does not use them


@pytest.mark.timeout(900)
def test_row_range_shards_and_overwrite(local_ray, restore_dataset, tmp_path):
    out = tmp_path / "out"
    cfg = make_cfg(restore_dataset.path, restore_dataset.bases, out, output={"rows_per_shard": 2})
    restore.run(cfg)
    names = sorted(p.name for p in (out / "data").iterdir())
    assert len(names) == 8  # files of 4, 5 and 6 rows in ranges of 2: 2 + 3 + 3 shards
    got = read_output(out)
    assert got.column("id").to_pylist() == restore_dataset.ids  # shards in input order, rows in file order
    assert pq.read_metadata(out / "data" / names[0]).num_rows == 2

    # A different plan in the same folder is refused; --overwrite starts afresh.
    with pytest.raises(UserError, match="overwrite"):
        restore.run(make_cfg(restore_dataset.path, restore_dataset.bases, out))
    summary = restore.run(make_cfg(restore_dataset.path, restore_dataset.bases, out, output={"overwrite": True}))
    assert summary.values["shards written now"] == 3
    assert sorted(p.name for p in (out / "data").iterdir()) == [f"part-0000{i}.parquet" for i in range(3)]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"input": {"path": "/nonexistent/input"}}, "input path does not exist"),
        ({"bases": "/nonexistent/bases"}, "no bases artifact"),
        ({"ray": {"batch_size": 0}}, "ray.batch_size"),
        ({"output": {"path": "memory://out"}}, "memory://"),
        ({"sr": {"enabled": True}}, "sr.model"),
    ],
)
def test_bad_config_fails_before_any_work(restore_dataset, tmp_path, change, message):
    import ray

    was_up = ray.is_initialized()
    with pytest.raises(UserError, match=message):  # some are refused by the loader itself (ranges)
        restore.run(make_cfg(restore_dataset.path, restore_dataset.bases, tmp_path / "out", **change))
    assert ray.is_initialized() == was_up  # Ray was not even started
    assert not (tmp_path / "out" / "data").exists()


def test_cli_one_line_error_exit_2(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs",
            "restore",
            "--set",
            f"input.path={tmp_path / 'nope'}",
            "--set",
            f"output.path={tmp_path / 'out'}",
            "--set",
            f"bases={tmp_path / 'b'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: input path does not exist")
    assert "Traceback" not in out.stderr


def _committed(out: Path) -> list[Path]:
    return list((out / "data").glob("part-*.parquet")) if (out / "data").exists() else []


def _cli_cmd(cfg_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "jobs", "restore", *cfg_args]


@pytest.mark.slow  # four job runs: ~1 min on an idle 2-core machine, several under load
@pytest.mark.timeout(900)
def test_resume_after_kill_is_identical_and_rerun_does_nothing(local_ray, restore_dataset, tmp_path):
    import ray

    args = [
        "--set",
        f"input.path={restore_dataset.path}",
        "--set",
        f"bases={restore_dataset.bases}",
        "--set",
        "fit.method=nmf",  # as make_cfg: the reference run's method
        "--set",
        "fit.max_iter=50",
        "--set",
        "device=cpu",
        "--set",
        "ray.batch_size=1",
        "--set",
        "output.rows_per_shard=1",
        # the killed job joins this module's Ray: no cluster start-up inside the test
        "--set",
        f"ray.address={ray.get_runtime_context().gcs_address}",
    ]
    # Reference: an uninterrupted run.
    ref = tmp_path / "ref"
    restore.run(
        make_cfg(restore_dataset.path, restore_dataset.bases, ref, output={"rows_per_shard": 1}, ray={"batch_size": 1})
    )

    out = tmp_path / "out"
    proc = subprocess.Popen(
        _cli_cmd([*args, "--set", f"output.path={out}"]),
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while not _committed(out):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no shard committed in time"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and anything it started, mid-run
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    done_at_kill = len(_committed(out))
    assert 1 <= done_at_kill < 15, done_at_kill
    assert not (out / "_manifest.json").exists()

    summary = restore.run(
        make_cfg(restore_dataset.path, restore_dataset.bases, out, output={"rows_per_shard": 1}, ray={"batch_size": 1})
    )
    assert summary.values["shards skipped (done before)"] >= done_at_kill
    assert comparable(out) == comparable(ref)
    assert (out / "_manifest.json").exists() and not list((out / "data").glob(".*"))

    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "data").iterdir()}
    again = restore.run(
        make_cfg(restore_dataset.path, restore_dataset.bases, out, output={"rows_per_shard": 1}, ray={"batch_size": 1})
    )
    assert again.values["shards written now"] == 0 and again.values["rows processed now"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "data").iterdir()} == mtimes


@pytest.mark.timeout(900)
def test_only_flagged_restores_flagged_rows_and_passes_the_rest(local_ray, restore_dataset, tmp_path):
    # A quality run's flags.parquet, as jobs/quality.py writes it: only two ids flagged dead_pixels.
    run = tmp_path / "quality" / "run=2026-11-23"
    run.mkdir(parents=True)
    pq.write_table(
        pa.table({"id": ["s0-1", "s2-3", "s1-0"], "flags": ["dead_pixels", "dead_pixels,blurry", "blurry"]}),
        run / "flags.parquet",
    )
    cfg = make_cfg(restore_dataset.path, restore_dataset.bases, tmp_path / "out", only_flagged=str(run))
    summary = restore.run(cfg)
    assert summary.values["only flagged ids"] == 2
    out = read_output(tmp_path / "out")
    ids = out.column("id").to_pylist()
    assert sorted(ids) == sorted(restore_dataset.ids)  # every row still comes out, once
    method = dict(zip(ids, out.column("method").to_pylist(), strict=True))
    assert method["s0-1"] == "nmf" and method["s2-3"] == "nmf"
    assert all(m == "skipped" for i, m in method.items() if i not in {"s0-1", "s2-3"})
    source = {
        r["id"]: r["image"]
        for f in sorted(Path(restore_dataset.path).glob("*.parquet"))
        for r in pq.read_table(f).to_pylist()
    }
    images = dict(zip(ids, out.column("image").to_pylist(), strict=True))
    assert images["s1-0"] == source["s1-0"]  # passed through byte for byte
    assert images["s0-1"] != source["s0-1"]  # restored
