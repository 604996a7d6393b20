"""Credentials never leak: the restore job runs against moto's S3 server on 127.0.0.1 with
distinctive fake credentials in ``storage_options``, then every output object, the manifest,
the printed summary, the captured stdout/stderr (driver and, through ``log_to_driver``, the
Ray workers) and every file of the Ray session's log folder are searched for them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import s3fs
import yaml

from jobs import cli
from restore_core.io.artifacts import save_bases
from restore_core.io.locations import Location
from tests.integration.conftest import make_bases, make_dataset_tables

pytestmark = pytest.mark.integration

# Distinctive, fake, and accepted by moto (which checks no signature).
FAKE_KEY = "AKIAIMRESTOREFAKE0042"
FAKE_SECRET = "zQ9fakeSecretImRestore7c1eD00dle"
FAKE_TOKEN = "FakeSessionTokenImRestore9931xyz"
NEEDLES = [FAKE_KEY, FAKE_SECRET, FAKE_TOKEN, FAKE_SECRET[:16], FAKE_TOKEN[:16]]


def _leaks(blob: bytes) -> list[str]:
    return [n for n in NEEDLES if n.encode() in blob]


def _session_log_files() -> list[Path]:
    import ray

    node = ray._private.worker._global_node  # the embedded Ray this module started
    assert node is not None
    logs = Path(node.get_session_dir_path()) / "logs"
    return [p for p in logs.rglob("*") if p.is_file()]


@pytest.mark.timeout(900)
def test_credentials_never_reach_outputs_logs_or_summary(local_ray, moto_s3, tmp_path: Path, capfd):
    opts = {
        "key": FAKE_KEY,
        "secret": FAKE_SECRET,
        "token": FAKE_TOKEN,
        "client_kwargs": {"endpoint_url": moto_s3.endpoint},
        "use_listings_cache": False,
    }
    fs = s3fs.S3FileSystem(**opts)
    bucket = "secrets-bucket"
    fs.mkdir(bucket)
    for s, table in enumerate(make_dataset_tables()):
        with fs.open(f"{bucket}/in/part-{s}.parquet", "wb") as f:
            pq.write_table(table, f, row_group_size=2)
    save_bases(make_bases(), Location(f"s3://{bucket}/bases", opts))

    import ray

    config = {
        "input": {"path": f"s3://{bucket}/in", "storage_options": opts},
        "output": {"path": f"s3://{bucket}/out", "storage_options": opts},
        "bases": f"s3://{bucket}/bases",
        "fit": {"max_iter": 30},
        "device": "cpu",
        "ray": {"batch_size": 4, "address": ray.get_runtime_context().gcs_address},
    }
    cfg_file = tmp_path / "restore.yaml"
    cfg_file.write_text(yaml.safe_dump(config))
    assert set(_leaks(cfg_file.read_bytes())) == set(NEEDLES)  # the search finds them where they are
    capfd.readouterr()
    # Through the CLI, as a user runs it: logging at DEBUG, the summary as text and as JSON.
    os.environ["IMRESTORE_LOG"] = "DEBUG"
    try:
        assert cli.main(["restore", "--config", str(cfg_file)]) == 0
        assert cli.main(["restore", "--config", str(cfg_file), "--json"]) == 0  # the resume path
        # A failing run prints its error line: it must not carry the credentials either.
        assert cli.main(["restore", "--config", str(cfg_file), "--set", "output.path=s3://no-such-bucket/x"]) == 2
    finally:
        os.environ.pop("IMRESTORE_LOG", None)
    captured = capfd.readouterr()
    assert "rows" in captured.out and "error:" in captured.err
    assert _leaks(captured.out.encode()) == [] and _leaks(captured.err.encode()) == []

    fs.invalidate_cache()
    outputs = list(fs.find(f"{bucket}/out"))
    assert any(p.endswith("_manifest.json") for p in outputs) and any("/data/part-" in p for p in outputs)
    for p in outputs:
        assert _leaks(fs.cat_file(p)) == [], p
    manifest = json.loads(fs.cat_file(f"{bucket}/out/_manifest.json"))
    assert manifest["config"]["output"]["storage_options"]["secret"] == "***"

    logs = _session_log_files()
    assert logs, "no Ray session logs found"
    leaked = {str(p): _leaks(p.read_bytes()) for p in logs}
    assert {k: v for k, v in leaked.items() if v} == {}
