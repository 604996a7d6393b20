"""The usual first mistakes end with one line saying what to do, a non-zero exit code and no
traceback. Each test runs ``python -m jobs ...`` in a subprocess, as a user would."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imrestore_data import demo_data
from restore_core import codec
from restore_core.bases import Bases, BasesMeta
from restore_core.io.artifacts import save_bases
from restore_core.io.locations import Location

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {**os.environ, "IMRESTORE_LOG": "WARNING"}
    base.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "jobs", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env or base,
        check=False,
        timeout=240,
    )


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The run failed with exactly one ``error:`` line, the last one, and no traceback."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def gray_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four 64x64 gray images in one Parquet file."""
    folder = tmp_path_factory.mktemp("gray")
    images, kinds = demo_data.generate(4, 64, rgb=False, seed=3)
    demo_data.write_shards(demo_data.to_table([f"g{i}" for i in range(4)], images, kinds), Location(str(folder)), 1)
    return folder


def _bases(folder: Path, meta: BasesMeta) -> Path:
    rng = np.random.default_rng(0)
    save_bases(Bases(rng.random((meta.k, meta.n_pixels), dtype=np.float32), meta), Location(str(folder)))
    return folder


def test_input_path_that_does_not_exist(tmp_path: Path) -> None:
    proc = _cli(
        "restore",
        "--set", f"input.path={tmp_path / 'no-such-folder'}",
        "--set", f"output.path={tmp_path / 'out'}",
        "--set", "fit.method=median",
    )  # fmt: skip
    line = _one_error_line(proc)
    assert "input path does not exist" in line and "input.path" in line


def test_no_bases_artifact_yet(tmp_path: Path, gray_dataset: Path) -> None:
    proc = _cli(
        "restore",
        "--set", f"input.path={gray_dataset}",
        "--set", f"output.path={tmp_path / 'out'}",
        "--set", f"bases={tmp_path / 'bases'}",
        "--set", "fit.method=nmf",
    )  # fmt: skip
    line = _one_error_line(proc)
    assert "no bases artifact" in line and "learn-bases" in line


def _restore_with(tmp_path: Path, dataset: Path, bases: Path) -> subprocess.CompletedProcess[str]:
    return _cli(
        "restore",
        "--set", f"input.path={dataset}",
        "--set", f"output.path={tmp_path / 'out'}",
        "--set", f"bases={bases}",
        "--set", "fit.method=nmf",
    )  # fmt: skip


def test_global_bases_for_another_size(tmp_path: Path, gray_dataset: Path) -> None:
    meta = BasesMeta(mode="global", k=4, n_pixels=100 * 100, channels=1, image_shape=(100, 100))
    proc = _restore_with(tmp_path, gray_dataset, _bases(tmp_path / "bases", meta))
    line = _one_error_line(proc)
    assert "made for 100x100 images" in line and "64x64" in line and "nmf.mode: patch" in line
    assert not (tmp_path / "out" / "data").exists() or not list((tmp_path / "out" / "data").iterdir())


def test_rgb_bases_on_gray_images(tmp_path: Path, gray_dataset: Path) -> None:
    meta = BasesMeta(mode="patch", k=4, n_pixels=8 * 8 * 3, channels=3, patch_size=8)
    proc = _restore_with(tmp_path, gray_dataset, _bases(tmp_path / "bases", meta))
    line = _one_error_line(proc)
    assert "are RGB" in line and "gray" in line and "nmf.channels: gray" in line


def test_unknown_config_key() -> None:
    line = _one_error_line(_cli("restore", "--set", "fit.methd=nmf"))
    assert line.startswith("error: unknown config key 'fit.methd'") and "method" in line


def test_unknown_key_in_a_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("input:\n  paht: data/\n", encoding="utf-8")
    line = _one_error_line(_cli("learn-bases", "--config", str(cfg)))
    assert "unknown config key 'input.paht'" in line


def test_value_of_the_wrong_type() -> None:
    line = _one_error_line(_cli("restore", "--set", "fit.max_iter=many"))
    assert line == "error: config key 'fit.max_iter' must be an integer, got 'many'"


