"""Faults during a restore job on a real local Ray: nothing is lost, nothing is doubled.

- A Ray worker running the Restorer (an actor of the pool) is SIGKILLed mid-job: Ray Data
  restarts the actor and retries its batch (actor pools default to ``max_restarts=-1`` and
  ``max_task_retries=-1`` in Ray 2.60), and the job ends with every id exactly once.
- The S3 endpoint goes away for a while (a fault-injecting TCP proxy on 127.0.0.1 in front of
  moto's server drops every connection): the job either rides it out (botocore / s3fs retry
  with backoff) or fails with a clear error; either way no partial shard is ever committed,
  and a rerun completes the output with every id exactly once.

The driver-kill case (a rerun resumes without duplicates) is
``tests/integration/test_restore_job.py::test_resume_after_kill_is_identical_and_rerun_does_nothing``.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs

from jobs import restore
from jobs.config_restore import RestoreJobConfig
from restore_core.config import from_dict
from restore_core.io.artifacts import save_bases
from restore_core.io.locations import Location
from tests.integration.conftest import BAD_IDS, free_port, make_bases, make_dataset_tables

pytestmark = pytest.mark.integration


def _cfg(input_path: str, bases: str, out: str, storage_options: dict | None = None, **extra) -> RestoreJobConfig:
    so = storage_options or {}
    data: dict[str, Any] = {
        "input": {"path": input_path, "storage_options": so},
        "output": {"path": out, "storage_options": so, "rows_per_shard": 1},
        "bases": bases,
        "fit": {"method": "nmf", "max_iter": 50},  # these tests were sized on the nmf solver's pace
        "device": "cpu",
        "ray": {"batch_size": 1, "num_cpus": 2},
    }
    for key, value in extra.items():
        data[key].update(value)
    return from_dict(RestoreJobConfig, data)


def _check_every_id_once(table: pa.Table, want_ids: list[str]) -> None:
    ids = table.column("id").to_pylist()
    assert ids == want_ids  # every id, once, in input order
    status = dict(zip(ids, table.column("status").to_pylist(), strict=True))
    assert {i for i, s in status.items() if s == "error"} == set(BAD_IDS)


# ----------------------------------------------------------------------------- worker SIGKILL


def _restore_actor_pids() -> list[int]:
    """PIDs of Ray worker processes currently hosting the job's RestoreActor."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # Ray renames actor processes "ray::MapWorker(MapBatches(RestoreActor))" and the like.
        if cmd.startswith("ray::") and "RestoreActor" in cmd:
            pids.append(int(entry))
    return pids


@pytest.mark.slow  # two job runs with restarts: ~1-2 min on an idle 2-core machine
@pytest.mark.timeout(900)
def test_worker_sigkill_mid_job_every_id_once(local_ray, restore_dataset, tmp_path: Path):
    out = tmp_path / "out"
    cfg = _cfg(str(restore_dataset.path), str(restore_dataset.bases), str(out))
    killed: list[tuple[int, int]] = []  # (pid, shards committed when it was killed)

    def killer() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and len(killed) < 2:
            done = len(list((out / "data").glob("part-*.parquet"))) if (out / "data").exists() else 0
            pids = _restore_actor_pids()
            if done >= 1 + 4 * len(killed) and pids:  # once early, once later in the run
                os.kill(pids[0], signal.SIGKILL)
                killed.append((pids[0], done))
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    summary = restore.run(cfg)
    t.join(timeout=5)
    assert killed, "no RestoreActor process was found to kill"
    n = len(restore_dataset.ids)
    assert all(done < n for _, done in killed)  # each kill happened mid-job
    for pid, _ in killed:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    table = pa.concat_tables([pq.read_table(p) for p in sorted((out / "data").glob("part-*.parquet"))])
    _check_every_id_once(table, restore_dataset.ids)
    assert summary.values["rows"] == n and summary.values["rows error"] == len(BAD_IDS)
    assert not (out / "_tmp").exists()


# ----------------------------------------------------------------------------- S3 endpoint outage


