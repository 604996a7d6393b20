"""Logging for the command line: the level from ``IMRESTORE_LOG``, and no credential in any line.

Two guards, because either alone can fail:

- Libraries that talk to storage (botocore, s3fs, urllib3, ...) log request headers and
  credentials at DEBUG. They are never raised below WARNING, whatever ``IMRESTORE_LOG`` says:
  ``IMRESTORE_LOG=DEBUG`` debugs this project, not the HTTP stack.
- Every line written through the root handlers is redacted: the secret values of the run's
  storage options and of the usual environment variables are replaced by ``***``, and so are
  things that look like credentials (AWS key ids, ``secret=...`` pairs, URL user:password).

:func:`redact` is also what the CLI passes its one-line errors and tracebacks through.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import time
from collections.abc import Iterable
from typing import Any

from restore_core.errors import UserError

#: Loggers that may print credentials or request details at DEBUG/INFO.
QUIET_LOGGERS = (
    "botocore",
    "boto3",
    "s3transfer",
    "aiobotocore",
    "s3fs",
    "fsspec",
    "urllib3",
    "requests",
    "httpx",
    "httpcore",
    "aiohttp",
    "gcsfs",
    "google",
    "adlfs",
    "azure",
    "asyncio",
)
#: Environment variables whose values are secrets.
SECRET_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
    "GOOGLE_OAUTH_ACCESS_TOKEN",
    "RAY_AUTH_TOKEN",
    "HF_TOKEN",
)
_SECRET_WORDS = ("key", "secret", "token", "password", "credential", "session", "sas", "signature")
_PATTERNS = [
    re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{12,}\b"),  # AWS key ids
    # key=value and "key": "value" pairs whose key names a secret (headers, query strings, reprs)
    re.compile(
        r"(?i)((?:aws_)?(?:secret_access_key|access_key_id|session_token|security_token|secret|password|"
        r"x-amz-security-token|x-amz-credential|x-amz-signature|signature|credential|token|authorization)"
        r"['\"]?\s*[:=]\s*['\"]?)([^'\"\s,&;}]+)"
    ),
    re.compile(r"(?i)(://)([^/@\s:]+:[^/@\s]+)(@)"),  # scheme://user:password@host
]
_MASK = "***"

_known: set[str] = set()


def _secret_values(node: Any, secret_key: bool = False) -> Iterable[str]:
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        node = dataclasses.asdict(node)
    if isinstance(node, dict):
        for k, v in node.items():
            name = str(k).lower()
            inside = secret_key or name == "storage_options" or any(w in name for w in _SECRET_WORDS)
            yield from _secret_values(v, inside)
    elif isinstance(node, (list, tuple)):
        for v in node:
            yield from _secret_values(v, secret_key)
    elif secret_key and isinstance(node, str) and len(node) >= 6 and not node.startswith(("http://", "https://")):
        yield node


def register_secrets(config: Any = None) -> None:
    """Remember secret values to redact: storage options and secret-named keys of ``config``, and
    the usual credential environment variables. Endpoint URLs are not secrets and stay."""
    values = set(_secret_values(config)) if config is not None else set()
    values |= {os.environ[k] for k in SECRET_ENV if len(os.environ.get(k, "")) >= 6}
    _known.update(values)


def redact(text: str) -> str:
    """``text`` with every registered secret and credential-looking token replaced by ``***``."""
    for value in sorted(_known, key=len, reverse=True):
        text = text.replace(value, _MASK)
    text = _PATTERNS[0].sub(_MASK, text)
    text = _PATTERNS[1].sub(lambda m: m.group(1) + _MASK, text)
    return _PATTERNS[2].sub(lambda m: m.group(1) + _MASK + m.group(3), text)


class RedactingFormatter(logging.Formatter):
    """A formatter whose output (message, arguments and traceback) passes through :func:`redact`."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def level_from_env(value: str | None) -> int:
    """The level named by ``IMRESTORE_LOG`` (default INFO); a UserError for a name that is none."""
    name = (value or "INFO").strip().upper()
    level = logging.getLevelName(name)
    if not isinstance(level, int):
        raise UserError(f"IMRESTORE_LOG={value!r} is not a log level: use DEBUG, INFO, WARNING or ERROR")
    return level