@pytest.mark.slow  # a Ray start and a job (20-125 s in CI): run with -m slow
def test_gpu_asked_for_but_none_present(tmp_path: Path, gray_dataset: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present here")
    proc = _cli(
        "learn-bases",
        "--set", f"input.path={gray_dataset}",
        "--set", f"output={tmp_path / 'bases'}",
        "--set", "device=cuda",
    )  # fmt: skip
    line = _one_error_line(proc)
    assert "cuda" in line and re.search(r"no (CUDA )?GPU", line) and "device: auto" in line
    assert not (tmp_path / "bases").exists()


# ----------------------------------------------------------------------------- S3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_bucket_with_data() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 holding s3://demo/data/part-0.parquet; yields the endpoint."""
    import s3fs
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=endpoint)
        fs.mkdir("demo")
        img = np.full((16, 16), 0.5, np.float32)
        table = pa.table({"id": ["a"], "image": [codec.encode_png(img)]})
        with fs.open("demo/data/part-0.parquet", "wb") as f:
            pq.write_table(table, f)
        yield endpoint
    finally:
        server.stop()


@pytest.mark.integration
def test_s3_credentials_missing(tmp_path: Path, s3_bucket_with_data: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "RAY_ADDRESS"}
    env.update(
        IMRESTORE_LOG="WARNING",
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),  # no ~/.aws credentials either
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",  # never ask the instance metadata service (not loopback)
    )
    proc = _cli(
        "restore",
        "--set", "input.path=s3://demo/data",
        "--set", f"input.storage_options={{endpoint_url: '{s3_bucket_with_data}'}}",
        "--set", f"output.path={tmp_path / 'out'}",
        "--set", "fit.method=median",
        env=env,
    )  # fmt: skip
    line = _one_error_line(proc)
    assert "no S3 credentials" in line
    assert "AWS_ACCESS_KEY_ID" in line and "storage_options" in line


# ----------------------------------------------------------------------------- the pure checks


def test_check_bases_fit_names_size_and_channels() -> None:
    from restore_core.checks import check_bases_fit
    from restore_core.errors import ArtifactError

    global_100 = BasesMeta(mode="global", k=4, n_pixels=100 * 100, channels=1, image_shape=(100, 100))
    with pytest.raises(ArtifactError, match=r"made for 100x100 images .* 64x64 gray"):
        check_bases_fit(global_100, (64, 64))
    check_bases_fit(global_100, (100, 100))
    check_bases_fit(global_100, (100, 100, 3))  # gray bases restore colour channel by channel
    rgb_patch = BasesMeta(mode="patch", k=4, n_pixels=8 * 8 * 3, channels=3, patch_size=8)
    with pytest.raises(ArtifactError, match=r"are RGB .* 64x48 gray.*nmf.channels: gray"):
        check_bases_fit(rgb_patch, (48, 64))
    check_bases_fit(rgb_patch, (48, 64, 3))
    with pytest.raises(ArtifactError, match="smaller than one patch"):
        check_bases_fit(rgb_patch, (4, 64, 3))


def test_check_gpus_and_explain_exception() -> None:
    from restore_core.checks import check_gpus, explain_exception
    from restore_core.errors import UserError

    check_gpus(0.0, 0.0)
    check_gpus(0.5, 1.0)
    with pytest.raises(UserError, match=r"ray.num_gpus_per_actor is 1 but the Ray cluster has no GPU"):
        check_gpus(1.0, 0.0)
    from botocore.exceptions import NoCredentialsError

    try:
        try:
            raise NoCredentialsError()
        except NoCredentialsError as inner:
            raise RuntimeError("listing failed") from inner
    except RuntimeError as outer:
        message = explain_exception(outer)
    assert message is not None and message.startswith("no S3 credentials found") and "\n" not in message
    assert explain_exception(ValueError("a bug")) is None


