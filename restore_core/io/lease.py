"""One run at a time per output folder: a lease file with owner, host, pid and a heartbeat.

A job takes the lease (``<output>/_lease.json``) before it touches the folder and gives it back
when it ends. A second run on the same folder is refused in one line naming the holder. A lease
whose holder is gone is taken over with a warning: its process is dead (same host), or its
heartbeat (rewritten every ``heartbeat_s`` by a thread) is older than ``stale_after_s``. A run
SIGKILLed mid-way therefore blocks nobody for long; on the same host, not at all.

Works on any fsspec filesystem. On local disks the first write is exclusive (``O_EXCL``); on
object stores the lease is written, then read back after a short pause, and a run that finds
another owner's id there gives up.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec

from restore_core.errors import UserError
from restore_core.io import datasets

LEASE_FILE = "_lease.json"
STALE_AFTER_S = 120.0
HEARTBEAT_S = 15.0

log = logging.getLogger("restore_core.io.lease")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in some containers
        return str(os.getuid()) if hasattr(os, "getuid") else "?"


def stale_reason(doc: dict[str, Any], now: float, stale_after_s: float = STALE_AFTER_S) -> str:
    """Why the lease ``doc`` no longer holds (``""`` while it does)."""
    try:
        heartbeat = float(doc.get("heartbeat", 0.0))
        pid = int(doc.get("pid", -1))
    except (TypeError, ValueError):
        return "it is unreadable"
    if doc.get("host") == socket.gethostname() and pid > 0 and not _pid_alive(pid):
        return f"its process {pid} on this host is gone"
    if doc.get("host") == socket.gethostname() and pid == os.getpid():
        return "an earlier run in this process could not give it back (a storage outage?)"
    if now - heartbeat > stale_after_s:
        return f"its last heartbeat is {now - heartbeat:.0f} s old (stale after {stale_after_s:.0f} s)"
    return ""


def describe(doc: dict[str, Any], now: float) -> str:
    started = doc.get("started_utc", "?")
    age = now - float(doc.get("heartbeat", now) or now)
    return (
        f"{doc.get('job', '?')} run {str(doc.get('run_id', '?'))[:8]} by {doc.get('owner', '?')} on host "
        f"{doc.get('host', '?')} pid {doc.get('pid', '?')}, started {started}, heartbeat {age:.0f} s ago"
    )


class Lease:
    """The lease on one output folder. Use as a context manager (``with Lease(...):``)."""

    def __init__(
        self,
        fs: fsspec.AbstractFileSystem,
        folder: str,
        url: str,
        job: str,
        stale_after_s: float = STALE_AFTER_S,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self.fs = fs
        self.path = posixpath.join(folder.rstrip("/"), LEASE_FILE)
        self.url = url
        self.stale_after_s = stale_after_s
        self.heartbeat_s = heartbeat_s
        self.doc: dict[str, Any] = {
            "job": job,
            "run_id": uuid.uuid4().hex,
            "owner": _user(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "heartbeat": time.time(),
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> dict[str, Any] | None:
        try:
            with self.fs.open(self.path, "rb") as f:
                doc = json.loads(f.read() or b"{}")
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            return {}  # half written or garbage: stale unless its heartbeat says otherwise
        return doc if isinstance(doc, dict) else {}

    def _write(self, exclusive: bool) -> bool:
        payload = json.dumps(self.doc).encode()
        if exclusive and datasets.is_local(self.fs):
            self.fs.makedirs(posixpath.dirname(self.path), exist_ok=True)
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
            return True
        tmp = posixpath.join(posixpath.dirname(self.path), f".{LEASE_FILE}.tmp-{uuid.uuid4().hex}")
        with self.fs.open(tmp, "wb") as f:
            f.write(payload)
        self.fs.mv(tmp, self.path)
        return True

    def acquire(self) -> None:
        """Take the lease or raise a UserError naming the run that holds it."""
        self.fs.invalidate_cache()
        for _ in range(3):
            held = self.read()
            now = time.time()
            if held is None:
                if not self._write(exclusive=True):
                    continue  # another run created it just now: look at it
            else:
                reason = stale_reason(held, now, self.stale_after_s)
                if not reason:
                    raise UserError(
                        f"{self.url} is in use by another run ({describe(held, now)}): wait for it to end; "
                        f"if it is dead, its lease ({LEASE_FILE}) is taken over once its heartbeat is "
                        f"{self.stale_after_s:.0f} s old"
                    )
                log.warning("taking over the lease on %s: %s (%s)", self.url, reason, describe(held, now))
                self._write(exclusive=False)
            if not datasets.is_local(self.fs):
                time.sleep(0.5)  # let a concurrent writer's lease land, then see whose survived
            mine = self.read() or {}
            if mine.get("run_id") == self.doc["run_id"]:
                self._start_heartbeat()
                return
        raise UserError(f"{self.url}: another run took the lease at the same moment; try again")

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(self.heartbeat_s):
                try:
                    held = self.read() or {}
                    if held.get("run_id") != self.doc["run_id"]:
                        log.warning("the lease on %s was taken by another run", self.url)
                        return
                    self.doc["heartbeat"] = time.time()
                    self._write(exclusive=False)
                except Exception as exc:  # a storage hiccup must not kill the job; the next beat retries
                    log.warning("could not renew the lease on %s (%s)", self.url, type(exc).__name__)

        self._thread = threading.Thread(target=beat, name="imrestore-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_s + 5)
        with contextlib.suppress(Exception):  # best effort: a stale lease is taken over anyway
            self.fs.invalidate_cache()
            if (self.read() or {}).get("run_id") == self.doc["run_id"]:
                self.fs.rm(self.path)

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def held(fs: fsspec.AbstractFileSystem, folder: str, url: str, job: str) -> Iterator[Lease]:
    """``with held(fs, root, url, "restore"):`` the job's lease on ``folder`` for the block."""
    lease = Lease(fs, folder, url, job)
    with lease:
        yield lease
