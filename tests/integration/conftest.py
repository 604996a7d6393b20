"""Shared fixtures for integration tests: a small Parquet dataset with bad rows, bases, a local
Ray, and moto's S3 server on 127.0.0.1. Everything is real; only loopback addresses are used."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imrestore_data import synth
from restore_core import masks, nmf, sampling
from restore_core.bases import Bases, BasesMeta, data_fingerprint
from restore_core.io.artifacts import save_bases
from restore_core.io.locations import Location
from tests.conftest import png_bytes

#: ids of the rows that cannot be decoded, and what is wrong with them.
BAD_IDS = {"s1-corrupt": "random bytes", "s2-empty": "zero bytes", "s2-truncated": "PNG cut in half"}
N_SHARDS = 3
GOOD_PER_SHARD = 4
IMAGE_SIZE = 24
PATCH = 6


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _damaged_images(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for img in synth.shapes(n, IMAGE_SIZE, seed=seed):
        damaged, _ = masks.apply_dead_pixels(img, 0.3, rng)
        out.append(np.rint(damaged * 255).astype(np.uint8))
    return out


def make_dataset_tables() -> list[pa.Table]:
    """Three shards of ids + PNG bytes: good damaged images, and (in shards 1 and 2) a corrupt,
    an empty and a truncated image. Shard 0 has a pass-through column ``label``."""
    tables = []
    for s in range(N_SHARDS):
        imgs = _damaged_images(GOOD_PER_SHARD, seed=100 + s)
        ids = [f"s{s}-{i}" for i in range(GOOD_PER_SHARD)]
        blobs = [png_bytes(im) for im in imgs]
        if s == 1:
            ids.insert(2, "s1-corrupt")
            blobs.insert(2, np.random.default_rng(7).integers(0, 256, 300, dtype=np.uint8).tobytes())
        if s == 2:
            ids += ["s2-empty", "s2-truncated"]
            blobs += [b"", blobs[0][: len(blobs[0]) // 2]]
        tables.append(
            pa.table({"id": pa.array(ids, pa.string()), "image": pa.array(blobs, pa.binary()), "label": [s] * len(ids)})
        )
    return tables


def write_dataset(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for s, table in enumerate(make_dataset_tables()):
        # Small row groups, so that row-range shards read part of a file.
        pq.write_table(table, folder / f"part-{s}.parquet", row_group_size=2)
    return folder


def make_bases(k: int = 12) -> Bases:
    """Patch bases learned (quickly) from clean synthetic shapes."""
    rng = np.random.default_rng(0)
    clean = synth.shapes(16, IMAGE_SIZE, seed=1)
    X = np.concatenate([sampling.sample_patches(im, PATCH, 1, 40, rng) for im in clean])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nmf.ConvergenceWarning)  # 30 epochs are plenty for the test
        result = nmf.learn_bases(X, k, max_iter=30, seed=0, device="cpu")
    meta = BasesMeta(
        mode="patch",
        k=k,
        n_pixels=PATCH * PATCH,
        channels=1,
        patch_size=PATCH,
        n_samples=int(X.shape[0]),
        data_fingerprint=data_fingerprint(X),
    )
    return Bases(H=result.H_.astype(np.float32), meta=meta)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    path: Path
    bases: Path
    ids: list[str]


@pytest.fixture(scope="session")
def restore_dataset(tmp_path_factory: pytest.TempPathFactory) -> DatasetInfo:
    root = tmp_path_factory.mktemp("restore_data")
    data = write_dataset(root / "input")
    save_bases(make_bases(), Location(str(root / "bases")))
    ids = [i for t in make_dataset_tables() for i in t.column("id").to_pylist()]
    return DatasetInfo(path=data, bases=root / "bases", ids=ids)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One embedded Ray (2 CPUs) for a whole test module; shut down after it."""
    import ray

    from jobs import ray_utils
    from jobs.config_ray import RayConfig

    if ray.is_initialized():
        ray.shutdown()
    ray_utils.init_ray(RayConfig(num_cpus=2))
    try:
        yield
    finally:
        ray.shutdown()


@dataclasses.dataclass(frozen=True)
class S3Server:
    endpoint: str
    storage_options: dict[str, object]


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[S3Server]:
    """moto's S3 *server* on 127.0.0.1 (a real HTTP endpoint; s3fs talks to it over the socket)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    # Fake credentials for the fake server; never real ones. Env vars reach Ray workers too.
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(
        {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    )
    try:
        yield S3Server(
            endpoint=endpoint,
            storage_options={
                "key": "testing",
                "secret": "testing",
                "client_kwargs": {"endpoint_url": endpoint},
                "use_listings_cache": False,
            },
        )
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


RAY = str(Path(sys.executable).parent / "ray")


@dataclasses.dataclass(frozen=True)
class RayHead:
    address: str  # the job API, http://127.0.0.1:<dashboard port>
    env: dict[str, str]  # what `ray job ...` commands need (token authentication, no RAY_ADDRESS)


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    """``ray start --head`` on 127.0.0.1 with 2 CPUs, token authentication and free ports, for
    ``ray job submit``; stopped after the module. The token is in ~/.ray/auth_token."""
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    dash = free_port()
    # A private temp dir: this cluster's address file must not attract other ray.init() calls.
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    ports = {
        "--port": free_port(),
        "--dashboard-port": dash,
        "--ray-client-server-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--metrics-export-port": free_port(),
        "--runtime-env-agent-port": free_port(),
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
    }
    head = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            "--num-cpus=2",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
            *(f"{k}={v}" for k, v in ports.items()),
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 180
        while True:  # wait for the job API
            assert head.poll() is None, head.stderr.read().decode()[-2000:] if head.stderr else "ray start died"
            probe = subprocess.run(
                [RAY, "job", "list", "--address", address],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if probe.returncode == 0:
                break
            assert time.monotonic() < deadline, probe.stderr[-2000:]
            time.sleep(2)
        yield RayHead(address=address, env=env)
    finally:
        _stop_group(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_group(head: subprocess.Popen) -> None:
    """Stop ``ray start --block`` and every process of its session (GCS, raylet, dashboard,
    workers: the test cluster's data is thrown away): SIGTERM, then SIGKILL for what is left after
    a few seconds. A graceful stop waited ~30 s on the dashboard's processes, on every CI run."""
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        head.poll()  # reaps it once dead (a zombie still counts as a member of its group)
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:  # the whole group is gone
            return
        time.sleep(0.2)
    raise AssertionError("the test's Ray head left processes that SIGKILL did not end")
