"""README.md's "Python API" example runs as it is written (extracted from the README, run in a
fresh process in an empty folder)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def readme_api_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "README's Python API section has no python block"
    return blocks[0]


def test_readme_python_api_example_runs(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(readme_api_example(), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "bases: example/bases" in out.stdout
    before, after = map(float, re.findall(r"PSNR ([\d.]+) dB -> ([\d.]+) dB", out.stdout)[0])
    assert after > before + 10
    assert "flags before: ['dead_pixels'" in out.stdout and "dead_pixels" not in out.stdout.split("after:")[1]
