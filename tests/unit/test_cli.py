import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imrestore_data import synth
from tests.conftest import png_bytes

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "jobs", *args], capture_output=True, text=True, cwd=cwd, check=False, timeout=300
    )


def test_help_lists_commands():
    out = _cli("--help")
    assert out.returncode == 0
    for cmd in ("learn-bases", "benchmark"):
        assert cmd in out.stdout


def test_unknown_key_is_one_line_exit_2(tmp_path):
    out = _cli("learn-bases", "--set", "nmf.kk=3")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: unknown config key 'nmf.kk' (known keys here: batch_size, channels, image_size, k, l1, max_iter, "
        "mode, n_samples, patch_size, seed, solver, tol)"
    ]
    assert "Traceback" not in out.stderr


def test_missing_input_path_is_one_line(tmp_path):
    out = _cli("learn-bases", "--set", f"input.path={tmp_path / 'missing'}", "--set", f"output={tmp_path / 'b'}")
    assert out.returncode == 2
    assert "input path does not exist" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow  # two jobs end to end, ~20 s idle; kept out of CI for its 20-minute budget
def test_learn_bases_then_benchmark(tmp_path):
    imgs = synth.shapes(12, 24, seed=0)
    table = pa.table(
        {"id": [f"i{i}" for i in range(12)], "image": [png_bytes(np.rint(im * 255).astype(np.uint8)) for im in imgs]}
    )
    pq.write_table(table, tmp_path / "part-0.parquet")
    out = _cli(
        "learn-bases",
        "--set",
        f"input.path={tmp_path}",
        "--set",
        f"output={tmp_path / 'bases'}",
        "--set",
        "nmf.k=16",
        "--set",
        "nmf.patch_size=6",
        "--set",
        "nmf.n_samples=800",
        "--set",
        "nmf.max_iter=20",
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "bases" / "bases.npy").exists()
    out = _cli(
        "benchmark",
        "--set",
        f"input.path={tmp_path}",
        "--set",
        f"bases={tmp_path / 'bases'}",
        "--set",
        f"output={tmp_path / 'bench'}",
        "--set",
        "n_images=3",
        "--set",
        "rates=[0.3, 0.6]",
        "--set",
        "methods=[nmf, median]",
        "--set",
        "k_values=[4, 8]",
        "--set",
        "nmf.max_iter=5",
    )
    assert out.returncode == 0, out.stderr
    assert "PSNR" in out.stdout
    for name in ("results.csv", "psnr_vs_rate.png", "grid.png", "weights_hist.png", "psnr_vs_k.png"):
        assert (tmp_path / "bench" / name).stat().st_size > 0


def test_config_by_name_resolves_the_packaged_configs(capsys):
    from jobs import cli
    from jobs.config_restore import RestoreJobConfig
    from restore_core.config import load_config

    assert sorted(p.name for p in (ROOT / "configs").glob("*.yaml")) == [f"{n}.yaml" for n in cli.packaged_configs()]
    path = cli.resolve_config("restore", "default")
    assert path is not None and path.endswith("default_configs/restore.yaml")
    cfg = load_config(RestoreJobConfig, path)
    assert cfg == RestoreJobConfig()  # the packaged file spells out every default
    assert "\nbases: " in open(path, encoding="utf-8").read()
    assert cli.resolve_config("train-sr", "sr_seed") == str(cli.PACKAGED_CONFIGS / "sr_seed.yaml")
    own_file = str(ROOT / "configs" / "quality.yaml")
    assert cli.resolve_config("restore", own_file) == own_file
    assert cli.main(["restore", "--config", "no_such_config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "packaged: default, benchmark" in err[0]
