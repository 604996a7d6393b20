"""Which input files are unchanged since an earlier quality run (no Ray; pure listing and tables).

An incremental quality run reuses the per-image metrics of files whose identity is unchanged
and scores only new and changed files. A file's identity is its path, its size and a *token*
taken from what the store reports for it, strongest first:

- Google Cloud Storage (gcsfs): ``md5Hash``, else ``crc32c`` (content checksums), else ``generation``;
- Amazon S3 and S3-compatible stores (s3fs): ``ETag`` (the content MD5 for single-part uploads,
  a hash of the parts' MD5s for multipart ones: a rewrite changes it);
- Hugging Face (huggingface_hub): the LFS ``sha256``, else the git ``blob_id``;
- a local folder: the modification time in nanoseconds (``st_mtime_ns``);
- any other store: its ``etag``/``ETag``, else its modification time.

Every run records its files in ``<run>/files.parquet`` (:data:`FILES_SCHEMA`: one row per file
with its identity and the ids read from it), with the scoring settings' fingerprint in the
table's metadata. :func:`compare` sorts today's listing against it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from restore_core.errors import UserError
from restore_core.io import datasets
from restore_core.io.locations import Location
from restore_core.io.resume import changed_settings, settings_document, settings_fingerprint

#: ``<run>/files.parquet``: the input files a run read, their identity, and the ids each gave.
FILES_NAME = "files.parquet"
FILES_SCHEMA = pa.schema(
    [
        pa.field("file", pa.string()),  # full path inside the store, as listed (no protocol)
        pa.field("size", pa.int64()),
        pa.field("token", pa.string()),  # "<kind>:<value>", e.g. "etag:...", "mtime_ns:..."
        pa.field("rows", pa.int64()),  # rows read from the file (the length of ids)
        pa.field("ids", pa.list_(pa.string())),  # the ids the file's rows have (null: a row without id)
    ]
)
#: Metadata keys of ``files.parquet``.
META_FINGERPRINT = b"imrestore.settings_fingerprint"
META_SETTINGS = b"imrestore.settings"

#: Keys of the quality config that do not change a row's per-image metrics: where things live,
#: how Ray runs, and what is computed over the whole run afterwards (duplicates, odd size and
#: aspect, flag shares, the report). Every other key - one added later too - is part of the
#: fingerprint, so a change to it rescans in full.
NOT_SCORING_KEYS = (
    "input.path",  # the files are compared one by one; a moved input is all new files
    "input.limit",  # a limited run is always full
    "output",
    "output_storage_options",
    "run_date",
    "near_duplicate_distance",
    "near_duplicate_min_bits",
    "odd_spread_floor",
    "fail_on",
    "calibrate",
    "full",
    "local_score_max_rows",
    "report.history_runs",
    "report.worst_per_flag",
    "report.max_duplicate_groups",
    "ray",
)

#: The modules whose code computes a row's metrics: their source is part of the fingerprint, so a
#: new version of the scorer rescans in full rather than mixing two versions' numbers.
SCORER_MODULES = ("quality", "metrics", "masks", "codec")


@dataclasses.dataclass(frozen=True, slots=True)  # slots: ~50 bytes less a file (100,000 files a night)
class FileIdentity:
    path: str
    size: int
    token: str


@dataclasses.dataclass(frozen=True)
class FileChanges:
    """Today's files against an earlier run's, each list sorted by path."""

    unchanged: list[FileIdentity]
    changed: list[FileIdentity]  # same path, other size or token
    added: list[FileIdentity]
    removed: list[str]  # paths in the earlier run only

    @property
    def to_score(self) -> list[str]:
        return sorted(f.path for f in (*self.changed, *self.added))

    def counts(self) -> dict[str, int]:
        return {
            "unchanged": len(self.unchanged),
            "changed": len(self.changed),
            "added": len(self.added),
            "removed": len(self.removed),
        }


# ----------------------------------------------------------------------------- identities


def _text(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(value).strip('"')


def identity_token(info: Mapping[str, Any]) -> str:
    """The token of a file from its fsspec ``info()`` (or listing) entry; "" when the store gives none."""
    lfs = info.get("lfs")
    if isinstance(lfs, Mapping) and lfs.get("sha256"):
        return f"sha256:{lfs['sha256']}"
    for key, kind in (
        ("md5Hash", "md5"),
        ("crc32c", "crc32c"),
        ("blob_id", "blob"),
        ("ETag", "etag"),
        ("etag", "etag"),
        ("generation", "generation"),
        ("mtime", "mtime"),
        ("LastModified", "mtime"),
        ("last_modified", "mtime"),
        ("updated", "mtime"),
    ):
        value = info.get(key)
        if value not in (None, ""):
            return f"{kind}:{_text(value)}"
    return ""


def list_identities(location: Location, fmt: str) -> list[FileIdentity]:
    """The dataset's files (as :func:`datasets.list_files` lists them) with their identity.

    One listing call on object stores (``find(detail=True)`` carries sizes and checksums), one
    ``stat`` per file on a local folder. A UserError if the path is missing or holds no files.
    """
    fs, root = location.filesystem()
    if datasets.is_local(fs):
        out = []
        for path in datasets.list_files(location, fmt):
            st = os.stat(path)
            out.append(FileIdentity(path, int(st.st_size), f"mtime_ns:{st.st_mtime_ns}"))
        return out
    if not fs.exists(root):
        raise UserError(f"input path does not exist: {location.path} (check input.path)")
    if fs.isfile(root):
        infos = {root: fs.info(root)}
    else:
        listed = fs.find(root, detail=True)
        infos = {p: listed[p] for p in datasets.dataset_files(listed, fmt)}
    if not infos:
        kind = "*.parquet files" if fmt == "parquet" else "image files"
        raise UserError(f"no {kind} under {location.path} (check input.path and input.format)")
    return [FileIdentity(p, int(infos[p].get("size") or 0), identity_token(infos[p])) for p in sorted(infos)]


def image_ids(location: Location, files: Sequence[str]) -> list[str]:
    """The ids an image folder's files get (their path relative to the folder), as the read gives them."""
    fs, root = location.filesystem()
    root = root.rstrip("/")
    base = posixpath.dirname(root) if fs.isfile(root) else root
    return [posixpath.relpath(p, base) if p != base else posixpath.basename(p) for p in files]


