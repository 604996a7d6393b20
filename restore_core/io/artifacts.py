"""Bases and model artifacts on storage: save, load, validate. No pickle anywhere.

The types live in the core (:mod:`restore_core.bases`); this module only stores them.

A bases artifact is a folder (any fsspec URL) with ``bases.npy`` (float32, k x n_pixels,
loaded with ``allow_pickle=False``) and ``meta.json``.

An SR model artifact is a folder with ``model.safetensors`` (the network's state dict as plain
arrays) and ``meta.json`` (architecture, degrade settings, validation PSNR, a fingerprint of the
weights). ``restore_core.sr`` turns the arrays into a network.
A refiner artifact (``train-inpaint``) has the same two files: see ``restore_core.io.refiners``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import posixpath
from typing import Any

import numpy as np

from restore_core.bases import Bases, BasesMeta, validate_bases
from restore_core.errors import ArtifactError
from restore_core.io.locations import Location


def save_bases(bases: Bases, location: Location) -> None:
    """Write ``bases.npy`` then ``meta.json`` (meta last: its presence marks completion)."""
    validate_bases(bases.H, bases.meta)
    fs, root = location.filesystem()
    fs.makedirs(root, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, bases.H, allow_pickle=False)
    with fs.open(posixpath.join(root, "bases.npy"), "wb") as f:
        f.write(buf.getvalue())
    meta = dataclasses.asdict(bases.meta)
    meta["image_shape"] = list(bases.meta.image_shape)
    meta["fingerprint"] = bases.fingerprint()
    with fs.open(posixpath.join(root, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2, allow_nan=True)


def _load_npy(raw: bytes) -> np.ndarray:
    """``np.load`` without pickle, after checking that the header's shape fits the bytes.

    np.load allocates the whole declared array before reading a stream, so a damaged or
    hostile header claiming 10^12 elements would fail with MemoryError (or worse, succeed).
    """
    buf = io.BytesIO(raw)
    version = np.lib.format.read_magic(buf)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(buf)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(buf)
    if dtype.hasobject:
        raise ValueError("bases.npy holds Python objects (pickle); refused")
    declared = math.prod(int(d) for d in shape) * dtype.itemsize  # Python ints: no overflow
    if declared != len(raw) - buf.tell():
        raise ValueError(f"bases.npy declares {shape} {dtype} ({declared} bytes) but holds {len(raw) - buf.tell()}")
    buf.seek(0)
    return np.load(buf, allow_pickle=False)


def load_bases(location: Location) -> Bases:
    """Load and validate a bases artifact; every failure is one :class:`ArtifactError` line."""
    url = location.path
    if not url:
        raise ArtifactError("no bases artifact given: set 'bases' to a folder made by `learn-bases`")
    try:
        missing = f"no bases artifact at {url} (meta.json missing): run `python -m jobs learn-bases` or fix 'bases'"
        fs, meta_path = location.member("meta.json", ArtifactError(missing))
        with fs.open(meta_path, "r") as f:
            raw = json.load(f)
        with fs.open(posixpath.join(posixpath.dirname(meta_path), "bases.npy"), "rb") as f:
            H = _load_npy(f.read())
    except ArtifactError:
        raise
    except (ValueError, OSError, json.JSONDecodeError, EOFError, MemoryError) as exc:
        raise ArtifactError(f"bases artifact at {url} cannot be read ({exc}); relearn it") from None
    if not isinstance(raw, dict):
        raise ArtifactError(f"bases artifact at {url}: meta.json must be a JSON object")
    raw.pop("fingerprint", None)
    known = {f.name for f in dataclasses.fields(BasesMeta)}
    try:
        meta = BasesMeta(**{k: v for k, v in raw.items() if k in known})
        meta = dataclasses.replace(
            meta,
            image_shape=(int(meta.image_shape[0]), int(meta.image_shape[1])),
            k=int(meta.k),
            n_pixels=int(meta.n_pixels),
            channels=int(meta.channels),
            patch_size=int(meta.patch_size),
        )
    except (TypeError, ValueError, IndexError) as exc:
        raise ArtifactError(f"bases artifact at {url}: meta.json is malformed ({exc})") from None
    validate_bases(H, meta, where=f"bases artifact at {url}")
    return Bases(H=H, meta=meta)


# ----------------------------------------------------------------------------- SR models

SR_WEIGHTS_FILE = "model.safetensors"
SR_META_FILE = "meta.json"
SR_FORMAT = "imrestore-sr"


@dataclasses.dataclass(frozen=True)
class SRArtifact:
    """An SR model as stored: ``tensors`` name -> array (float32 weights, int64 counters) and
    ``meta`` (JSON object with at least ``format``, ``architecture`` and ``degrade``)."""

    tensors: dict[str, np.ndarray]
    meta: dict[str, Any]

    def fingerprint(self) -> str:
        return tensors_fingerprint(self.tensors)


def tensors_fingerprint(tensors: dict[str, np.ndarray]) -> str:
    """A short hash of names, shapes, dtypes and values (order-independent)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        h.update(f"{name}:{arr.dtype.str}:{arr.shape};".encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:16]