class FaultyProxy:
    """A TCP proxy on 127.0.0.1 that forwards to ``target_port`` while up, and while down
    accepts then immediately resets every connection and cuts the open ones (an endpoint that
    has gone away mid-request)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.up = threading.Event()
        self.up.set()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self._stop = False
        self.refused = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            if not self.up.is_set():
                self.refused += 1
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                client.close()  # RST: "connection reset by peer"
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def go_down(self) -> None:
        self.up.clear()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def come_up(self) -> None:
        self.up.set()

    def close(self) -> None:
        self._stop = True
        self.go_down()
        self._sock.close()


@pytest.fixture
def proxied_s3(moto_s3) -> Iterator[tuple[FaultyProxy, dict, s3fs.S3FileSystem]]:
    port = int(moto_s3.endpoint.rsplit(":", 1)[1])
    proxy = FaultyProxy(port)
    opts = {**moto_s3.storage_options, "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{proxy.port}"}}
    direct = s3fs.S3FileSystem(**moto_s3.storage_options)  # the test's own view, around the proxy
    bucket = f"faults-{time.monotonic_ns()}"
    direct.mkdir(bucket)
    for s, table in enumerate(make_dataset_tables()):
        with direct.open(f"{bucket}/in/part-{s}.parquet", "wb") as f:
            pq.write_table(table, f, row_group_size=2)
    save_bases(make_bases(), Location(f"s3://{bucket}/bases", moto_s3.storage_options))
    try:
        yield proxy, {**opts, "bucket": bucket}, direct
    finally:
        proxy.close()


def _committed_parts(direct: s3fs.S3FileSystem, out: str) -> list[str]:
    direct.invalidate_cache()
    return sorted(p for p in direct.find(f"{out}/data") if p.rsplit("/", 1)[1].startswith("part-"))


def _outage_run(proxied_s3, local_ray, outage_s: float) -> dict:
    proxy, opts, direct = proxied_s3
    bucket = opts.pop("bucket")
    out = f"{bucket}/restored"
    cfg = _cfg(f"s3://{bucket}/in", f"s3://{bucket}/bases", f"s3://{out}", opts)
    want = [i for t in make_dataset_tables() for i in t.column("id").to_pylist()]
    events: dict = {}

    def saboteur() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not _committed_parts(direct, out):
            time.sleep(0.1)
        events["committed_before_outage"] = len(_committed_parts(direct, out))
        proxy.go_down()
        time.sleep(outage_s)
        proxy.come_up()
        events["outage_done"] = True

    t = threading.Thread(target=saboteur, daemon=True)
    t.start()
    try:
        summary = restore.run(cfg)
        events["outcome"] = f"finished: {summary.values['rows']} rows"
    except Exception as exc:  # a clear failure is an accepted outcome; checked below
        events["outcome"] = f"failed: {type(exc).__name__}: {exc}"
        events["error"] = exc
    t.join(timeout=outage_s + 60)
    proxy.come_up()
    assert events.get("outage_done"), "the outage never happened (no shard committed?)"
    assert events["committed_before_outage"] < len(want), "the outage came after the job's end"
    assert proxy.refused > 0, "no request hit the outage"

    # Whatever happened: every committed shard is whole (readable, its full row range).
    for p in _committed_parts(direct, out):
        with direct.open(p, "rb") as f:
            t_ = pq.read_table(f)
        assert t_.num_rows == 1, (p, t_.num_rows)  # rows_per_shard = 1
    if "error" in events:
        msg = str(events["error"])
        assert msg and len(msg.splitlines()[0]) > 10  # says something
        assert not direct.exists(f"{out}/_manifest.json")  # never a manifest for unfinished output
    # A rerun with the endpoint healthy completes the output: every id exactly once.
    again = restore.run(cfg)
    parts = _committed_parts(direct, out)
    tables = []
    for p in parts:
        with direct.open(p, "rb") as f:
            tables.append(pq.read_table(f))
    _check_every_id_once(pa.concat_tables(tables), want)
    assert again.values["rows"] == len(want)
    events["shards_redone_on_rerun"] = again.values["shards written now"]
    print(f"S3 outage {outage_s}s: {events['outcome']}; rerun wrote {events['shards_redone_on_rerun']} shards")
    return events


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_s3_short_outage_no_partial_shard_and_rerun_completes(local_ray, proxied_s3):
    _outage_run(proxied_s3, local_ray, outage_s=2.0)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_s3_long_outage_no_partial_shard_and_rerun_completes(local_ray, proxied_s3):
    _outage_run(proxied_s3, local_ray, outage_s=45.0)
