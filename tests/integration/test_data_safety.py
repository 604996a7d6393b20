"""Nothing a user owns is deleted, mixed or leaked (issue 16), through the real jobs.

Most refusals happen before Ray starts, so most of these tests are cheap; the ones that need a
finished run share the module's local Ray. Each says what today's main did instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs import learn_bases, quality, restore, restore_plan
from jobs.config_learn_bases import LearnBasesConfig
from jobs.config_quality import QualityJobConfig
from jobs.config_restore import RestoreJobConfig
from restore_core.config import from_dict
from restore_core.errors import UserError
from restore_core.io import lease
from restore_core.io.artifacts import save_bases
from restore_core.io.locations import Location
from tests.integration.conftest import free_port, make_bases, write_dataset
from tests.integration.test_secrets import FAKE_KEY, FAKE_SECRET, FAKE_TOKEN

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def make_cfg(input_path, out_path, /, bases="", **sections) -> RestoreJobConfig:
    data = {
        "input": {"path": str(input_path)},
        "output": {"path": str(out_path)},
        "bases": str(bases),
        "fit": {"method": "nmf" if bases else "median", "max_iter": 30},
        "device": "cpu",
        "ray": {"batch_size": 4, "num_cpus": 2},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value) if isinstance(value, dict) else data.__setitem__(key, value)
    return from_dict(RestoreJobConfig, data)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _ids(out: Path) -> list[str]:
    files = sorted((out / "data").glob("part-*.parquet"))
    return [i for f in files for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()]


def _cli(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        [sys.executable, "-m", "jobs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
        env={**base, "PYTHONPATH": str(REPO), **(env or {})},
    )


def _main(capfd: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m jobs ...`` in this process (no interpreter start-up): for errors found before Ray."""
    from jobs.cli import main

    capfd.readouterr()
    code = main(list(args))
    out = capfd.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


# ----------------------------------------------------------------------------- 1. overwrite


def test_overwrite_never_deletes_a_dataset_in_the_output_folder(restore_dataset, tmp_path):
    # main: --overwrite deleted <output>/data whatever it held (here: someone's own dataset), and
    # without --overwrite took their part-00000.parquet for a committed shard.
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    shutil.copy(restore_dataset.path / "part-0.parquet", out / "data" / "part-00000.parquet")
    (out / "data" / "notes.txt").write_text("mine")
    before = _tree(out)
    for overwrite in (True, False):
        with pytest.raises(UserError, match="restore did not write") as info:
            restore.run(make_cfg(restore_dataset.path, out, output={"overwrite": overwrite}))
        assert "\n" not in str(info.value)
        assert _tree(out) == before


def test_overwrite_refuses_foreign_objects_under_an_s3_prefix(moto_s3, restore_dataset):
    import s3fs

    fs = s3fs.S3FileSystem(**moto_s3.storage_options)
    fs.mkdir("keep-bucket")
    fs.pipe("keep-bucket/out/data/their-file.parquet", b"theirs")
    fs.pipe("keep-bucket/out/_plan.json", json.dumps({"fingerprint": "x", "shards": []}).encode())
    cfg = make_cfg(
        restore_dataset.path,
        "s3://keep-bucket/out",
        output={"overwrite": True, "storage_options": moto_s3.storage_options},
    )
    with pytest.raises(UserError, match=r"data/their-file\.parquet"):
        restore.run(cfg)
    assert fs.cat("keep-bucket/out/data/their-file.parquet") == b"theirs"