def test_no_refiner_yet_or_one_without_its_bases(tmp_path: Path, gray_dataset: Path) -> None:
    from restore_core.io.refiners import refiner_artifact, save_refiner
    from restore_core.refiner import RefinerSpec, build_refiner

    proc = _cli(
        "restore",
        "--set", f"input.path={gray_dataset}",
        "--set", f"output.path={tmp_path / 'out'}",
        "--set", f"refiner={tmp_path / 'refiner'}",
    )  # fmt: skip
    line = _one_error_line(proc)
    assert "no refiner at" in line and "train-inpaint" in line
    spec = RefinerSpec(width=4, levels=1, use_bases=True)
    save_refiner(
        refiner_artifact(build_refiner(spec), spec, bases_fingerprint="0123"), Location(str(tmp_path / "refiner"))
    )
    proc = _cli(
        "restore",
        "--set", f"input.path={gray_dataset}",
        "--set", f"output.path={tmp_path / 'out'}",
        "--set", f"refiner={tmp_path / 'refiner'}",
        "--set", "bases=",
    )  # fmt: skip
    line = _one_error_line(proc)
    assert "takes NMF bases as an input" in line and "'bases'" in line


def test_train_inpaint_input_path_that_does_not_exist(tmp_path: Path) -> None:
    proc = _cli(
        "train-inpaint",
        "--set", f"input.path={tmp_path / 'no-such-folder'}",
        "--set", f"output={tmp_path / 'refiner'}",
    )  # fmt: skip
    line = _one_error_line(proc)
    assert "input path does not exist" in line and "input.path" in line


# ----------------------------------------------------------------------------- issue 16


@pytest.mark.slow  # a Ray start and a job (20-125 s in CI): run with -m slow
def test_learn_bases_refuses_images_with_no_signal(tmp_path: Path) -> None:
    """All-black images would train k copies of nothing: refused before training, no artifact."""
    data = tmp_path / "black"
    data.mkdir()
    blobs = [codec.encode_png(np.zeros((32, 32), np.float32)) for _ in range(4)]
    pq.write_table(pa.table({"id": [f"b{i}" for i in range(4)], "image": blobs}), data / "part-0.parquet")
    proc = _cli(
        "learn-bases",
        "--set", f"input.path={data}", "--set", f"output={tmp_path / 'bases'}",
        "--set", "nmf.k=4", "--set", "nmf.n_samples=200", "--set", "ray.num_cpus=2",
    )  # fmt: skip
    line = _one_error_line(proc)
    assert "no signal" in line and "every sampled pixel is 0" in line
    assert not (tmp_path / "bases").exists()


@pytest.mark.parametrize(
    ("setting", "shown"),
    [
        ("nmf.max_iter=0", "config key 'nmf.max_iter' is 0, must be an integer in [1, inf)"),
        ("nmf.k=100000", "nmf.k=100000 is more bases than the nmf.n_samples=20000 training rows"),
        ("nmf.l1=-1", "config key 'nmf.l1' is -1.0, must be a number in [0, inf)"),
    ],
)
def test_learn_bases_settings_that_do_not_train(
    tmp_path: Path, gray_dataset: Path, setting: str, shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before Ray starts (in-process: the CLI's main, no subprocess needed)."""
    from jobs.cli import main

    code = main(["learn-bases", "--set", f"input.path={gray_dataset}", "--set", f"output={tmp_path / 'bases'}",
                 "--set", setting])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and shown in err[0]
    assert not (tmp_path / "bases").exists()


def test_training_rows_too_few_or_flat_are_refused() -> None:
    from jobs.learn_bases import check_training_rows
    from restore_core.errors import UserError

    check_training_rows(np.random.default_rng(0).random((8, 4), dtype=np.float32), 4, "data/")
    with pytest.raises(UserError, match=r"only 3 training rows from data/ for nmf.k=5"):
        check_training_rows(np.random.default_rng(0).random((3, 4), dtype=np.float32), 5, "data/")
    with pytest.raises(UserError, match=r"no signal: every sampled pixel is 0.5"):
        check_training_rows(np.full((8, 4), 0.5, np.float32), 4, "data/")


def test_benchmark_k_study_with_more_bases_than_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from jobs.cli import main

    code = main(["benchmark", "--set", "k_values=[8, 100000]", "--set", f"output={tmp_path / 'b'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "k=100000, more bases than the nmf.n_samples=20000" in err[0]
    assert not (tmp_path / "b").exists()
