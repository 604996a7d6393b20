"""Choosing the torch device: ``auto`` uses CUDA when present, else the CPU."""

from __future__ import annotations

import torch

from restore_core.errors import UserError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> cuda if available else cpu; ``"cuda"`` without a GPU is a UserError."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            "device: cuda was asked for but no CUDA GPU is visible here; set device: auto (or cpu) to run on the CPU"
        )
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise UserError(f"device must be auto, cpu or cuda, got {device!r}")
    return torch.device(device)
