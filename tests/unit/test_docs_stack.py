"""docs/stack.md: every `python -m jobs ...` command in it parses, and its config keys exist."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

from jobs import cli
from restore_core.config import load_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "stack.md"


def doc_commands() -> list[list[str]]:
    text = DOC.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```(?:bash|cron)\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            for i in range(len(words) - 2):
                if words[i].endswith("python") and words[i + 1 : i + 3] == ["-m", "jobs"]:
                    commands.append([w for w in words[i + 3 :] if w not in (">>", "2>&1") and "/log/" not in w])
    return commands


def test_doc_has_commands_for_every_section():
    assert len(doc_commands()) >= 6


@pytest.mark.parametrize("argv", doc_commands(), ids=lambda a: a[0])
def test_doc_command_parses_with_known_keys(argv):
    args = cli.build_parser().parse_args(argv)
    module = importlib.import_module(f"jobs.{cli.COMMANDS[args.command].module}")
    apply = getattr(module, "apply_arguments", None)
    overrides = [*(apply(args) if apply else []), *args.set]
    load_config(module.CONFIG, cli.resolve_config(args.command, args.config), overrides)
