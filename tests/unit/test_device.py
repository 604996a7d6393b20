"""Device choice and the restoring process's allocator setting."""

from __future__ import annotations

import platform
import sys

import pytest
import torch

from restore_core import device as device_mod
from restore_core.device import keep_freed_memory, resolve_device
from restore_core.errors import UserError


def test_auto_and_cpu_resolve_and_bad_names_are_user_errors():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="auto, cpu or cuda"):
        resolve_device("tpu")


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only"
)
def test_keep_freed_memory_sets_glibc_and_can_be_called_again():
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True
    x = torch.ones(5 << 20)  # 20 MiB: now from the heap, freed and reused
    del x
    assert float(torch.ones(5 << 20).sum()) == 5 << 20


def test_keep_freed_memory_is_a_no_op_elsewhere(monkeypatch):
    monkeypatch.setattr(device_mod.sys, "platform", "darwin")
    assert keep_freed_memory() is False
