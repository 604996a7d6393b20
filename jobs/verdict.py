"""The quality run's verdict, in the three forms a scheduler can read.

- the exit code: 0 ``PASS``, 1 ``FAIL`` (a ``fail_on`` flag passed its ``max_share``),
  3 ``WARN`` (a ``warn_on`` flag passed its ``max_share``, no ``fail_on`` one did), 2 ``ERROR``
  (the job itself failed: a mistake to fix, or a crash);
- ``status.json``: in the run folder (``<output>/run=<date>/status.json``) when the run was
  published, and always in ``<output>/_status/run=<date>.json``, which is also written when the
  job fails after its output was known (no run folder exists then);
- the last line the job prints: ``QUALITY PASS|WARN|FAIL|ERROR <short reason>``.

``ray job submit`` turns every non-zero exit into 1, so a wrapper reads the last line (from the
job's log) or the status file instead: see ``jobs/submit_quality.sh`` and docs/nightly.md.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

import imrestore_report as report
from restore_core.checks import explain_exception
from restore_core.errors import UserError

PASS, FAIL, ERROR, WARN = "PASS", "FAIL", "ERROR", "WARN"
EXIT_CODES = {PASS: 0, FAIL: 1, ERROR: 2, WARN: 3}
#: The file name in a published run folder.
STATUS_FILE = "status.json"
#: The folder beside the runs that holds every date's latest verdict, failed jobs included.
STATUS_FOLDER = "_status"
#: Every status line starts with this; a wrapper finds the last one in the job's log.
LINE_PREFIX = "QUALITY "


@dataclasses.dataclass(frozen=True)
class Verdict:
    """PASS, WARN, FAIL or ERROR, with the lines that say why."""

    verdict: str
    failed: list[str] = dataclasses.field(default_factory=list)  # one line per fail_on flag over its limit
    warned: list[str] = dataclasses.field(default_factory=list)  # one line per warn_on flag over its limit
    reason: str = ""  # the short reason on the status line
    error: str = ""  # ERROR: what went wrong, one line

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def line(self) -> str:
        """``QUALITY <VERDICT> <reason>``: one line, printed last."""
        return f"{LINE_PREFIX}{self.verdict} {self.reason}".rstrip()


def _over(summary: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """``name 5.00% > 1.00%`` for each of ``names`` whose share is over its max_share."""
    out = []
    for name in names:
        f = summary["flags"].get(name)
        if f is not None and f["share"] > f["max_share"]:
            out.append(f"{name} {100 * f['share']:.2f}% > {100 * f['max_share']:.2f}%")
    return out


def decide(summary: Mapping[str, Any], fail_on: Sequence[str], warn_on: Sequence[str]) -> Verdict:
    """The verdict of a finished run from its summary (``report.summarize``'s flags and rows).

    A flag named in both lists fails (fail_on wins); a disabled flag never fails nor warns.
    """
    warn_only = [n for n in warn_on if n not in fail_on]
    failed = report.failures(summary, fail_on)
    warned = report.failures(summary, warn_only)
    n = summary["rows"]
    if failed:
        return Verdict(FAIL, failed, warned, f"{n} images: " + "; ".join(_over(summary, fail_on)))
    if warned:
        return Verdict(WARN, failed, warned, f"{n} images: " + "; ".join(_over(summary, warn_only)))
    watched = len(set(fail_on) | set(warn_on))
    what = f"no limit passed ({watched} flags watched)" if watched else "no fail_on or warn_on flags set"
    return Verdict(PASS, [], [], f"{n} images, {summary.get('errors', 0)} unreadable: {what}")


def crashed(message: str) -> Verdict:
    """The verdict of a job that did not finish: ``message`` is its one-line error."""
    line = " ".join(message.split())  # one line, whatever the exception said
    return Verdict(ERROR, reason=f"the job failed: {line}", error=line)


def describe_error(exc: BaseException) -> str:
    """One line for why the job failed: a user's mistake says what to fix, a library error a user
    can fix says so too (``explain_exception``), a crash gives the exception's type and text."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    explained = explain_exception(exc)
    if explained is not None:
        return explained
    if isinstance(exc, UserError):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def now() -> str:
    """The current UTC time as ISO 8601, seconds precision."""
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def record(
    v: Verdict,
    *,
    run_date: str,
    started: str,
    finished: str,
    summary: Mapping[str, Any] | None = None,
    run: str = "",
    fail_on: Sequence[str] = (),
    warn_on: Sequence[str] = (),
) -> dict[str, Any]:
    """What ``status.json`` holds: the verdict, its exit code and lines, the run date, the times and
    the counts (images, unreadable, each flag's count) when the run got that far."""
    counts: dict[str, Any] = {}
    if summary is not None:
        counts = {
            "images": summary["rows"],
            "read": summary.get("ok", 0),
            "unreadable": summary.get("errors", 0),
            "flagged": {n: f["count"] for n, f in summary["flags"].items()},
        }
    return {
        "verdict": v.verdict,
        "exit_code": v.exit_code,
        "line": v.line(),
        "failed": list(v.failed),
        "warned": list(v.warned),
        "error": v.error,
        "run_date": run_date,
        "started": started,
        "finished": finished,
        "counts": counts,
        "fail_on": list(fail_on),
        "warn_on": list(warn_on),
        "run": run,
    }


def status_path(root: str, run_date: str) -> str:
    """``<output>/_status/run=<date>.json``: the latest verdict for that date, failed jobs included."""
    return posixpath.join(root, STATUS_FOLDER, f"{report.RUN_PREFIX}{run_date}.json")
