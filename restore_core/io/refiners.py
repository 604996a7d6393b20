"""The inpainting refiner's artifact (``train-inpaint``): save, load, validate, build. No pickle.

A folder (any fsspec URL) with ``model.safetensors`` (the network's state dict as plain arrays)
and ``meta.json``: ``format`` (``imrestore-refiner``), ``spec`` (the
:class:`restore_core.refiner.RefinerSpec` fields that rebuild the network), ``training``
(settings and per-epoch results), ``data_fingerprint`` (the training data's listing),
``bases_fingerprint`` (the NMF bases it takes as an input; "" = none) and ``fingerprint``, the
content hash of the weights, which the restore job records in its manifest and resume
fingerprint. Loading checks everything, down to the weights fitting the spec's network, and
every failure is one :class:`~restore_core.errors.ArtifactError` line naming the artifact.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from restore_core.errors import ArtifactError
from restore_core.io.artifacts import (
    SR_WEIGHTS_FILE,
    read_safetensors_artifact,
    tensors_fingerprint,
    write_safetensors_artifact,
)
from restore_core.io.locations import Location
from restore_core.refiner import RefinerSpec, build_refiner

REFINER_FORMAT = "imrestore-refiner"


@dataclasses.dataclass(frozen=True)
class RefinerArtifact:
    """A refiner as stored: ``tensors`` (name -> float32 array) and ``meta`` (meta.json's object)."""

    tensors: dict[str, np.ndarray]
    meta: dict[str, Any]

    def fingerprint(self) -> str:
        """The content hash of the weights (names, shapes, dtypes, values)."""
        return tensors_fingerprint(self.tensors)

    @property
    def bases_fingerprint(self) -> str:
        return str(self.meta.get("bases_fingerprint") or "")

    @property
    def held_out_gain_db(self) -> float | None:
        """dB the refiner gained over its own fill on hidden pixels of held-out damaged rows, in
        its last training epoch (train-inpaint's validation); None when training measured none."""
        history = (self.meta.get("training") or {}).get("history") or []
        last = history[-1] if history and isinstance(history[-1], dict) else {}
        try:
            gain = float(last["val_psnr_hidden"]) - float(last["val_psnr_hidden_fill"])
        except (KeyError, TypeError, ValueError):
            return None
        return gain if np.isfinite(gain) else None

    def spec(self, where: str = "refiner") -> RefinerSpec:
        """The :class:`RefinerSpec` in meta.json; one ArtifactError line when it is not one."""
        raw = self.meta.get("spec")
        if not isinstance(raw, dict):
            raise ArtifactError(f"{where}: meta.json has no 'spec' object; the artifact is corrupt")
        known = {f.name for f in dataclasses.fields(RefinerSpec)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ArtifactError(f"{where}: meta.json spec has unknown field {unknown[0]!r} (made by a newer version?)")
        try:
            return RefinerSpec(**raw)
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"{where}: meta.json spec is invalid ({exc})") from None


def refiner_artifact(net: nn.Module, spec: RefinerSpec, **meta: Any) -> RefinerArtifact:
    """The artifact of a network (weights copied to the CPU) and its spec; ``meta`` adds
    ``training``, ``data_fingerprint``, ``bases_fingerprint``."""
    tensors = {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}
    return RefinerArtifact(tensors=tensors, meta={"format": REFINER_FORMAT, "spec": dataclasses.asdict(spec), **meta})


def build_from_artifact(
    artifact: RefinerArtifact, device: torch.device | str = "cpu", where: str = "refiner"
) -> nn.Module:
    """The network the spec describes with the stored weights loaded strictly (names and
    shapes), in eval mode on ``device``."""
    net = build_refiner(artifact.spec(where))
    state = {k: torch.from_numpy(np.array(v)) for k, v in artifact.tensors.items()}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).strip().splitlines()[:3])
        raise ArtifactError(f"{where}: the weights do not fit the spec in meta.json: {detail}") from None
    return net.to(device).eval()


def validate_refiner(artifact: RefinerArtifact, where: str = "refiner") -> None:
    """Refuse another kind of meta.json, NaN/Inf weights, weights that do not match the recorded
    content hash, and weights that do not fit the spec's network (built on the CPU)."""
    meta = artifact.meta
    if not isinstance(meta, dict) or meta.get("format") != REFINER_FORMAT:
        raise ArtifactError(f"{where}: meta.json is not a refiner's (format must be {REFINER_FORMAT!r})")
    if not artifact.tensors:
        raise ArtifactError(f"{where}: {SR_WEIGHTS_FILE} holds no tensors")
    for name, arr in artifact.tensors.items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ArtifactError(f"{where}: tensor {name} holds NaN or Inf values; retrain the refiner")
    recorded = meta.get("fingerprint")
    if recorded is not None and recorded != artifact.fingerprint():
        raise ArtifactError(f"{where}: {SR_WEIGHTS_FILE} does not match the fingerprint in meta.json; it is corrupt")
    build_from_artifact(artifact, "cpu", where)


def save_refiner(artifact: RefinerArtifact, location: Location) -> dict[str, Any]:
    """Validate, then write ``model.safetensors`` and ``meta.json`` (last); returns the meta as
    written, with ``fingerprint``."""
    meta = {**artifact.meta, "fingerprint": artifact.fingerprint()}
    meta.setdefault("format", REFINER_FORMAT)
    tensors = {k: np.ascontiguousarray(v) for k, v in artifact.tensors.items()}
    validate_refiner(RefinerArtifact(tensors, meta))
    write_safetensors_artifact(tensors, meta, location)
    return meta


def load_refiner(location: Location) -> RefinerArtifact:
    """Load and validate a refiner artifact (safetensors: no code runs on load)."""
    if not location.path:
        raise ArtifactError("no refiner given: set 'refiner' to a folder made by `train-inpaint`")
    tensors, meta = read_safetensors_artifact(
        location, "refiner", "run `python -m jobs train-inpaint` first or fix 'refiner'"
    )
    artifact = RefinerArtifact(tensors=tensors, meta=meta)
    validate_refiner(artifact, where=f"refiner at {location.path}")
    return artifact
