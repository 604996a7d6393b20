"""The restore job with input and output on S3: moto's S3 server on 127.0.0.1, reached by s3fs
over HTTP through ``storage_options.client_kwargs.endpoint_url``. No S3 call is mocked."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs

from jobs import restore
from jobs.config_restore import RestoreJobConfig
from restore_core.config import from_dict
from restore_core.errors import UserError
from restore_core.io.artifacts import save_bases
from restore_core.io.locations import Location
from tests.integration.conftest import BAD_IDS, make_bases, make_dataset_tables

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3_dataset(moto_s3):
    fs = s3fs.S3FileSystem(**moto_s3.storage_options)
    fs.mkdir("in-bucket")
    fs.mkdir("out-bucket")
    for s, table in enumerate(make_dataset_tables()):
        with fs.open(f"in-bucket/data/part-{s}.parquet", "wb") as f:
            pq.write_table(table, f, row_group_size=2)
    save_bases(make_bases(), Location("s3://in-bucket/bases", moto_s3.storage_options))
    return fs


def s3_cfg(moto_s3, **extra) -> RestoreJobConfig:
    opts = moto_s3.storage_options
    data = {
        "input": {"path": "s3://in-bucket/data", "storage_options": opts},
        "output": {"path": "s3://out-bucket/restored", "storage_options": opts},
        "bases": "s3://in-bucket/bases",
        "fit": {"max_iter": 50},
        "device": "cpu",
        "ray": {"batch_size": 4, "num_cpus": 2},
    }
    for key, value in extra.items():
        data[key].update(value)
    return from_dict(RestoreJobConfig, data)


@pytest.mark.timeout(900)  # ~30 s on an idle machine; Ray start-up under heavy load takes minutes
def test_restore_s3_to_s3(local_ray, moto_s3, s3_dataset):
    summary = restore.run(s3_cfg(moto_s3))
    fs = s3_dataset
    fs.invalidate_cache()
    parts = sorted(fs.ls("out-bucket/restored/data"))
    assert [p.rsplit("/", 1)[1] for p in parts] == [f"part-0000{i}.parquet" for i in range(3)]
    tables = []
    for p in parts:
        with fs.open(p, "rb") as f:
            tables.append(pq.read_table(f))
    out = pa.concat_tables(tables)
    want_ids = [i for t in make_dataset_tables() for i in t.column("id").to_pylist()]
    assert out.column("id").to_pylist() == want_ids
    errors = {
        i for i, s in zip(out.column("id").to_pylist(), out.column("status").to_pylist(), strict=True) if s == "error"
    }
    assert errors == set(BAD_IDS)
    assert summary.values["rows ok"] == len(want_ids) - len(BAD_IDS)
    assert not fs.exists("out-bucket/restored/_tmp")
    with fs.open("out-bucket/restored/_manifest.json", "r") as f:
        manifest = json.load(f)
    # Storage options (credentials, endpoint) never reach the manifest.
    assert manifest["config"]["input"]["storage_options"]["key"] == "***"
    assert "testing" not in json.dumps(manifest["config"])

    again = restore.run(s3_cfg(moto_s3))
    assert again.values["shards written now"] == 0


def test_bad_credentials_fail_before_work(moto_s3, s3_dataset):
    # moto accepts any key, so a missing bucket stands in for "no access": both fail before Ray starts.
    with pytest.raises(UserError, match="input path does not exist"):
        restore.run(s3_cfg(moto_s3, input={"path": "s3://no-such-bucket/data"}))
    with pytest.raises(UserError, match=r"cannot write to output\.path"):
        restore.run(s3_cfg(moto_s3, output={"path": "s3://no-such-out-bucket/x"}))