def configure(level: int, formatter: logging.Formatter | None = None) -> None:
    """Log to stderr at ``level`` (the root logger's) through ``formatter``, redacted; storage
    libraries stay at WARNING whatever ``level`` is."""
    root = logging.getLogger()
    handler = logging.StreamHandler()
    handler.setFormatter(_wrap(formatter or logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")))
    for old in [h for h in root.handlers if getattr(h, "_imrestore", False)]:
        root.removeHandler(old)
    handler._imrestore = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("jobs").setLevel(logging.NOTSET)  # an earlier brief setup held it at its own level
    for h in root.handlers:  # handlers someone else installed (pytest, a notebook) redact too
        if h is not handler and not isinstance(h.formatter, RedactingFormatter):
            h.setFormatter(_wrap(h.formatter or logging.Formatter()))
    quiet = max(level, logging.WARNING)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(quiet)
    # a child some library or earlier code set lower (botocore.auth, urllib3.connectionpool...)
    # would still log below WARNING: hold every existing child at the same level
    for name in list(logging.Logger.manager.loggerDict):
        if any(name.startswith(q + ".") for q in QUIET_LOGGERS):
            logging.getLogger(name).setLevel(quiet)
    register_secrets()


def _wrap(fmt: logging.Formatter) -> logging.Formatter:
    class _Redacting(RedactingFormatter):
        def format(self, record: logging.LogRecord) -> str:
            return redact(fmt.format(record))

    return _Redacting()


# ----------------------------------------------------------------------------- progress

#: Seconds between two progress lines in a log (stderr not a terminal); ``IMRESTORE_PROGRESS_SECONDS``.
DEFAULT_PROGRESS_SECONDS = 30.0


def progress_seconds(value: str | None) -> float:
    """The interval ``IMRESTORE_PROGRESS_SECONDS`` names (default 30 s); a UserError for a value
    that is not a number >= 0 (0: a line at every update)."""
    if value is None or not value.strip():
        return DEFAULT_PROGRESS_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise UserError(f"IMRESTORE_PROGRESS_SECONDS={value!r} is not a number of seconds >= 0")
    return seconds


class _LogLines:
    """A file for tqdm that turns each refresh into one log line (no carriage returns, no bars)."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.last = ("", 0.0)

    def write(self, text: str) -> None:
        for part in re.split(r"[\r\n]+", text):
            part = " ".join(part.split())  # tqdm pads its rate ("  0.82 images/s")
            counts = part.split(",", 1)[0]  # "scoring: 40/100 images (40%)"
            now = time.monotonic()
            # tqdm redraws the final state when it closes: the same counts within a second are one line
            if part and not (counts == self.last[0] and now - self.last[1] < 1.0):
                self.logger.info("%s", part)
                self.last = (counts, now)

    def flush(self) -> None:
        pass


def progress_bar(total: int | None, what: str, unit: str = "images", interval: float | None = None) -> Any:
    """A tqdm bar that, when stderr is not a terminal, logs ``<what>: done/total unit (pct%), rate,
    elapsed, ETA`` through the ``jobs.progress`` logger at most every ``interval`` seconds (default
    ``IMRESTORE_PROGRESS_SECONDS``), plus a first and a last line. On a terminal it is disabled:
    Ray Data draws its own bars there. Call ``update(n)`` and ``close()`` as with any tqdm bar."""
    from tqdm import tqdm

    seconds = progress_seconds(os.environ.get("IMRESTORE_PROGRESS_SECONDS")) if interval is None else interval
    if total:
        fmt = (
            "{desc}: {n_fmt}/{total_fmt}{unit} ({percentage:.0f}%), {rate_noinv_fmt}, "
            "elapsed {elapsed}, ETA {remaining}"
        )
    else:
        fmt = "{desc}: {n_fmt}{unit}, {rate_noinv_fmt}, elapsed {elapsed}"
    return tqdm(
        total=total or None,
        desc=what,
        unit=f" {unit}",
        file=_LogLines(logging.getLogger("jobs.progress")),
        mininterval=seconds,
        maxinterval=max(seconds, 1.0),
        miniters=1,
        bar_format=fmt,
        disable=sys.stderr.isatty(),
        dynamic_ncols=False,
        ascii=True,
    )