def validate_sr(tensors: dict[str, np.ndarray], meta: dict[str, Any], where: str = "SR model") -> None:
    """Refuse weights with NaN/Inf, a meta.json without the keys a loader needs, or weights that
    do not match the fingerprint recorded in meta.json (a swapped or damaged file)."""
    if not isinstance(meta, dict) or meta.get("format") != SR_FORMAT:
        raise ArtifactError(f"{where}: meta.json is not an SR model's (format must be {SR_FORMAT!r})")
    for key in ("architecture", "degrade"):
        if not isinstance(meta.get(key), dict):
            raise ArtifactError(f"{where}: meta.json has no '{key}' object; the artifact is corrupt")
    if not tensors:
        raise ArtifactError(f"{where}: {SR_WEIGHTS_FILE} holds no tensors")
    for name, arr in tensors.items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ArtifactError(f"{where}: tensor {name} holds NaN or Inf values; retrain the model")
    recorded = meta.get("fingerprint")
    if recorded is not None and recorded != tensors_fingerprint(tensors):
        raise ArtifactError(f"{where}: {SR_WEIGHTS_FILE} does not match the fingerprint in meta.json; it is corrupt")


def save_sr_model(artifact: SRArtifact, location: Location) -> dict[str, Any]:
    """Write ``model.safetensors`` then ``meta.json`` (last: its presence marks completion).

    Returns the meta as written (with ``fingerprint``).
    """
    meta = dict(artifact.meta)
    meta.setdefault("format", SR_FORMAT)
    meta["fingerprint"] = artifact.fingerprint()
    tensors = {k: np.ascontiguousarray(v) for k, v in artifact.tensors.items()}
    validate_sr(tensors, meta)
    write_safetensors_artifact(tensors, meta, location)
    return meta


def write_safetensors_artifact(tensors: dict[str, np.ndarray], meta: dict[str, Any], location: Location) -> None:
    """Write a model folder: ``model.safetensors``, then ``meta.json`` (its presence marks completion)."""
    from safetensors.numpy import save as st_save

    fs, root = location.filesystem()
    fs.makedirs(root, exist_ok=True)
    with fs.open(posixpath.join(root, SR_WEIGHTS_FILE), "wb") as f:
        f.write(st_save(tensors, metadata={"format": str(meta["format"])}))
    with fs.open(posixpath.join(root, SR_META_FILE), "w") as f:
        json.dump(meta, f, indent=2, allow_nan=True)


def read_safetensors_artifact(location: Location, what: str, missing_hint: str) -> tuple[dict[str, np.ndarray], Any]:
    """(tensors, meta.json's content) of a model folder; one ArtifactError line on any failure."""
    from safetensors import SafetensorError
    from safetensors.numpy import load as st_load

    url = location.path
    try:
        fs, root = location.filesystem()
        meta_path = posixpath.join(root, SR_META_FILE)
        if not fs.exists(meta_path):
            raise ArtifactError(f"no {what} at {url} (meta.json missing): {missing_hint}")
        with fs.open(meta_path, "r") as f:
            meta = json.load(f)
        with fs.open(posixpath.join(root, SR_WEIGHTS_FILE), "rb") as f:
            tensors = st_load(f.read())
    except ArtifactError:
        raise
    except (ValueError, OSError, json.JSONDecodeError, EOFError, SafetensorError) as exc:
        raise ArtifactError(f"{what} at {url} cannot be read ({type(exc).__name__}: {exc}); retrain it") from None
    return tensors, meta


def load_sr_model(location: Location) -> SRArtifact:
    """Load and validate an SR model artifact (safetensors: no code runs on load).

    Every failure is one :class:`ArtifactError` line naming the artifact.
    """
    if not location.path:
        raise ArtifactError("no SR model given: set 'sr.model' to a folder made by `train-sr`")
    tensors, meta = read_safetensors_artifact(
        location, "SR model", "run `python -m jobs train-sr` first or fix 'sr.model'"
    )
    validate_sr(tensors, meta, where=f"SR model at {location.path}")
    return SRArtifact(tensors=tensors, meta=meta)
