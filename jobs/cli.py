"""Command line: ``python -m jobs <command> --config FILE --set key.sub=value``.

User mistakes end with one line on stderr saying what to fix, and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from restore_core.checks import explain_exception
from restore_core.config import load_config
from restore_core.errors import UserError


@dataclass(frozen=True)
class Command:
    module: str  # jobs.<module> with run(cfg) -> Summary and CONFIG (the config class)
    help: str


COMMANDS: dict[str, Command] = {
    "learn-bases": Command("learn_bases", "learn NMF bases from clean images"),
    "benchmark": Command("benchmark", "damage clean images, restore with each method, compare"),
    "restore": Command("restore", "restore a dataset on Ray: fill dead pixels (and SR), write shards + manifest"),
    "train-sr": Command("train_sr", "train the super-resolution CNN with Ray Train"),
    "train-inpaint": Command("train_inpaint", "train the inpainting refiner on your (damaged) dataset with Ray Train"),
    "demo": Command("demo", "generate a small dataset and run every job on it, locally, in minutes"),
    "quality": Command("quality", "nightly data-quality run: per-image metrics, flags, drift, HTML report"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jobs",
        description="Restore and check image datasets at scale (NMF dead-pixel filling, CNN SR, quality).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        p.add_argument("--config", "-c", help="YAML config file (see configs/)")
        p.add_argument(
            "--set",
            "-s",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set fit.stride=4 (repeatable)",
        )
        p.add_argument("--json", action="store_true", help="print the summary as JSON")
        module = importlib.import_module(f"jobs.{cmd.module}")
        add_args = getattr(module, "add_arguments", None)
        if add_args is not None:
            add_args(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=os.environ.get("IMRESTORE_LOG", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    warnings.filterwarnings("ignore", module="ray.*")
    module = importlib.import_module(f"jobs.{COMMANDS[args.command].module}")
    try:
        # A command's own flags first, so that an explicit --set wins over them.
        apply_args = getattr(module, "apply_arguments", None)
        overrides = list(apply_args(args)) if apply_args is not None else []
        overrides += list(args.set)
        cfg = load_config(module.CONFIG, args.config, overrides)
        summary = module.run(cfg)
    except UserError as exc:
        # explain_exception unwraps a UserError raised inside a Ray task to its one line.
        print(f"error: {explain_exception(exc) or exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        message = explain_exception(exc)  # library errors a user can fix (credentials, endpoint...)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(summary.to_json() if args.json else summary.render())
    return int(summary.exit_code)


if __name__ == "__main__":
    raise SystemExit(main())
