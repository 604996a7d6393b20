"""NMF bases: the core's central type (the learned dictionary and what it was made for) and its checks.

Pure data and numpy: storage (``bases.npy`` + ``meta.json`` on any fsspec URL) lives in
:mod:`restore_core.io.artifacts`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np

from restore_core.errors import ArtifactError


@dataclasses.dataclass(frozen=True)
class BasesMeta:
    """What the bases were made for.

    ``mode`` global: ``image_shape`` (H, W) is the image size; patch: ``patch_size`` p.
    ``channels`` is 1 (gray, also applied per channel to colour images) or 3 (RGB).
    """

    mode: str
    k: int
    n_pixels: int
    channels: int
    patch_size: int = 0
    image_shape: tuple[int, int] = (0, 0)
    solver: str = "hals"
    l1: float = 0.0
    loss: float = float("nan")
    n_samples: int = 0
    data_fingerprint: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def describe(self) -> str:
        if self.mode == "global":
            h, w = self.image_shape
            return f"global {w}x{h}x{self.channels}, k={self.k}"
        return f"patch {self.patch_size}x{self.patch_size}x{self.channels}, k={self.k}"


@dataclasses.dataclass(frozen=True)
class Bases:
    H: np.ndarray  # (k, n_pixels) float32, non-negative
    meta: BasesMeta

    def fingerprint(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.H).tobytes()).hexdigest()[:16]


def expected_pixels(meta: BasesMeta) -> int:
    if meta.mode == "global":
        return int(meta.image_shape[0] * meta.image_shape[1] * meta.channels)
    return int(meta.patch_size * meta.patch_size * meta.channels)


def validate_bases(H: np.ndarray, meta: BasesMeta, where: str = "bases") -> None:
    """Refuse bases that do not match their meta, hold NaN/Inf, or are negative."""
    if meta.mode not in ("global", "patch"):
        raise ArtifactError(f"{where}: meta.json mode must be 'global' or 'patch', got {meta.mode!r}")
    if meta.channels not in (1, 3):
        raise ArtifactError(f"{where}: meta.json channels must be 1 or 3, got {meta.channels}")
    if meta.k < 1:
        raise ArtifactError(f"{where}: meta.json k must be at least 1, got {meta.k}")
    if meta.mode == "patch" and meta.patch_size < 1:
        raise ArtifactError(f"{where}: meta.json patch_size must be at least 1, got {meta.patch_size}")
    if meta.mode == "global" and min(meta.image_shape) < 1:
        raise ArtifactError(f"{where}: meta.json image_shape must be positive, got {list(meta.image_shape)}")
    if H.ndim != 2 or H.dtype != np.float32:
        raise ArtifactError(f"{where}: bases.npy must be a 2-D float32 array, got {H.dtype} {H.shape}")
    if H.shape != (meta.k, meta.n_pixels) or meta.n_pixels != expected_pixels(meta):
        raise ArtifactError(
            f"{where}: bases.npy has shape {H.shape} but meta.json describes "
            f"{meta.describe()} ({meta.k} x {expected_pixels(meta)}); the artifact is corrupt"
        )
    if not np.isfinite(H).all():
        raise ArtifactError(f"{where}: bases.npy holds NaN or Inf values; relearn the bases")
    if (H < 0).any():
        raise ArtifactError(f"{where}: bases.npy holds negative values; NMF bases are non-negative")


def data_fingerprint(X: np.ndarray) -> str:
    """A short hash of training data (shape + content), recorded in meta.json."""
    h = hashlib.sha256(str(X.shape).encode())
    h.update(np.ascontiguousarray(X, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]
