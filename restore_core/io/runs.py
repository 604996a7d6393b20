"""A quality job's run folders: listing finished runs, reading them back, publishing a new one.

An output root holds one folder per run, ``<output>/run=<YYYY-MM-DD>/``::

    data/part-*.parquet   per-image metrics (Ray-written), per-image flags, thumbnails of flagged rows
    flags.parquet         id, every flag (duplicates included), duplicate counts and group label
    summary.json          counts, quantiles, flag shares, duplicate groups, drift, failed limits
    report.html           the page people read; plots/ and thumbs/ beside it (relative links)
    _SUCCESS              written last: a run without it is unfinished and is never compared with

A run is built in a staging folder and published by renames (or, on object stores, by copying
with ``_SUCCESS`` last). Everything goes through fsspec, so it runs in the job's driver or in a
test without Ray.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import uuid
from collections.abc import Collection, Mapping
from typing import Any

import fsspec
import numpy as np
import pyarrow.parquet as pq

from restore_core.errors import UserError
from restore_core.io import datasets
from restore_core.io.locations import Location
from restore_core.quality_summary import DATE

RUN_PREFIX = "run="
SUCCESS = "_SUCCESS"


def list_runs(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    """Dates of the finished runs (those with ``_SUCCESS``) under ``root``, oldest first."""
    if not fs.exists(root):
        return []
    dates = []
    for entry in fs.ls(root, detail=False):
        name = posixpath.basename(entry.rstrip("/"))
        if name.startswith(RUN_PREFIX) and DATE.match(name[len(RUN_PREFIX) :]):
            if fs.exists(posixpath.join(root, name, SUCCESS)):
                dates.append(name[len(RUN_PREFIX) :])
    return sorted(dates)


def read_summary(fs: fsspec.AbstractFileSystem, root: str, date: str) -> dict[str, Any]:
    with fs.open(posixpath.join(root, f"{RUN_PREFIX}{date}", "summary.json"), "r") as f:
        return dict(json.load(f))


def read_ids(fs: fsspec.AbstractFileSystem, root: str, date: str) -> list[str]:
    with fs.open(posixpath.join(root, f"{RUN_PREFIX}{date}", "flags.parquet"), "rb") as f:
        return [str(i) for i in pq.read_table(f, columns=["id"]).column("id").to_pylist() if i is not None]


def staging_path(root: str, date: str) -> str:
    """A fresh folder beside the runs where a run is built before it is published."""
    return posixpath.join(root, "_staging", f"{RUN_PREFIX}{date}.{uuid.uuid4().hex[:12]}")


def publish_run(fs: fsspec.AbstractFileSystem, staging: str, root: str, date: str) -> str:
    """Move a finished staging folder to ``<root>/run=<date>``, replacing an earlier run of that date.

    On a local filesystem this is two renames (the old run moves aside, the new one moves in), so
    readers see the old run or the new one, never a mix. Object stores have no rename: the old
    run's ``_SUCCESS`` is removed first, the new files are copied in and ``_SUCCESS`` is written
    last, so a reader that trusts only ``_SUCCESS`` never compares with a half-copied run.
    """
    final = posixpath.join(root, f"{RUN_PREFIX}{date}")
    if datasets.is_local(fs):
        trash = None
        if os.path.exists(final):
            trash = staging + ".old"
            os.rename(final, trash)
        os.rename(staging, final)
        if trash:
            shutil.rmtree(trash, ignore_errors=True)
    else:
        if fs.exists(final):
            if fs.exists(posixpath.join(final, SUCCESS)):
                fs.rm(posixpath.join(final, SUCCESS))
            fs.rm(final, recursive=True)
        success = posixpath.join(staging, SUCCESS)
        for src in fs.find(staging):
            if src != success:
                fs.copy(src, posixpath.join(final, posixpath.relpath(src, staging)))
        put(fs, posixpath.join(final, SUCCESS), fs.cat(success))
        fs.rm(staging, recursive=True)
    return final


def put(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path``, creating its folder (local filesystems need it, stores ignore it)."""
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    fs.pipe_file(path, data)


def write_json(fs: fsspec.AbstractFileSystem, path: str, data: Mapping[str, Any]) -> None:
    put(fs, path, json.dumps(data, indent=2, default=_json_default, allow_nan=False).encode("utf-8"))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def read_flagged_ids(run_folder: Location, flags: Collection[str] = ("dead_pixels",)) -> frozenset[str]:
    """Ids of the images a quality run flagged with any of ``flags`` (for ``restore.only_flagged``).

    ``run_folder`` is one run, ``<quality output>/run=<date>``; its ``flags.parquet`` (written
    by the quality job, duplicate flags included) is read. A UserError when it is missing.
    """
    missing = UserError(
        f"{run_folder.path} holds no finished quality run (no flags.parquet); set restore.only_flagged to a "
        "<quality output>/run=<date> folder"
    )
    fs, path = run_folder.member("flags.parquet", missing)
    with fs.open(path, "rb") as f:
        table = pq.read_table(f, columns=["id", "flags"])
    wanted = set(flags)
    ids = table.column("id").to_pylist()
    tags = table.column("flags").to_pylist()
    return frozenset(str(i) for i, t in zip(ids, tags, strict=True) if t and wanted & set(t.split(",")))
