"""A folder at an fsspec URL with the writes the jobs need: atomic files and JSON documents.

An atomic write goes to a temporary name beside the file, then is renamed into place, so a
reader never sees half a file. Folders are only made on local filesystems: on object stores a
``mkdir`` could create a bucket, which a job must never do behind the user's back.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from typing import Any

from restore_core.errors import UserError
from restore_core.io import datasets
from restore_core.io.locations import Location
from restore_core.io.probe import probe_writable


class Folder:
    """An output folder (a :class:`Location`): paths under it, listings, atomic writes, JSON."""

    def __init__(self, location: Location) -> None:
        if not location.path:
            raise UserError("output.path is empty: set it to the folder (or s3://bucket/prefix) to write")
        self.location = location.at(location.path.rstrip("/"))
        self.fs, self.root = self.location.filesystem()
        self.root = self.root.rstrip("/")

    @property
    def url(self) -> str:
        """The folder's path as configured (no trailing ``/``): for messages."""
        return self.location.path

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    @property
    def is_local(self) -> bool:
        return datasets.is_local(self.fs)

    def makedirs(self, path: str) -> None:
        """Folders exist on local-like filesystems only; on object stores a ``mkdir`` could
        create a bucket, which a job must never do behind the user's back."""
        if self.is_local:
            self.fs.makedirs(path, exist_ok=True)

    def check_writable(self) -> None:
        """Write and delete a probe object: bad credentials or a read-only bucket fail here."""
        probe_writable(self.location)

    def relative(self, path: str) -> str:
        return posixpath.relpath(str(path), self.root)

    def find(self, name: str) -> list[str]:
        p = self.path(name)
        if not self.fs.exists(p):
            return []
        return sorted(str(f) for f in self.fs.find(p))

    def read_json(self, name: str) -> dict[str, Any] | None:
        p = self.path(name)
        if not self.fs.exists(p):
            return None
        with self.fs.open(p, "r") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None

    def write_json(self, name: str, doc: dict[str, Any]) -> None:
        """Write via a temporary name then rename, so a reader never sees half a file."""
        self.atomic_write(self.path(name), json.dumps(doc, indent=2, default=str, allow_nan=True).encode())

    def atomic_write(self, final: str, payload: bytes) -> None:
        parent = posixpath.dirname(final)
        tmp = posixpath.join(parent, f".{posixpath.basename(final)}.tmp-{uuid.uuid4().hex}")
        self.makedirs(parent)
        with self.fs.open(tmp, "wb") as f:
            f.write(payload)
        self.fs.mv(tmp, final)
