"""The default restore path on a CUDA device gives what it gives on the CPU (run with ``-m gpu``
on a machine with a GPU; skipped elsewhere)."""

import pytest
import torch

from restore_core.blend import blend_fill
from restore_core.fill import both_fills
from restore_core.refiner import RefinerSpec, build_refiner, refine
from restore_core.sparse_fill import SparseSpec, sparse_fill, sparse_specs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


def _batch(n: int = 4, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(n, 1, 8, 8, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True).clamp(0, 1)
    dead = torch.rand(n, 1, size, size, generator=g) < 0.5
    return x, dead


def test_fills_match_the_cpu():
    x, dead = _batch()
    cpu = both_fills(x, dead)
    gpu = both_fills(x.cuda(), dead.cuda())
    for a, b in zip(cpu, gpu, strict=True):
        assert torch.allclose(a, b.cpu(), atol=1e-4)


def test_sparse_fill_and_refine_match_the_cpu():
    x, dead = _batch()
    start = both_fills(x, dead)[1]
    spec = SparseSpec()
    cpu = sparse_fill(x, dead, start, spec)
    gpu = sparse_fill(x.cuda(), dead.cuda(), start.cuda(), spec).cpu()
    assert abs(_psnr(cpu, x) - _psnr(gpu, x)) < 0.05  # thresholds may flip on rounding: compare quality
    model = build_refiner(RefinerSpec())
    out_cpu = refine(model, x, dead, sparse=spec)
    out_gpu = refine(model.cuda(), x.cuda(), dead.cuda(), sparse=spec).cpu()
    keep = ~dead.expand_as(x)
    assert torch.equal(out_gpu[keep], x[keep])
    assert abs(_psnr(out_cpu, x) - _psnr(out_gpu, x)) < 0.05


def test_the_no_training_blend_and_both_sparse_fills_match_the_cpu():
    x, dead = _batch(3, 96)
    specs = sparse_specs()
    cpu = blend_fill(x, dead, specs)
    gpu = blend_fill(x.cuda(), dead.cuda(), specs).cpu()
    keep = ~dead.expand_as(x)
    assert torch.equal(gpu[keep], x[keep])
    assert abs(_psnr(cpu, x) - _psnr(gpu, x)) < 0.05
    model = build_refiner(RefinerSpec())
    out_cpu = refine(model, x, dead, sparse=specs)
    out_gpu = refine(model.cuda(), x.cuda(), dead.cuda(), sparse=specs).cpu()
    assert abs(_psnr(out_cpu, x) - _psnr(out_gpu, x)) < 0.05