# ----------------------------------------------------------------------------- comparing


def compare(current: Sequence[FileIdentity], previous: Mapping[str, tuple[int, str]]) -> FileChanges:
    """Sort today's files into unchanged, changed and added against ``previous`` (path -> (size,
    token)), and list the paths gone. A file whose token is empty is never unchanged."""
    unchanged, changed, added = [], [], []
    for f in sorted(current, key=lambda f: f.path):
        before = previous.get(f.path)
        if before is None:
            added.append(f)
        elif before == (f.size, f.token) and f.token:
            unchanged.append(f)
        else:
            changed.append(f)
    now = {f.path for f in current}
    return FileChanges(unchanged, changed, added, sorted(p for p in previous if p not in now))


# ----------------------------------------------------------------------------- settings


def scorer_code_hash() -> str:
    """A hash of the source of the modules that compute a row's metrics (:data:`SCORER_MODULES`)."""
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent.parent
    for name in SCORER_MODULES:
        h.update(name.encode())
        h.update((here / f"{name}.py").read_bytes())
    return h.hexdigest()[:16]


def scoring_settings(config: dict[str, Any]) -> dict[str, Any]:
    """What a row's per-image metrics depend on, flat: every config key but :data:`NOT_SCORING_KEYS`,
    storage options and the flags' ``max_share`` (used on the whole run only), plus the scorer's code hash.

    ``config`` is the quality config as plain data (``config.to_dict``).
    """
    doc = settings_document(config, {"scorer_code": scorer_code_hash()}, exclude=NOT_SCORING_KEYS)
    return {k: v for k, v in doc.items() if not k.endswith(".max_share")}


#: The keys whose values differ between two settings documents (the resume check's own function).
changed_keys = changed_settings


def files_metadata(settings: Mapping[str, Any]) -> dict[bytes, bytes]:
    """The key-value metadata ``files.parquet`` carries: the settings and their fingerprint."""
    return {
        META_FINGERPRINT: settings_fingerprint(settings).encode(),
        META_SETTINGS: json.dumps(dict(settings), sort_keys=True, default=str).encode(),
    }


def read_metadata(schema: pa.Schema) -> tuple[str, dict[str, Any]]:
    """(fingerprint, settings) from a ``files.parquet`` schema; ("", {}) when absent."""
    meta = schema.metadata or {}
    fp = meta.get(META_FINGERPRINT, b"").decode()
    try:
        settings = json.loads(meta.get(META_SETTINGS, b"{}"))
    except ValueError:
        settings = {}
    return fp, settings if isinstance(settings, dict) else {}


def files_batch(entries: Iterable[tuple[FileIdentity, Sequence[str | None]]]) -> pa.RecordBatch:
    """Rows of ``files.parquet`` for ``(identity, ids)`` pairs."""
    rows = list(entries)
    return pa.RecordBatch.from_arrays(
        [
            pa.array([f.path for f, _ in rows], pa.string()),
            pa.array([f.size for f, _ in rows], pa.int64()),
            pa.array([f.token for f, _ in rows], pa.string()),
            pa.array([len(ids) for _, ids in rows], pa.int64()),
            pa.array([list(ids) for _, ids in rows], pa.list_(pa.string())),
        ],
        schema=FILES_SCHEMA,
    )


def scan_sentence(incremental: Mapping[str, Any]) -> str:
    """One sentence on what a run scored and reused, from its summary's ``incremental`` block."""
    c = incremental.get("files") or {}
    if incremental.get("mode") == "incremental":
        return (
            f"Incremental from run={incremental.get('base_run')}: {c.get('added', 0)} files added, "
            f"{c.get('changed', 0)} changed, {c.get('removed', 0)} removed, {c.get('unchanged', 0)} unchanged "
            f"({incremental.get('rows_reused', 0)} rows reused, {incremental.get('rows_scored', 0)} scored)."
        )
    return f"Full rescan: {incremental.get('reason') or 'every image scored'}."