# ----------------------------------------------------------------------------- 2. input and output apart


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("input inside output", "inside output.path"),  # main: "nothing to do", 15 rows not restored
        ("output inside input", "inside input.path"),
        ("same via file://", "same folder"),
        ("same via ../ and slash", "same folder"),
        ("same via symlink", "same folder"),
        ("bases inside output", "inside output.path"),
    ],
)
def test_restore_keeps_input_and_output_apart(restore_dataset, tmp_path, layout, message):
    data = tmp_path / "work" / "data"
    shutil.copytree(restore_dataset.path, data)
    bases = ""
    inp, out = data, tmp_path / "out"
    if layout == "input inside output":
        out = tmp_path / "work"
    elif layout == "output inside input":
        out = data / "restored"
    elif layout == "same via file://":
        out = f"file://{data}"  # type: ignore[assignment]
    elif layout == "same via ../ and slash":
        out = f"{tmp_path}/work/x/../data/"  # type: ignore[assignment]
    elif layout == "same via symlink":
        (tmp_path / "link").symlink_to(data)
        out = tmp_path / "link"
    elif layout == "bases inside output":
        out = tmp_path / "work"
        inp = restore_dataset.path
        bases = str(tmp_path / "work" / "bases")
        shutil.copytree(restore_dataset.bases, bases)
    before = _tree(tmp_path / "work")
    with pytest.raises(UserError, match=message):
        restore.run(make_cfg(inp, out, bases=bases, output={"overwrite": True}))
    assert _tree(tmp_path / "work") == before


def test_quality_output_inside_its_input_is_refused(tmp_path):
    # main: the run's thumbnails and shards landed in the input; each night scored them again
    images = tmp_path / "images"
    images.mkdir()
    from tests.conftest import png_bytes

    for i in range(3):
        (images / f"{i}.png").write_bytes(png_bytes(np.full((8, 8), 40 * i + 10, np.uint8)))
    for out in (images / "quality", images, tmp_path):
        cfg = from_dict(QualityJobConfig, {"input": {"path": str(images), "format": "images"}, "output": str(out)})
        with pytest.raises(UserError, match=r"inside|same folder"):
            quality.run(cfg)
    assert sorted(p.name for p in images.iterdir()) == ["0.png", "1.png", "2.png"]


def test_quality_never_replaces_a_run_folder_it_did_not_write(restore_dataset, tmp_path):
    # main: a rerun "of that date" deleted <output>/run=<date>/ whatever it held
    theirs = tmp_path / "q" / "run=2024-06-30"
    theirs.mkdir(parents=True)
    (theirs / "notes.txt").write_text("mine")
    cfg = from_dict(
        QualityJobConfig,
        {"input": {"path": str(restore_dataset.path)}, "output": str(tmp_path / "q"), "run_date": "2024-06-30"},
    )
    with pytest.raises(UserError, match="not a quality run"):
        quality.run(cfg)
    assert (theirs / "notes.txt").read_text() == "mine"


