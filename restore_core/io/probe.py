"""Checking that an output location can be written before any work, and saying why not.

A failed write becomes one line naming the config key, the cause and the fix (read-only folder,
full disk, refused credentials).
"""

from __future__ import annotations

import errno
import posixpath
import uuid

from restore_core.errors import UserError
from restore_core.io import datasets
from restore_core.io.locations import Location


def write_problem(exc: BaseException) -> str:
    """What a failed write means for the user, in a few words (errno first, then the storage's text)."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text:
        return "the disk is full: free space or point it at a larger disk"
    if code == errno.EROFS:
        return "the filesystem is read-only: point it at a writable folder"
    if "does not exist in our records" in text or "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text:
        return "the S3 credentials were refused: fix storage_options key/secret (or AWS_ACCESS_KEY_ID...)"
    if isinstance(exc, PermissionError) or code in (errno.EACCES, errno.EPERM) or "Forbidden" in text:
        return "permission denied: point it at a folder (or bucket) these credentials may write"
    if isinstance(exc, (NotADirectoryError, FileExistsError)):
        return "a file is in the way of the folder: choose another path"
    if isinstance(exc, FileNotFoundError):
        return "its bucket or parent folder does not exist: create it first"
    return "check the path and its credentials"


def probe_writable(location: Location, key: str = "output.path") -> None:
    """Write and delete a small probe under ``location`` before any work; a UserError naming ``key``,
    the cause and the fix when that fails (read-only folder, full disk, refused credentials)."""
    fs, root = location.filesystem()
    root = root.rstrip("/")
    probe = posixpath.join(root, f"_probe-{uuid.uuid4().hex}")
    local = datasets.is_local(fs)
    created = []  # folders the probe made: removed again, so a run refused later leaves nothing behind
    try:
        if local:
            parent = root
            while parent and not fs.exists(parent) and parent != posixpath.dirname(parent):
                created.append(parent)
                parent = posixpath.dirname(parent)
            fs.makedirs(root, exist_ok=True)
        with fs.open(probe, "wb") as f:
            f.write(b"ok" * 2048)  # a few KiB: a disk with no room at all fails here
        fs.rm(probe)
        for folder in created:
            fs.rmdir(folder)
    except Exception as exc:  # any backend error means the same thing to the user
        first = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise UserError(
            f"cannot write to {key} {location.path}: {write_problem(exc)} ({type(exc).__name__}: {first})"
        ) from None
