"""Nothing a user owns is deleted, mixed or leaked (issue 16): the pure pieces.

Locations compared however they are spelled, the lease on an output folder, the resume
fingerprint, plans extended with new input, ``--overwrite`` deleting only what restore wrote,
credentials redacted from log lines, and storage errors explained in one line.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pytest

from jobs import logs
from jobs.config_restore import RestoreJobConfig
from restore_core.checks import explain_exception
from restore_core.config import InputConfig
from restore_core.errors import UserError
from restore_core.io import lease, locations
from restore_core.io import shards as shard_io
from restore_core.io.locations import Location

# ----------------------------------------------------------------------------- locations


def test_same_folder_spelled_many_ways_is_one_location(tmp_path: Path) -> None:
    real = tmp_path / "a" / "b"
    real.mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real)
    spellings = [str(real), f"file://{real}", f"{real}/", f"{tmp_path}/a/b/../b", str(link), f"{link}//"]
    keys = {locations.location_key(s) for s in spellings}
    assert len(keys) == 1, keys
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert locations.location_key("a/b/../b") in keys
    finally:
        os.chdir(cwd)
    assert locations.location_key("s3://bkt/p") == locations.location_key("s3a://bkt//p/")
    assert locations.location_key("s3://bkt/p") != locations.location_key("gs://bkt/p")


@pytest.mark.parametrize(
    ("read", "write", "message"),
    [
        ("{d}/in", "file://{d}/in/", "same folder"),
        ("{d}/in", "{d}/in/out", "inside input.path"),
        ("{d}/in", "{d}/in/./x/../out", "inside input.path"),
        ("{d}/work/in", "{d}/work", "inside output.path"),
        ("{d}/link_to_in", "{d}/in", "same folder"),
        ("s3://bkt/data", "s3://bkt/data/out/", "inside input.path"),
        ("s3://bkt/data/in", "s3a://bkt/data", "inside output.path"),
    ],
)
def test_output_and_input_kept_apart(tmp_path: Path, read: str, write: str, message: str) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "link_to_in").symlink_to(tmp_path / "in")
    read, write = read.format(d=tmp_path), write.format(d=tmp_path)
    with pytest.raises(UserError, match=message):
        locations.check_apart([("input.path", read)], [("output.path", write)])


def test_neighbours_are_not_nested(tmp_path: Path) -> None:
    # /x/in and /x/in2 share a prefix but neither holds the other
    locations.check_apart([("input.path", f"{tmp_path}/in")], [("output.path", f"{tmp_path}/in2")])
    locations.check_apart([("input.path", "s3://bkt/in")], [("output.path", "s3://bkt/in-restored")])
    locations.check_apart([("input.path", "s3://a/in")], [("output.path", "s3://b/in")])


@pytest.mark.parametrize(
    "url",
    [
        "s3://AKIAIMRESTOREFAKE0042:zQ9fakeSecret@bucket/in",
        "s3://zQ9fakeSecret@bucket/in",
        "https://bucket.example/in.parquet?X-Amz-Credential=AKIAIMRESTOREFAKE0042&X-Amz-Signature=ab",
    ],
)
def test_credentials_in_urls_are_refused_without_echoing_them(url: str) -> None:
    with pytest.raises(UserError) as info:
        locations.check_apart([("input.path", url)], [("output.path", "/tmp/out")])
    assert "zQ9fakeSecret" not in str(info.value) and "AKIAIMRESTOREFAKE0042" not in str(info.value)
    assert "input.path" in str(info.value) and "storage_options" in str(info.value)


# ----------------------------------------------------------------------------- lease


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


_HOLDER = """
import sys, time, fsspec
from restore_core.io import lease
held = lease.Lease(fsspec.filesystem("file"), sys.argv[1], "OUT", "restore")
held.acquire()
print(held.doc["run_id"], flush=True)
time.sleep(120)
"""


def test_second_run_is_refused_naming_the_first_and_a_killed_ones_lease_is_taken_over(tmp_path: Path, caplog) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout is not None
        run_id = holder.stdout.readline().strip()
        doc = json.loads((tmp_path / lease.LEASE_FILE).read_text())
        assert {doc["host"], doc["pid"], doc["job"]} == {socket.gethostname(), holder.pid, "restore"}
        fs = fsspec.filesystem("file")
        with pytest.raises(UserError, match="in use by another run") as info:
            lease.Lease(fs, str(tmp_path), str(tmp_path), "quality").acquire()
        line = str(info.value)
        assert f"pid {holder.pid}" in line and socket.gethostname() in line and run_id[:8] in line
        assert "\n" not in line
    finally:
        holder.kill()  # SIGKILL: no chance to give the lease back
        holder.wait()
    assert (tmp_path / lease.LEASE_FILE).exists()
    with caplog.at_level(logging.WARNING, logger="restore_core.io.lease"):
        with lease.held(fs, str(tmp_path), "OUT", "restore") as mine:
            assert json.loads((tmp_path / lease.LEASE_FILE).read_text())["run_id"] == mine.doc["run_id"]
    assert f"its process {holder.pid} on this host is gone" in caplog.text
    assert not (tmp_path / lease.LEASE_FILE).exists()  # given back at the end


@pytest.mark.parametrize("why", ["dead pid", "old heartbeat", "garbage", "this process"])
def test_stale_lease_is_taken_over_with_a_warning(tmp_path: Path, why: str, caplog) -> None:
    path = tmp_path / lease.LEASE_FILE
    doc = {"job": "restore", "run_id": "f" * 32, "owner": "x", "started_utc": "2026-01-01T00:00:00Z"}
    if why == "dead pid":
        doc |= {"host": socket.gethostname(), "pid": _dead_pid(), "heartbeat": time.time()}
    elif why == "this process":  # an earlier run here could not delete it (storage outage)
        doc |= {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}
    elif why == "old heartbeat":
        doc |= {"host": "another-host", "pid": 1, "heartbeat": time.time() - lease.STALE_AFTER_S - 5}
    path.write_text("{half a lease" if why == "garbage" else json.dumps(doc))
    fs = fsspec.filesystem("file")
    with caplog.at_level(logging.WARNING, logger="restore_core.io.lease"):
        with lease.held(fs, str(tmp_path), "OUT", "restore") as mine:
            assert json.loads(path.read_text())["run_id"] == mine.doc["run_id"]
    assert "taking over the lease on OUT" in caplog.text


def test_live_lease_on_another_host_holds_until_its_heartbeat_is_old(tmp_path: Path) -> None:
    doc = {"job": "restore", "run_id": "a" * 32, "host": "other", "pid": 1, "heartbeat": time.time() - 10}
    (tmp_path / lease.LEASE_FILE).write_text(json.dumps(doc))
    with pytest.raises(UserError, match="host other pid 1"):
        lease.Lease(fsspec.filesystem("file"), str(tmp_path), "OUT", "restore").acquire()


def test_heartbeat_renews_the_lease(tmp_path: Path) -> None:
    one = lease.Lease(fsspec.filesystem("file"), str(tmp_path), "OUT", "restore", heartbeat_s=0.05)
    with one:
        first = json.loads((tmp_path / lease.LEASE_FILE).read_text())["heartbeat"]
        time.sleep(0.5)
        later = json.loads((tmp_path / lease.LEASE_FILE).read_text())["heartbeat"]
    assert later > first


# ----------------------------------------------------------------------------- fingerprint and plans


def test_every_result_setting_is_in_the_fingerprint_and_nothing_else() -> None:
    import dataclasses

    cfg = RestoreJobConfig(input=InputConfig(path="/data/in", storage_options={"key": "K", "secret": "S"}))
    doc = shard_io.settings_document(dataclasses.asdict(cfg), {"bases": "h1"})
    assert {"fit.method", "fit.max_iter", "fit.stride", "masks.rule", "decode.max_pixels", "sr.scale"} <= set(doc)
    assert {"output.rows_per_shard", "input.limit", "input.format", "artifact.bases"} <= set(doc)
    assert not any("storage_options" in k or k.startswith(("ray.", "device", "output.path")) for k in doc)
    assert "S" not in json.dumps(doc)
    # a key added later (a new model section, say) is covered without naming it anywhere
    extra = {**dataclasses.asdict(cfg), "denoiser": {"model": "/m", "steps": 3}}
    assert "denoiser.steps" in shard_io.settings_document(extra, {})
    base = shard_io.settings_fingerprint(doc)
    for change in ({"fit": {"method": "median"}}, {"fit": {"prior": 0.1}}, {"masks": {"rule": "saturated"}}):
        section, values = next(iter(change.items()))
        other = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)})
        assert (
            shard_io.settings_fingerprint(shard_io.settings_document(dataclasses.asdict(other), {"bases": "h1"}))
            != base
        )
    assert shard_io.settings_fingerprint(shard_io.settings_document(dataclasses.asdict(cfg), {"bases": "h2"})) != base
    moved = dataclasses.replace(cfg, ray=dataclasses.replace(cfg.ray, num_actors=7), device="cpu")
    assert shard_io.settings_fingerprint(shard_io.settings_document(dataclasses.asdict(moved), {"bases": "h1"})) == base


def test_grown_input_keeps_old_shards_and_appends_new_ones() -> None:
    S = shard_io.Shard
    before = [S(0, ("/in/a.parquet",), 0, 4), S(1, ("/in/c.parquet",), 0, 5)]
    now = [S(0, ("/in/a.parquet",), 0, 4), S(1, ("/in/b.parquet",), 0, 3), S(2, ("/in/c.parquet",), 0, 5)]
    merged = shard_io.merge_plans(before, now, {0, 1}, "parquet", 256)
    assert merged == [*before, S(2, ("/in/b.parquet",), 0, 3)]
    with pytest.raises(UserError, match="changed since"):
        shard_io.merge_plans(before, [S(0, ("/in/a.parquet",), 0, 6)], {0}, "parquet", 256)
    # a file that is gone: its committed shard stays, an uncommitted one drops out
    assert shard_io.merge_plans(before, now[:1], {1}, "parquet", 256) == before
    assert shard_io.merge_plans(before, now[:1], set(), "parquet", 256) == before[:1]
    imgs = [S(0, ("/r/a.png", "/r/c.png"), 0, 2)]
    got = shard_io.merge_plans(imgs, [S(0, ("/r/a.png", "/r/b.png", "/r/c.png", "/r/d.png"), 0, 4)], {0}, "images", 1)
    assert got == [imgs[0], S(1, ("/r/b.png",), 0, 1), S(2, ("/r/d.png",), 0, 1)]


# ----------------------------------------------------------------------------- overwrite deletes only ours


def _own_folder(root: Path, n: int = 2) -> dict:
    shards = [shard_io.Shard(i, (f"/in/{i}.parquet",), 0, 1) for i in range(n)]
    doc = {"fingerprint": "x", **shard_io.plan_document(shards, InputConfig(path="/in"), 0)}
    (root / "data").mkdir(parents=True)
    for s in shards:
        (root / "data" / s.name).write_bytes(b"part")
    (root / "_tmp" / "part-00001").mkdir(parents=True)
    (root / "_tmp" / "part-00001" / ("ab" * 16 + ".parquet")).write_bytes(b"frag")
    (root / shard_io.PLAN_FILE).write_text(json.dumps(doc))
    (root / shard_io.MANIFEST_FILE).write_text("{}")
    return doc


def test_overwrite_deletes_what_restore_wrote_and_nothing_beside_it(tmp_path: Path) -> None:
    doc = _own_folder(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "bases").mkdir()
    (tmp_path / "bases" / "bases.npy").write_bytes(b"x")
    out = shard_io.OutputFolder(Location(str(tmp_path)))
    assert out.clear(doc) == 5
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == ["bases", "bases/bases.npy", "notes.txt"]


@pytest.mark.parametrize(
    "intruder",
    ["data/part-00007.parquet", "data/photo.png", "data/sub/part-00000.parquet", "_tmp/mine.csv", "data/README"],
)
def test_overwrite_refuses_a_folder_holding_anything_else(tmp_path: Path, intruder: str) -> None:
    doc = _own_folder(tmp_path)
    (tmp_path / intruder).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / intruder).write_bytes(b"user data")
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(UserError, match="restore did not write") as info:
        shard_io.OutputFolder(Location(str(tmp_path))).clear(doc)
    assert intruder in str(info.value) and "\n" not in str(info.value)
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing deleted


def test_data_folder_without_our_plan_is_never_ours(tmp_path: Path) -> None:
    # An input dataset laid out like restore output (data/part-00000.parquet) but no _plan.json
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "part-00000.parquet").write_bytes(b"their data")
    out = shard_io.OutputFolder(Location(str(tmp_path)))
    assert out.foreign_files(None) == ["data/part-00000.parquet"]
    with pytest.raises(UserError, match=r"no _plan\.json"):
        out.clear(None)
    assert (tmp_path / "data" / "part-00000.parquet").read_bytes() == b"their data"


# ----------------------------------------------------------------------------- logs and errors


def test_redact_hides_registered_values_and_credential_shapes() -> None:
    logs.register_secrets(
        {"input": {"storage_options": {"key": "MyKeyValue123", "client_kwargs": {"x": "Tok3nValue"}}}}
    )
    lines = [
        "using key MyKeyValue123 and Tok3nValue",
        "Credential=AKIAIMRESTOREFAKE0042/20260101/us-east-1/s3/aws4_request",
        "headers {'X-Amz-Security-Token': 'FQoGZXIvYXdzEJr', 'aws_secret_access_key': 'wJalrXUtnFEMI'}",
        "s3://someuser:somepass@bucket/x",
    ]
    for line in lines:
        out = logs.redact(line)
        for secret in (
            "MyKeyValue123",
            "Tok3nValue",
            "AKIAIMRESTOREFAKE0042",
            "FQoGZXIvYXdzEJr",
            "wJalrXUtnFEMI",
            "somepass",
        ):
            assert secret not in out, out
    assert logs.redact("rows ok: 12, endpoint http://127.0.0.1:5000") == "rows ok: 12, endpoint http://127.0.0.1:5000"


def test_storage_loggers_never_go_below_warning() -> None:
    root = logging.getLogger()
    saved = (root.level, list(root.handlers), logging.getLogger("botocore").level)
    try:
        logs.configure(logging.DEBUG)
        for name in ("botocore", "botocore.auth", "s3fs", "urllib3", "aiobotocore"):
            assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
        assert logging.getLogger("jobs.restore").isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        logging.getLogger("botocore").setLevel(saved[2])


def test_bad_log_level_is_one_line() -> None:
    with pytest.raises(UserError, match="IMRESTORE_LOG"):
        logs.level_from_env("LOUD")


def test_full_disk_is_explained_in_one_line() -> None:
    try:
        with open("/dev/full", "wb") as f:  # a real ENOSPC from the kernel
            f.write(b"x" * 65536)
            f.flush()
    except OSError as exc:
        err = exc
    assert err.errno == errno.ENOSPC
    try:  # as it reaches the driver: wrapped in another error
        raise RuntimeError("task failed") from err
    except RuntimeError as wrapped:
        line = explain_exception(wrapped)
    assert line is not None and "no space left" in line and "rerun" in line


def test_refused_s3_credentials_are_explained() -> None:
    line = explain_exception(PermissionError("The AWS Access Key Id you provided does not exist in our records."))
    assert line is not None and "credentials were refused" in line
    line = explain_exception(PermissionError("Forbidden"))
    assert line is not None and "refused access" in line