def test_learn_bases_output_equal_to_its_input_is_refused(restore_dataset, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for inp, fmt, out in (
        (restore_dataset.path, "parquet", restore_dataset.path),
        (f"file://{restore_dataset.path}/", "parquet", restore_dataset.path),
        (images, "images", images / "bases"),  # its files inside an image folder: read back next time
    ):
        cfg = from_dict(LearnBasesConfig, {"input": {"path": str(inp), "format": fmt}, "output": str(out)})
        with pytest.raises(UserError, match=r"same folder|inside input\.path"):
            learn_bases.run(cfg)
    assert not (images / "bases").exists()


# ----------------------------------------------------------------------------- 8. resume fingerprint


@pytest.mark.timeout(900)
def test_resume_refuses_other_settings_and_restores_only_new_input(local_ray, restore_dataset, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    for name in ("part-0.parquet", "part-2.parquet"):
        shutil.copy(restore_dataset.path / name, inp / name)
    bases = tmp_path / "bases"
    shutil.copytree(restore_dataset.bases, bases)
    out = tmp_path / "out"
    first = restore.run(make_cfg(inp, out, bases=bases))
    assert first.values["shards written now"] == 2
    committed = _tree(out / "data")

    # main: each of these resumed silently and mixed shards of two configurations
    for change, named in (
        ({"fit": {"max_iter": 31}}, "fit.max_iter"),
        ({"fit": {"method": "median"}}, "fit.method"),
        ({"masks": {"rule": "saturated"}}, "masks.rule"),
        ({"decode": {"max_pixels": 10_000}}, "decode.max_pixels"),
    ):
        with pytest.raises(UserError, match=rf"{named}.*--overwrite"):
            restore.run(make_cfg(inp, out, bases=bases, **change))
    save_bases(make_bases(k=8), Location(str(bases)))  # same path, other content
    with pytest.raises(UserError, match=r"artifact\.bases.*--overwrite"):
        restore.run(make_cfg(inp, out, bases=bases))
    shutil.rmtree(bases)
    shutil.copytree(restore_dataset.bases, bases)
    assert _tree(out / "data") == committed

    # main: a grown input was "a different input" (refused); now only the new file is restored
    shutil.copy(restore_dataset.path / "part-1.parquet", inp / "part-1.parquet")
    grown = restore.run(make_cfg(f"file://{inp}/", out, bases=bases))  # spelled another way, too
    assert grown.values["shards written now"] == 1 and grown.values["rows"] == 15
    assert {k: v for k, v in _tree(out / "data").items() if k in committed} == committed
    ids = _ids(out)
    assert sorted(ids) == sorted(restore_dataset.ids) and len(ids) == len(set(ids))
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["rows"]["rows"] == 15


# ----------------------------------------------------------------------------- 11. one run at a time


def test_second_run_on_the_same_output_is_refused_and_a_dead_ones_lease_taken_over(restore_dataset, tmp_path, caplog):
    import fsspec

    out = tmp_path / "out"
    out.mkdir()
    args = ["restore", "--set", f"input.path={restore_dataset.path}", "--set", f"output.path={out}"]
    args += ["--set", "fit.method=median", "--set", "ray.num_cpus=2"]
    with lease.held(fsspec.filesystem("file"), str(out), str(out), "restore"):
        line = _one_line(_cli(*args))  # main: both runs went on; the second died in a RuntimeError
    assert "in use by another run" in line and f"pid {os.getpid()}" in line
    assert not (out / "_plan.json").exists()

    # a run SIGKILLed on this host left its lease behind: the next run takes it over
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    doc = {"job": "restore", "run_id": "d" * 32, "host": __import__("socket").gethostname(), "pid": proc.pid}
    (out / lease.LEASE_FILE).write_text(json.dumps({**doc, "heartbeat": time.time()}))
    (out / "data").mkdir()
    (out / "data" / "x.txt").write_text("x")
    # stop right after the lease: a foreign file makes the run refuse
    with contextlib.suppress(UserError), caplog.at_level(logging.WARNING, logger="restore_core.io.lease"):
        restore.run(make_cfg(restore_dataset.path, out))
    assert "taking over the lease" in caplog.text and "is gone" in caplog.text
    assert not (out / lease.LEASE_FILE).exists()  # given back when the run ended


# ----------------------------------------------------------------------------- 9 and 17. storage errors


@pytest.fixture(scope="module")
def strict_s3() -> Iterator[str]:
    """moto's S3 server (own process, 127.0.0.1) checking credentials: unknown keys are refused."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import socket

        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_wrong_s3_credentials_end_in_one_line(strict_s3, restore_dataset, tmp_path, capfd, monkeypatch):
    # main: a 50-line traceback (PermissionError: Forbidden)
    opts = f"{{key: AKIAWRONGKEY0000TEST, secret: wrongSecretValue0000, endpoint_url: '{strict_s3}'}}"
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("IMRESTORE_LOG", "WARNING")
    reading = _main(
        capfd, "restore", "--set", "input.path=s3://bucket/in", "--set", f"input.storage_options={opts}",
        "--set", f"output.path={tmp_path / 'out'}", "--set", "fit.method=median",
    )  # fmt: skip
    line = _one_line(reading)
    assert "credentials" in line and "storage_options" in line
    writing = _main(
        capfd, "restore", "--set", f"input.path={restore_dataset.path}", "--set", "output.path=s3://bucket/out",
        "--set", f"output.storage_options={opts}", "--set", "fit.method=median",
    )  # fmt: skip
    line = _one_line(writing)
    assert "output.path" in line and "credentials" in line
    for proc in (reading, writing):
        assert "wrongSecretValue0000" not in proc.stderr + proc.stdout


def _mount_tmpfs(folder: Path, options: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None or os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=False).returncode == 0


@contextlib.contextmanager
def mounted(folder: Path, options: str) -> Iterator[None]:
    if not _mount_tmpfs(folder, options):
        pytest.skip("needs root to mount a tmpfs")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.timeout(900)
def test_full_disk_ends_in_one_line_and_the_rerun_completes(local_ray, restore_dataset, tmp_path, capsys):
    # main: a traceback from the write task (OSError: [Errno 28] No space left on device)
    from jobs.cli import main

    disk = tmp_path / "disk"
    with mounted(disk, "size=64k"):
        filler = disk / "filler"
        with contextlib.suppress(OSError), open(filler, "wb") as f:
            f.write(b"\0" * (64 * 1024))
        os.truncate(filler, 64 * 1024 - 16 * 1024)  # 16 KiB left: the probe and plan fit, the shards do not
        out = disk / "out"
        args = ["restore", "--set", f"input.path={restore_dataset.path}", "--set", f"output.path={out}"]
        args += ["--set", "fit.method=median", "--set", "ray.batch_size=4"]
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and "no space left" in lines[0] and "Traceback" not in err, err
        assert not (out / "_lease.json").exists()
        filler.unlink()  # space freed: the rerun completes, every id once
        assert main(args) == 0
        ids = _ids(out)
        assert sorted(ids) == sorted(restore_dataset.ids) and len(ids) == len(set(ids))


@pytest.mark.parametrize("job", ["restore", "quality", "learn-bases", "benchmark"])
def test_read_only_output_is_found_before_any_work(restore_dataset, tmp_path, job, capfd):
    # main: restore probed already; quality scored everything, then a traceback; learn-bases
    # trained, then a traceback; benchmark a traceback
    ro = tmp_path / "ro"
    if os.geteuid() == 0:
        ctx = mounted(ro, "ro,size=64k")
    else:
        ro.mkdir()
        ro.chmod(0o555)
        ctx = contextlib.nullcontext()
    with ctx:
        key = {"restore": "output.path", "quality": "output", "learn-bases": "output", "benchmark": "output"}[job]
        args = [job, "--set", f"input.path={restore_dataset.path}", "--set", f"{key}={ro / 'out'}"]
        if job == "restore":
            args += ["--set", "fit.method=median"]
        if job == "benchmark":
            args += ["--set", "methods=[median]", "--set", "n_images=2"]
        proc = _main(capfd, *args)
        line = _one_line(proc)
        assert "cannot write" in line and ("read-only" in line or "permission" in line), line
        assert "epoch" not in proc.stderr and "restoring" not in proc.stderr  # refused before any work


@pytest.mark.parametrize(
    ("job", "args", "needle"),
    [
        ("quality", ["--set", "output={blocked}"], "cannot write to output"),  # main: traceback (makedirs)
        ("benchmark", ["--set", "output={blocked}"], "cannot write to output"),  # main: traceback
        ("learn-bases", ["--set", "output={blocked}"], "cannot write to output"),  # main: trained, then traceback
        ("benchmark", ["--set", "methods=[foo]"], "methods: unknown method 'foo'"),  # main: ValueError traceback
        ("benchmark", ["--set", "rates=[]"], "rates"),  # main: ValueError from matplotlib
        ("benchmark", ["--set", "k_values=[0]"], "k_values"),  # main: ValueError traceback
    ],
)
def test_quality_and_benchmark_errors_are_one_line(restore_dataset, tmp_path, job, args, needle, capfd):
    (tmp_path / "a-file").write_text("x")
    blocked = str(tmp_path / "a-file" / "out")  # a file where a folder must go: unwritable, even for root
    base = ["--set", f"input.path={restore_dataset.path}"]
    if job != "learn-bases":
        base += ["--set", f"output={tmp_path / 'out'}"]
    if job == "benchmark":
        base += ["--set", "methods=[median]", "--set", "n_images=2"]
    line = _one_line(_main(capfd, job, *base, *[a.format(blocked=blocked) for a in args]))
    assert needle in line, line


# ----------------------------------------------------------------------------- 3. credentials in logs

NEEDLES = [FAKE_KEY, FAKE_SECRET, FAKE_TOKEN, FAKE_KEY[4:16], FAKE_SECRET[:16], FAKE_TOKEN[:16]]


def _leaks(blob: bytes) -> list[str]:
    return [n for n in NEEDLES if n.encode() in blob]


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "level",
    # DEBUG is the level that leaked on main; the quieter ones cost a Ray start each (slow suite)
    ["DEBUG", pytest.param("INFO", marks=pytest.mark.slow), pytest.param("WARNING", marks=pytest.mark.slow)],
)
def test_no_credential_in_any_output_at_any_log_level(moto_s3, level, tmp_path):
    # main at DEBUG: botocore printed the access key id and the session token to stderr
    import s3fs

    opts = {"key": FAKE_KEY, "secret": FAKE_SECRET, "token": FAKE_TOKEN, "use_listings_cache": False}
    opts["client_kwargs"] = {"endpoint_url": moto_s3.endpoint}
    bucket = f"leak-{level.lower()}"
    fs = s3fs.S3FileSystem(**opts)
    fs.mkdir(bucket)
    write_dataset(tmp_path / "in")
    for p in sorted((tmp_path / "in").glob("*.parquet"))[:2]:
        fs.put_file(str(p), f"{bucket}/in/{p.name}")
    save_bases(make_bases(), Location(f"s3://{bucket}/bases", opts))
    config = {
        "input": {"path": f"s3://{bucket}/in", "storage_options": opts},
        "output": {"path": f"s3://{bucket}/out", "storage_options": opts},
        "bases": f"s3://{bucket}/bases",
        "fit": {"max_iter": 10},
        "device": "cpu",
        "ray": {"batch_size": 4, "num_cpus": 2},
    }
    cfg_file = tmp_path / "restore.yaml"
    cfg_file.write_text(json.dumps(config))
    assert set(_leaks(cfg_file.read_bytes())) == set(NEEDLES)  # the search finds them where they are
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {"IMRESTORE_LOG": level, "RAY_TMPDIR": ray_tmp, "AWS_EC2_METADATA_DISABLED": "true"}
    try:
        # --verbose: every library's log at the level asked for (the way main leaked at DEBUG)
        ok = _cli("restore", "--config", str(cfg_file), "--verbose", env=env, timeout=600)
        assert ok.returncode == 0, ok.stderr[-3000:]
        runs = [ok]
        if level == "DEBUG":
            # failing runs print their error lines: a URL with credentials, a bucket that is not there
            bad_url = _cli("restore", "--config", str(cfg_file), "--set",
                           f"input.path=s3://{FAKE_KEY}:{FAKE_SECRET}@{bucket}/in", env=env)  # fmt: skip
            no_bucket = _cli("restore", "--config", str(cfg_file), "--set", "output.path=s3://no-such/x", env=env)
            runs += [bad_url, no_bucket]
            for proc in (bad_url, no_bucket):
                _one_line(proc)
        for proc in runs:
            assert _leaks((proc.stdout + proc.stderr).encode()) == [], proc.stderr[-2000:]
        if level == "DEBUG":
            assert " DEBUG jobs.restore: " in ok.stderr  # the level took effect: real debug output was searched
        fs.invalidate_cache()
        outputs = list(fs.find(f"{bucket}/out"))
        assert any(p.endswith("_manifest.json") for p in outputs) and any(p.endswith("_plan.json") for p in outputs)
        for p in outputs:
            assert _leaks(fs.cat_file(p)) == [], p
        logs = [p for p in Path(ray_tmp).rglob("*") if p.is_file() and not p.is_symlink()]
        assert logs, "no Ray session files found"
        leaked = {str(p): _leaks(p.read_bytes()) for p in logs if p.stat().st_size < 50_000_000}
        assert {k: v for k, v in leaked.items() if v} == {}
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_manifest_and_plan_have_no_secrets_pure(tmp_path):
    """The settings stored in _plan.json come from the redacted config."""
    cfg = make_cfg(tmp_path / "in", tmp_path / "out", input={"storage_options": {"secret": FAKE_SECRET}})
    shown = restore_plan.resume_settings(cfg, None, None, None, redacted=True)
    assert FAKE_SECRET not in json.dumps(shown)
