"""A sparse-transform fill: dead pixels re-estimated so that every overlapping block of the image
has few large DCT coefficients, batched in torch on whatever device the tensors are on.

Iterative hard thresholding with cycle spinning (Guleryuz, "Nonlinear approximation based image
recovery using adaptive sparse reconstructions", IEEE TIP 2006; Elad, Starck, Querre and Donoho,
"Simultaneous cartoon and texture image inpainting using morphological component analysis",
ACHA 2005): starting from a cheap fill, each iteration takes the orthonormal DCT of every
``block`` x ``block`` block on several shifted block grids, zeroes coefficients under a
threshold (the block's mean is always kept), transforms back, averages the grids and puts the
observed pixels back. The threshold decreases geometrically from ``lam_start`` to ``lam_end``
(in units of the [0, 1] pixel range), so large, sure structures settle first and fine texture
last. Where a photo has edges and texture that a smooth interpolant blurs, this recovers
several dB over the biharmonic fill between scattered pixels (docs/restore.md); inside large
holes it needs many iterations, and on flat content (digits on black) it can add ringing, which
is why the restore path blends it in with weights measured on each image
(:func:`restore_core.refiner_calibration.calibration`).

Images are float32 (B, C, H, W) in [0, 1]; dead masks are bool (B, 1, H, W), True = dead,
shared by the channels. Each image is processed on its own (its channels thresholded jointly:
a cosine is kept or dropped in all of them at once), so a result does not depend on the rest of
the batch. Everything is a few batched matrix products and
element-wise passes: no per-image CPU step, the same code on a GPU.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from restore_core.fill import box_reduce


@dataclasses.dataclass(frozen=True)
class SparseSpec:
    """Settings of :func:`sparse_fill` (JSON-simple).

    ``iters`` thresholding iterations (0 = off), ``block`` DCT block side, ``step`` distance
    between the shifted block grids ((block / step)^2 grids: more = smoother, slower),
    ``lam_start`` / ``lam_end`` the first and last threshold. Images whose holes are thin
    (scattered pixels, one-pixel lines: :func:`hole_scale`) start lower, at
    ``thin_lam_start``, and take ``thin_iters`` of the iterations (a fraction): their holes
    need no coarse-to-fine pass, and a high first threshold throws away the detail the start
    already has (:func:`schedule`). Images with large holes (blocks covering half the image)
    take up to ``heavy_iters`` times the iterations: the coarse-to-fine pass has further to go;
    dense scattered pixels (70 % dead) up to ``dense_iters`` times. ``momentum`` extrapolates
    each iteration's change at the holes (``x = y + momentum (y - y_prev)``, a heavy-ball step):
    the same quality in fewer iterations.
    Chosen on the train split of the benchmark's image sets (docs/restore.md, "The
    sparse-transform fill").
    """

    iters: int = 50
    block: int = 16
    step: int = 4
    lam_start: float = 0.3
    lam_end: float = 0.002
    thin_lam_start: float = 0.1
    thin_iters: float = 0.5
    heavy_iters: float = 3.0
    dense_iters: float = 2.0
    momentum: float = 0.5

    def __post_init__(self) -> None:
        if self.iters < 0:
            raise ValueError(f"sparse iters must be >= 0, got {self.iters}")
        if self.block < 2 or self.step < 1 or self.block % self.step:
            raise ValueError(f"sparse block must be >= 2 and a multiple of step, got {self.block}, {self.step}")
        if not 0 < self.lam_end <= self.lam_start or self.thin_lam_start <= 0:
            raise ValueError(
                "sparse thresholds must satisfy 0 < lam_end <= lam_start and thin_lam_start > 0, got "
                f"{self.lam_end}, {self.lam_start}, {self.thin_lam_start}"
            )
        if not 0 < self.thin_iters <= 1:
            raise ValueError(f"sparse thin_iters is a fraction in (0, 1], got {self.thin_iters}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"sparse momentum must be in [0, 1), got {self.momentum}")
        if self.heavy_iters < 1 or self.dense_iters < 1:
            raise ValueError(
                f"sparse heavy_iters and dense_iters are factors >= 1, got {self.heavy_iters}, {self.dense_iters}"
            )


#: What the restorers take: one spec, several (each one more calibrated direction), or None.
Sparse = SparseSpec | Sequence[SparseSpec] | None


def sparse_specs(iters: int = SparseSpec.iters) -> tuple[SparseSpec, ...]:
    """The fills the restorers blend in (``fit.sparse_iters`` = ``iters``; 0 = none): 16 x 16
    blocks (step 4) for edges and texture, and 8 x 8 blocks (step 2) for finer detail (faces,
    strokes), each its own calibrated direction. The second one was measured on the train split
    (docs/restore.md): +0.1..+0.8 dB on faces and digits, within -0.2..+0.3 elsewhere."""
    if iters <= 0:
        return ()
    return (SparseSpec(iters=iters), SparseSpec(iters=iters, block=8, step=2))


def active_specs(sparse: Sparse) -> list[SparseSpec]:
    """``sparse`` as a list of the specs that run (``iters`` > 0)."""
    if sparse is None:
        return []
    specs = [sparse] if isinstance(sparse, SparseSpec) else list(sparse)
    return [s for s in specs if s.iters > 0]


def dct_matrix(n: int, dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> torch.Tensor:
    """The orthonormal DCT-II matrix (n, n): row u is the u-th cosine."""
    k = torch.arange(n, dtype=torch.float64)
    c = torch.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c.to(dtype=dtype, device=device)


#: Hole scales (:func:`hole_scale`) at and under which an image gets the thin-hole schedule, at
#: which the spec's own, and at and over which ``heavy_iters`` times its iterations (see
#: :func:`schedule`). The benchmark's masks (64x64 and 256x256): scattered 10-70 % and lines
#: 10-50 % measure 1.00-1.27, lines 70 % 1.14-1.63, blocks of side 2-8 at 10 / 30 / 50 / 70 %
#: 1.52-1.87 / 1.71-1.88 / 1.88-2.18 / 2.25-2.55.
THIN_SCALE, THICK_SCALE, HEAVY_SCALE = 1.1, 1.7, 2.3
#: Dead fractions at and under which thin holes take ``thin_iters`` of the iterations, and at and
#: over which ``dense_iters`` times all of them (dense scattered pixels: the fill has more to
#: rebuild). The probes of a 50 % image hide ~62 %: under the ramp, so the CPU throughput case
#: keeps its cost (a ramp from 50 % cost it ~25 %, measured).
SPARSE_RATE, DENSE_RATE = 0.65, 0.75


@torch.no_grad()
def hole_scale(dead: torch.Tensor, cap: int = 8) -> torch.Tensor:
    """How thick an image's holes are: the mean, over its dead pixels, of the chessboard distance
    to the nearest observed pixel (1 = every dead pixel touches an observed one), counted up to
    ``cap``; (B,) float32, 0 for an image with no dead pixel. ``dead`` is bool (B, 1, H, W)."""
    cur = dead.to(torch.bool)
    count = cur.flatten(1).sum(1).to(torch.float32)
    total = torch.zeros_like(count)
    for _ in range(cap):
        if not bool(cur.any()):
            break
        total += cur.flatten(1).sum(1).to(torch.float32)
        # erosion: a pixel stays a hole when its whole 3x3 neighbourhood is one (the border counts
        # as a hole, so a hole at the edge is measured by its distance to observed pixels only)
        cur = ~box_reduce(~cur, 1, torch.logical_or, False)
    return total / count.clamp_min(1.0)


def schedule(spec: SparseSpec, scale: float, rate: float = 0.0) -> SparseSpec:
    """``spec`` for an image of hole scale ``scale`` and dead fraction ``rate``: the thin-hole
    schedule (``thin_lam_start``, ``thin_iters`` of the iterations) at and under
    :data:`THIN_SCALE`; ``spec`` itself at :data:`THICK_SCALE`; ``heavy_iters`` times its
    iterations at and over :data:`HEAVY_SCALE`. Between, in quarter steps, the first threshold
    moves geometrically and the iteration count linearly. Thin holes get all the iterations
    again as ``rate`` goes from :data:`SPARSE_RATE` to :data:`DENSE_RATE`, and then
    ``dense_iters`` times them (fading out as the holes thicken). ``thin_lam_start`` is
    kept within ``[lam_end, lam_start]``. Measured on the train split (docs/restore.md): lines
    +0.2 dB and 40 % less work on thin holes; blocks at 50-70 % +0.2..+0.8 dB for up to 3x the
    work on those images."""
    u = min(1.0, max(0.0, (scale - THIN_SCALE) / (THICK_SCALE - THIN_SCALE)))
    u = round(u * 4) / 4
    r = min(1.0, max(0.0, (rate - SPARSE_RATE) / (DENSE_RATE - SPARSE_RATE)))
    r = round(r * 4) / 4
    v = min(1.0, max(0.0, (scale - THICK_SCALE) / (HEAVY_SCALE - THICK_SCALE)))
    v = round(v * 4) / 4
    thin = min(spec.lam_start, max(spec.lam_end, spec.thin_lam_start))
    lam = thin * (spec.lam_start / thin) ** u
    share = (spec.thin_iters + (1.0 - spec.thin_iters) * max(u, r)) * (1.0 + (spec.heavy_iters - 1.0) * v)
    share *= 1.0 + (spec.dense_iters - 1.0) * r * (1.0 - u)
    return dataclasses.replace(spec, iters=math.ceil(spec.iters * share), lam_start=lam)


#: Planes times padded pixels times 4 (live temporaries) per chunk (bounds memory, ~256 MiB of float32).
CHUNK_ELEMENTS = 1 << 26


@torch.no_grad()
def sparse_fill(images: torch.Tensor, dead: torch.Tensor, start: torch.Tensor, spec: SparseSpec) -> torch.Tensor:
    """Fill dead pixels by iterative DCT hard thresholding, started from ``start``.

    Parameters
    ----------
    images : Tensor (B, C, H, W) float32 in [0, 1]; values at dead pixels are ignored
    dead : Tensor (B, 1, H, W) bool, True = to fill
    start : Tensor (B, C, H, W), a first fill (e.g. the biharmonic one)
    spec : SparseSpec

    Returns
    -------
    Tensor (B, C, H, W) float32 in [0, 1]; observed pixels are the input's, bit for bit.
    ``spec.iters`` = 0 returns ``start`` with the observed pixels put back.
    """
    if images.ndim != 4 or dead.ndim != 4 or dead.shape[1] != 1 or dead.shape[0] != images.shape[0]:
        raise ValueError(
            f"images must be (B, C, H, W) and dead (B, 1, H, W), got {tuple(images.shape)}, {tuple(dead.shape)}"
        )
    if start.shape != images.shape:
        raise ValueError(f"start must have the images' shape {tuple(images.shape)}, got {tuple(start.shape)}")
    dead = dead.to(torch.bool)
    c, h, w = images.shape[1:]
    out = torch.where(dead, start, images)
    if spec.iters == 0 or not bool(dead.any()):
        return out
    # each image its own schedule by how thick its holes are; images that share one run together
    groups: dict[SparseSpec, list[int]] = {}
    rates = dead.flatten(1).to(torch.float32).mean(1).tolist()
    for i, scale in enumerate(hole_scale(dead).tolist()):
        groups.setdefault(schedule(spec, scale, rates[i]), []).append(i)
    n = spec.block
    per_plane = 4 * (h + 3 * n) * (w + 3 * n)
    size = max(1, CHUNK_ELEMENTS // (per_plane * c))  # images a chunk
    for sched, members in groups.items():
        for j in range(0, len(members), size):
            idx = torch.tensor(members[j : j + size], device=out.device)
            planes = out[idx].reshape(-1, h, w)
            hole = dead[idx].expand(-1, c, h, w).reshape(-1, h, w)
            out[idx] = _fill_planes(planes, hole, sched, group=c).reshape(-1, c, h, w)
    return out.clamp_(0.0, 1.0)


@torch.no_grad()
def add_sparse_fill(
    out: torch.Tensor,
    weight: torch.Tensor,
    images: torch.Tensor,
    dead: torch.Tensor,
    start: torch.Tensor,
    spec: SparseSpec,
) -> None:
    """``out += weight * (sparse_fill - start)`` in place, per image (``weight`` (B,)), running the
    fill only on the images whose weight is not 0 (each image is filled on its own, so the others
    change nothing)."""
    idx = torch.nonzero(weight != 0)[:, 0]
    if idx.numel():
        filled = sparse_fill(images[idx], dead[idx], start[idx], spec)
        out[idx] += weight[idx].view(-1, 1, 1, 1).to(out.dtype) * (filled - start[idx])


def _fill_planes(x: torch.Tensor, hole: torch.Tensor, spec: SparseSpec, group: int = 1) -> torch.Tensor:
    """:func:`sparse_fill` on planes (N, H, W); ``x`` holds the start at ``hole``. Each run of
    ``group`` planes (the channels of one image) is thresholded jointly: a coefficient is kept in
    all of them when its RMS over them is over the threshold (an edge is at the same place in R, G
    and B; measured on the train split's colour sets: +0.09 dB mean, docs/restore.md).

    Cycle spinning by rotation: of the (block / step)^2 shifted grids, an iteration uses
    block / step of them, one for each horizontal and one for each vertical offset (a Latin
    square: grid i has offsets (i, i + t) mod block / step at iteration t), so every grid is
    visited once in block / step iterations. Measured on the benchmark's train split: within
    0.1 dB of using every grid every iteration, 2.3x faster (docs/restore.md).
    """
    n, step = spec.block, spec.step
    cm = dct_matrix(n, x.dtype, x.device)
    cmt = cm.T.contiguous()
    # the row transforms of g side-by-side blocks as one product with a block-diagonal matrix
    # at least 16 wide: the same numbers, and a CPU's matrix product runs ~3x faster on 8x8
    # blocks than with an 8-wide matrix (measured, one thread)
    g = max(1, 16 // n)
    rows_fwd, rows_inv = torch.block_diag(*[cmt] * g), torch.block_diag(*[cm] * g)
    big, h, w = x.shape
    offsets = list(range(0, n, step))
    k = len(offsets)
    hb, wb = -(-(h + n) // n), -(-(w + n) // n)  # blocks per grid: every offset covers the image
    extra = (-wb % g) * n  # zero columns on the right for whole groups (their blocks cover no pixel)
    wb += extra // n
    hp, wp = hb * n + n, wb * n + n - extra
    # reflect needs a pad shorter than the side; replicate otherwise (tiny images)
    mode = "reflect" if n < h and n < w and hp - h - n < h and wp - w - n < w else "replicate"
    given = x
    observed = x * (~hole).to(x.dtype)  # the observed pixels, 0 at the holes
    scale = hole.to(x.dtype) / k  # the grids' mean at the holes, 0 elsewhere
    push = hole.to(x.dtype) * spec.momentum  # the heavy-ball step, at the holes only
    ratio = spec.lam_end / spec.lam_start
    prev = x
    for t in range(spec.iters):
        lam = spec.lam_start * ratio ** (t / max(spec.iters - 1, 1))
        xp = F.pad(x[:, None], (n, wp - w - n, n, hp - h - n), mode=mode)[:, 0]
        if extra:
            xp = F.pad(xp, (0, extra))
        acc = torch.zeros_like(x)
        for i in range(k):
            sx, sy = offsets[i], offsets[(i + t) % k]
            # 2-D DCT of every block of this grid: rows (v) then columns (u): (N, hb, u, wb, v)
            rows = xp[:, sy : sy + hb * n, sx : sx + wb * n].reshape(big, hb * n, wb // g, g * n) @ rows_fwd
            coef = (cm @ rows.view(big, hb, n, wb * n)).view(big, hb, n, wb, n)
            mean = coef[:, :, 0, :, 0].clone()  # the blocks' means are always kept
            if group > 1:  # joint hard thresholding over the image's channels
                grouped = coef.view(big // group, group, *coef.shape[1:])
                coef = (grouped * ((grouped * grouped).sum(1, keepdim=True) > group * lam * lam)).view_as(coef)
            else:
                coef = F.hardshrink(coef, lam)  # hard thresholding: 0 where |c| <= lam
            coef[:, :, 0, :, 0] = mean
            back = (cmt @ coef.view(big, hb, n, wb * n)).view(big, hb * n, wb // g, g * n) @ rows_inv
            acc += back.view(big, hb * n, wb * n)[:, n - sy : n - sy + h, n - sx : n - sx + w]
        y = acc.mul_(scale).add_(observed)
        # heavy ball: carry on in the direction of the last step (not after the last iteration)
        x = torch.addcmul(y, y - prev, push) if spec.momentum and t < spec.iters - 1 else y
        prev = y
    # the observed pixels as given, bit for bit, even where a non-finite start spread (0 * inf)
    return torch.where(hole, x, given)
