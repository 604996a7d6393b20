"""Command line: ``python -m jobs <command> --config FILE --set key.sub=value``.

User mistakes end with one line on stderr saying what to fix, and exit code 2. A crash (a bug, or
anything unexpected) ends with one line too, naming the file that holds the traceback (``--verbose``
prints the traceback itself); its exit code is the command module's ``EXIT_CRASH`` (quality: 2, "the
job failed") or 1. A module's ``error_line(message)``, when it has one, is printed last on failure
(quality: ``QUALITY ERROR ...``), and a summary's ``final_line`` last on success.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from jobs import logs, ray_utils
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


#: The YAML configs shipped in the package (``configs/`` of the repository; ``jobs/default_configs``
#: links to it, so a source checkout and an installed wheel find them in the same place).
PACKAGED_CONFIGS = Path(__file__).resolve().parent / "default_configs"


def packaged_configs() -> list[str]:
    """Names of the packaged configs (``restore``, ``sr_seed``...), for ``--config NAME``."""
    return sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))


def resolve_config(command: str, value: str | None) -> str | None:
    """The YAML file that ``--config value`` means for ``command``.

    An existing file is used as given. A bare name (no folder, no ``.yaml``) names a packaged
    config: ``default`` is the command's own (``configs/restore.yaml`` for ``restore``), any
    other name is ``configs/<name>.yaml`` (``--config sr_seed``). This is how an installed wheel,
    which has no ``configs/`` folder beside it, reaches its configs.
    """
    if not value or Path(value).is_file():
        return value
    if "/" in value or os.sep in value or value.endswith((".yaml", ".yml")):
        return value  # a path that does not exist: load_config says so
    name = COMMANDS[command].module if value == "default" else value
    path = PACKAGED_CONFIGS / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(["default", *packaged_configs()])
        raise UserError(f"--config {value}: no such file, nor a packaged config (packaged: {known})")
    return str(path)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser. ``only``: import just that command's module for its own flags (the others'
    modules, with torch and the like, are not imported: a run starts seconds sooner); None = all."""
    parser = argparse.ArgumentParser(
        prog="python -m jobs",
        description="Restore and check image datasets at scale (NMF dead-pixel filling, CNN SR, quality).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        p.add_argument(
            "--config",
            "-c",
            help="YAML config file, or a packaged config's name: 'default' (this command's), 'sr_seed'...",
        )
        p.add_argument(
            "--set",
            "-s",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set fit.stride=4 (repeatable)",
        )
        p.add_argument("--json", action="store_true", help="print the summary as JSON")
        p.add_argument(
            "--verbose",
            "-v",
            action="store_true",
            help="also show Ray's own output: worker lines, Ray's info logs, library warnings",
        )
        if only is not None and name != only:
            continue
        module = importlib.import_module(f"jobs.{cmd.module}")
        add_args = getattr(module, "add_arguments", None)
        if add_args is not None:
            add_args(p)
    return parser


class _BriefFormatter(logging.Formatter):
    """``12:03:04 message`` for the job's steps; warnings and errors say what they are."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else text.replace(" ", f" {record.levelname.lower()}: ", 1)


def _warning_line(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
    logging.getLogger("jobs").warning("%s: %s", category.__name__, message)


def setup_logging(verbose: bool) -> None:
    """The job's log on stderr: its own steps (logger ``jobs``, level ``$IMRESTORE_LOG``, INFO by
    default), and other libraries' warnings; ``verbose`` adds everything Ray and the libraries say,
    except storage libraries' requests (never below WARNING: they carry credentials). Every line is
    redacted (``jobs.logs``). A level that is none is a UserError."""
    level = logs.level_from_env(os.environ.get("IMRESTORE_LOG"))
    if verbose:
        logs.configure(level, logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        logs.configure(logging.WARNING, _BriefFormatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        logging.getLogger("jobs").setLevel(level)
        # One line a warning, without the source line Python prints under it.
        warnings.showwarning = _warning_line
    ray_utils.set_verbose(verbose)


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    # The command is the first argument that names one (options before it are the parser's own).
    parser = build_parser(next((a for a in given if a in COMMANDS), None))
    args = parser.parse_args(given)
    if not args.command:
        parser.print_help()
        return 2
    try:
        setup_logging(args.verbose)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"jobs.{COMMANDS[args.command].module}")
    error_line = getattr(module, "error_line", None)

    def failed(code: int, message: str) -> int:
        if error_line is not None:
            sys.stdout.flush()
            print(logs.redact(error_line(message)), file=sys.stderr)
        return code

    try:
        # A command's own flags first, so that an explicit --set wins over them.
        apply_args = getattr(module, "apply_arguments", None)
        overrides = list(apply_args(args)) if apply_args is not None else []
        overrides += list(args.set)
        logs.register_secrets({"overrides": [o.split("=", 1)[-1] for o in overrides if _secret_override(o)]})
        cfg = load_config(module.CONFIG, resolve_config(args.command, args.config), overrides)
        logs.register_secrets(cfg)
        summary = module.run(cfg)
    except UserError as exc:
        # explain_exception unwraps a UserError raised inside a Ray task to its one line.
        message = explain_exception(exc) or str(exc)
        print(f"error: {logs.redact(message)}", file=sys.stderr)
        return failed(2, message)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return failed(130, "interrupted")
    except Exception as exc:
        explained = explain_exception(exc)  # library errors a user can fix (credentials, full disk...)
        if explained is None:
            # A bug: one line says so; the traceback (redacted like the logs) goes to a file, or
            # here with --verbose.
            where = _save_traceback(exc, args.command, args.verbose)
            message = f"{type(exc).__name__}: {_first_line(exc)}"
            print(f"error: the {args.command} job crashed: {logs.redact(message)} ({where})", file=sys.stderr)
            return failed(int(getattr(module, "EXIT_CRASH", 1)), message)
        print(f"error: {logs.redact(explained)}", file=sys.stderr)
        return failed(2, explained)
    print(logs.redact(summary.to_json() if args.json else summary.render()))
    if summary.final_line:
        sys.stdout.flush()  # the final line comes after the summary, whichever stream is buffered
        print(logs.redact(summary.final_line), file=sys.stderr)
    return int(summary.exit_code)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else ""


def _save_traceback(exc: BaseException, command: str, verbose: bool) -> str:
    """Print the redacted traceback (``verbose``) or write it to a private file; say where it went."""
    text = logs.redact("".join(traceback.format_exception(exc)))
    if verbose:
        print(text, file=sys.stderr, end="")
        return "traceback above"
    try:
        fd, path = tempfile.mkstemp(prefix=f"imrestore-{command}-{time.strftime('%Y%m%dT%H%M%S')}-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as f:  # mkstemp: readable by this user only
            f.write(text)
    except OSError:
        print(text, file=sys.stderr, end="")
        return "traceback above: no temporary file could be written"
    return f"traceback in {path}; --verbose prints it here"


def _secret_override(item: str) -> bool:
    key = item.split("=", 1)[0].lower()
    return "storage_options" in key or any(w in key.rsplit(".", 1)[-1] for w in ("key", "secret", "token", "password"))


if __name__ == "__main__":
    raise SystemExit(main())
