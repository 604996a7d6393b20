"""Choosing the torch device (``auto`` uses CUDA when present, else the CPU), and the CPU
allocator setting a restoring process runs best with."""

from __future__ import annotations

import ctypes
import sys

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


#: glibc's mallopt parameters (malloc.h) and the values :func:`keep_freed_memory` sets.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_TRIM_BYTES, _PAD_BYTES, _MMAP_BYTES = 1 << 30, 64 << 20, 32 << 20


def keep_freed_memory() -> bool:
    """Let this process reuse the memory torch frees instead of giving it back to the system.

    glibc serves large blocks by ``mmap`` and returns freed heap memory at once, so each fresh
    tensor of a few MB costs page faults on every touch: a CPU forward pass of the refiner at
    256x256 spent about a third of its time there (measured, one thread). Blocks up to 32 MiB
    then come from the heap and up to 1 GiB of freed memory is kept for the next batch: the
    refiner's CPU pass runs ~1.5x faster. The price is a resident size that stays at its peak,
    which suits a worker process that restores batch after batch (the restore actors call this).
    Returns False where it does not apply (not Linux with glibc); calling it again is harmless.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: nothing to tune
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_BYTES) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, _TRIM_BYTES) == 1
    ok &= mallopt(_M_TOP_PAD, _PAD_BYTES) == 1
    return bool(ok)
