"""pyproject.toml: the wheel (what `pip install .` installs) holds the packaged configs."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_holds_every_config_and_package(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
        check=True, capture_output=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("imrestore-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    assert configs and all(f"jobs/default_configs/{name}" in names for name in configs)
    for package in ("jobs", "restore_core", "restore_core/io", "imrestore", "imrestore_data", "imrestore_report"):
        assert f"{package}/__init__.py" in names
    assert "imrestore_report/templates/report.html.j2" in names  # the report page renders from it
