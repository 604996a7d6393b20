"""SR models on storage: the network <-> its artifact (safetensors + meta.json), save and load.

:mod:`restore_core.sr` is the model only (network, degrade, training, inference); the file format
and its checks are :mod:`restore_core.io.artifacts`'. This module is the one place that joins them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from restore_core import sr
from restore_core.config import SRConfig, SRDegradeConfig
from restore_core.device import resolve_device
from restore_core.errors import ArtifactError
from restore_core.io.artifacts import SR_FORMAT, SRArtifact, load_sr_model, save_sr_model
from restore_core.io.locations import Location


def model_artifact(net: sr.SRNet, degrade_cfg: SRDegradeConfig, **extra: Any) -> SRArtifact:
    """The net's weights (CPU float32; BatchNorm's counter as int64) and meta for saving."""
    inner = getattr(net, "module", net)  # unwrap DistributedDataParallel
    base: sr.SRNet = inner if isinstance(inner, sr.SRNet) else net
    tensors = {k: v.detach().cpu().contiguous().numpy() for k, v in base.state_dict().items()}
    meta = {
        "format": SR_FORMAT,
        "version": 1,
        "architecture": base.architecture(),
        "param_count": sr.param_count(base),
        "degrade": dataclasses.asdict(degrade_cfg),
        **extra,
    }
    return SRArtifact(tensors=tensors, meta=meta)


def save_model(net: sr.SRNet, degrade_cfg: SRDegradeConfig, location: Location, **extra: Any) -> dict[str, Any]:
    """Write the model artifact (safetensors + meta.json) to an fsspec folder; returns the meta."""
    return save_sr_model(model_artifact(net, degrade_cfg, **extra), location)


def model_from_artifact(artifact: SRArtifact, device: torch.device | str = "cpu") -> sr.SRModel:
    """Build the net described by meta.json and load the weights (strict: names and shapes)."""
    net = sr.net_from_architecture(artifact.meta["architecture"])
    try:
        deg = SRDegradeConfig(**artifact.meta["degrade"])
        if deg.filter not in ("nearest", "bilinear", "bicubic", "area") or not deg.scale > 0:
            raise ValueError(f"bad degrade {artifact.meta['degrade']}")
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"SR model meta.json has bad degrade settings ({exc})") from None
    state = {k: torch.from_numpy(np.array(v)) for k, v in artifact.tensors.items()}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise ArtifactError(f"SR model weights do not match its architecture in meta.json: {detail}") from None
    dev = resolve_device(device)
    net.to(dev).eval()
    return sr.SRModel(net=net, degrade=deg, meta=dict(artifact.meta), device=dev)


def load_model(location: Location, device: torch.device | str = "cpu") -> sr.SRModel:
    """Load an SR model artifact folder onto ``device``; no pickle involved."""
    return model_from_artifact(load_sr_model(location), device)


def load_sr_apply(sr_cfg: SRConfig, device: torch.device | str = "auto") -> Callable[[np.ndarray], np.ndarray]:
    """The callable ``restore_core.pipeline.Restorer`` takes as ``sr_apply``, for the model at
    ``sr_cfg.model_location``.

    It maps a float32 (H, W) or (H, W, C) image in [0, 1] to the SR output: same size when
    ``sr_cfg.scale`` is 1, else enlarged by that factor (resize with the training filter, then
    the CNN), tiled by ``sr_cfg.tile`` with ``sr_cfg.tile_overlap`` pixels of context.
    """
    model = load_model(sr_cfg.model_location, device)
    apply = sr.apply_fn(model, sr_cfg)
    apply.model = model  # type: ignore[attr-defined]  # for callers that want the meta
    return apply


def apply_from_artifact(
    artifact: SRArtifact, sr_cfg: SRConfig, device: torch.device | str = "auto"
) -> Callable[[np.ndarray], np.ndarray]:
    """The per-image SR callable of an artifact already in memory (e.g. shipped through Ray's
    object store), with the settings of ``sr_cfg``."""
    return sr.apply_fn(model_from_artifact(artifact, device), sr_cfg)
