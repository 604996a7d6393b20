"""Per-image calibration of the refiner: the blend of its correction and the harmonic fill over
the biharmonic fill, measured on known pixels hidden in each image itself (used by
:func:`restore_core.refiner.refine`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from restore_core.bases import Bases
from restore_core.refiner_net import _predict
from restore_core.sparse_fill import Sparse, active_specs, sparse_fill


def _probe_region(h: int, w: int, size: int) -> tuple[slice, slice]:
    """The central ``size`` x ``size`` window (the whole image when smaller)."""
    if size <= 0:
        return slice(0, h), slice(0, w)
    ch, cw = min(h, size), min(w, size)
    y, x = (h - ch) // 2, (w - cw) // 2
    return slice(y, y + ch), slice(x, x + cw)


def _normal_equations(
    directions: list[torch.Tensor], target: torch.Tensor, where: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the Gram matrix (B, n, n) and right-hand side (B, n) of the least-squares fit
    of ``target`` by the ``directions`` (each (B, C, H, W)) on the pixels ``where``, float64."""
    n = len(directions)
    b = target.shape[0]
    gram = torch.zeros(b, n, n, dtype=torch.float64, device=target.device)
    rhs = torch.zeros(b, n, dtype=torch.float64, device=target.device)
    for i, di in enumerate(directions):
        rhs[:, i] = (di * target * where).sum(dim=(1, 2, 3)).double()
        for j in range(i, n):
            g = (di * directions[j] * where).sum(dim=(1, 2, 3)).double()
            gram[:, i, j] = gram[:, j, i] = g
    return gram, rhs


def _objective(gram: torch.Tensor, rhs: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per image, ``w G w - 2 w r``: the probes' squared error of weights ``w`` (B, n) minus the
    base fill's. (B,)"""
    return (w[:, None, :] @ gram @ w[:, :, None])[:, 0, 0] - 2 * (w * rhs).sum(dim=1)


def _box_least_squares(gram: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Per image, the weights in [0, 1] minimising ``w G w - 2 w r``: the exact box-constrained
    minimum (every face of the box is tried; a few directions only). A direction with no
    energy gets weight 0. (B, n) float64."""
    b, n = rhs.shape
    diag = torch.diagonal(gram, dim1=1, dim2=2)
    scale = diag.amax(dim=1).clamp_min(1e-30)
    used = diag > 1e-12 * scale[:, None]
    # a small ridge keeps near-parallel directions solvable; an unused direction gets 1 on its
    # diagonal (its right-hand side is 0, so its weight is 0)
    gram = gram + torch.diag_embed(1e-9 * scale[:, None].expand(b, n) + (~used).double())
    best = torch.zeros(b, n, dtype=torch.float64, device=rhs.device)
    best_obj = torch.zeros(b, dtype=torch.float64, device=rhs.device)  # weights 0: objective 0
    # each face of the box: some weights fixed at 0 or 1, the others free (solved, then kept
    # only when inside the box); the minimum over faces is the constrained minimum
    for code in range(3**n):
        state = [(code // 3**k) % 3 for k in range(n)]  # 0: fixed 0, 1: fixed 1, 2: free
        free = [k for k in range(n) if state[k] == 2]
        w = torch.tensor([1.0 if st == 1 else 0.0 for st in state], dtype=torch.float64, device=rhs.device)
        w = w.expand(b, n).clone()
        if free:
            fixed = [k for k in range(n) if state[k] != 2]
            r = rhs[:, free] - (gram[:, free][:, :, fixed] @ w[:, fixed, None])[..., 0]
            w[:, free] = torch.linalg.solve(gram[:, free][:, :, free], r[..., None])[..., 0]
        ok = ((w >= 0) & (w <= 1)).all(dim=1)
        obj = _objective(gram, rhs, w)
        better = ok & (obj < best_obj)
        best = torch.where(better[:, None], w, best)
        best_obj = torch.where(better, obj, best_obj)
    return torch.where(used, best, torch.zeros_like(best))


def _probe_masks(d: torch.Tensor, shifts: int) -> list[torch.Tensor]:
    """The probes' extra hidden pixels, bool (B, 1, h, w) each: the dead mask ``d`` shifted (by half
    the window, then by other offsets when ``shifts`` > 1) hides observed pixels, each shift in
    two probes that take half of the 8x8 tiles (a checkerboard), so a probe's damage stays near
    the image's own."""
    ph, pw = d.shape[-2:]
    offsets = [(ph // 2, pw // 2), (ph // 2, 0), (0, pw // 2), (ph // 4, (3 * pw) // 4)][: max(1, shifts)]
    yy = torch.arange(ph, device=d.device).view(ph, 1) // 8
    xx = torch.arange(pw, device=d.device).view(1, pw) // 8
    tiles = ((yy + xx) % 2 == 0).view(1, 1, ph, pw)
    out = []
    for dy, dx in offsets:
        shifted = torch.roll(d, shifts=(dy, dx), dims=(2, 3)) & ~d
        out += [shifted & tiles, shifted & ~tiles]
    return out


def _shrunk_weights(grams: list[torch.Tensor], rhss: list[torch.Tensor], strength: float) -> torch.Tensor:
    """Per image, the box-constrained least-squares weights of its probes, pulled towards the
    whole batch's (pooled over its images) by a ridge ``strength`` times the image's own probe
    energy (0 = each image on its own). (B, n) float64."""
    gram, rhs = sum(grams), sum(rhss)
    assert isinstance(gram, torch.Tensor) and isinstance(rhs, torch.Tensor)
    if strength <= 0 or gram.shape[0] == 1:
        return _box_least_squares(gram, rhs)
    pooled = _box_least_squares(gram.sum(0, keepdim=True), rhs.sum(0, keepdim=True))
    lam = strength * torch.diagonal(gram, dim1=1, dim2=2).mean(dim=1)
    eye = torch.eye(gram.shape[1], dtype=gram.dtype, device=gram.device)
    return _box_least_squares(gram + lam[:, None, None] * eye, rhs + lam[:, None] * pooled)


def _drop_small_gains(
    weights: torch.Tensor,
    gram: torch.Tensor,
    rhs: torch.Tensor,
    miss: torch.Tensor,
    costly: Sequence[int],
    min_gain: float,
) -> torch.Tensor:
    """``weights`` (B, n) with each of the ``costly`` directions in turn set to 0 (and the others
    refitted) on the images where that leaves the squared error ``miss + w G w - 2 w r`` within
    ``min_gain * miss`` of the full fit's (so all the drops of an image together cost at most that
    much); a direction already at 0 stays out of the later refits. See :func:`probe_weights`.
    (B, n) float64."""
    keep = torch.ones_like(weights, dtype=torch.bool)
    budget = _objective(gram, rhs, weights) + min_gain * miss  # the full fit's, plus the allowance
    for j in costly:
        unused = weights[:, j] <= 0
        if not bool(unused.all()):  # else nothing to try: every image already leaves it out
            trial = keep.clone()
            trial[:, j] = False
            k = trial.to(gram.dtype)
            w = _box_least_squares(gram * k[:, :, None] * k[:, None, :], rhs * k)
            drop = ~unused & (_objective(gram, rhs, w) <= budget)
            weights = torch.where(drop[:, None], w, weights)
            unused |= drop
        keep[:, j] = ~unused
    return weights


#: Probe windows narrower than this (pixels) are not measured: fewer pixels than one 16 x 16
#: sparse-fill block; measured on 8x8 and 12x12 digits, the blend lost 0.8-1.2 dB on average to
#: the biharmonic fill (docs/restore.md), so such images get the base fill alone.
MIN_PROBE_SIDE = 16
#: A base fill whose RMS error on the probe pixels is under this (in [0, 1] units, a 40th of a
#: grey level of 8 bits) counts as exact.
EXACT_RMS = 1e-4

#: Costly directions (each one more full-image pass: the net, a sparse fill) are left out of an
#: image's blend while leaving them out costs its probes' squared error no more than this
#: fraction of the base fill's, all of them together (:func:`probe_weights`' ``costly``).
MIN_GAIN = 0.005

#: A restorer's candidates for :func:`probe_weights`: ``(images, dead) -> (base, directions)``,
#: a base fill and the directions ``candidate - base`` to blend in, each (B, C, H, W).
Predictor = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]


@torch.no_grad()
def probe_weights(
    predict: Predictor,
    images: torch.Tensor,
    dead: torch.Tensor,
    probe_size: int = 64,
    shifts: int = 0,
    costly: Sequence[int] = (),
    min_gain: float = MIN_GAIN,
) -> torch.Tensor:
    """Per image, the weights in [0, 1] of ``base + sum_i w_i * directions_i`` that best predict
    known pixels hidden in the image itself: (B, n) float64 for ``predict``'s n directions.

    The image's own dead mask, shifted (:func:`_probe_masks`), hides more of its observed
    pixels inside the central ``probe_size`` window (0 = all of it); ``predict`` runs on the
    window with both masks, and the weights are the box-constrained least-squares blend on the
    hidden pixels. See :func:`calibration` for ``shifts`` and for windows under 64 x 64.

    ``costly`` lists the directions that cost the restorer a full-image pass, the dearest first:
    in a window of 4096 pixels or more (fitted on its own), each is dropped from an image's blend
    (weight 0, the others refitted) while the probes' squared error stays within ``min_gain``
    times the base fill's of the full fit's, so no pass runs for a gain that small.
    """
    h, w = images.shape[-2:]
    ys, xs = _probe_region(h, w, probe_size)
    x = images[..., ys, xs]
    d = dead.to(torch.bool)[..., ys, xs]
    if min(d.shape[-2:]) < MIN_PROBE_SIDE:  # too few pixels to measure anything: the base alone
        return torch.zeros(x.shape[0], len(predict(x[:1], d[:1])[1]), dtype=torch.float64, device=x.device)
    if shifts <= 0:
        shifts = 1 if d.shape[-2] * d.shape[-1] >= 64 * 64 else 2
    hides = _probe_masks(d, shifts)
    b = x.shape[0]
    # every probe of every image in one call (fewer, larger operations): probe i is rows i*b..
    base, directions = predict(x.repeat(len(hides), 1, 1, 1), torch.cat([d | hide for hide in hides]))
    grams, rhss = [], []
    miss = torch.zeros(b, dtype=torch.float64, device=x.device)  # the base's squared error on the probes
    hidden = torch.zeros(b, dtype=torch.float64, device=x.device)
    for i, hide in enumerate(hides):
        rows = slice(i * b, (i + 1) * b)
        where = hide.to(x.dtype).expand_as(x)
        g, r = _normal_equations([v[rows] for v in directions], x - base[rows], where)
        grams.append(g)
        rhss.append(r)
        miss += ((x - base[rows]) ** 2 * where).sum(dim=(1, 2, 3)).double()
        hidden += where.sum(dim=(1, 2, 3)).double()
    area = d.shape[-2] * d.shape[-1]
    strength = max(0.0, 64 * 64 / area - 1.0)
    weights = _shrunk_weights(grams, rhss, strength)
    if costly and strength == 0 and min_gain > 0:
        weights = _drop_small_gains(weights, sum(grams), sum(rhss), miss, costly, min_gain)  # type: ignore[arg-type]
    # where the base predicts the probes exactly (black background around the holes, flat
    # areas), nothing can improve on it and any other fill can only add error: weights 0, even
    # when the batch's pooled weights would pull them up
    exact = miss <= EXACT_RMS**2 * hidden.clamp_min(1.0)
    return torch.where(exact[:, None], torch.zeros_like(weights), weights)


@torch.no_grad()
def calibration(
    model: nn.Module,
    images: torch.Tensor,
    dead: torch.Tensor,
    bases: Bases | None = None,
    probe_size: int = 64,
    shifts: int = 0,
    sparse: Sparse = None,
) -> torch.Tensor:
    """How much of the refiner's correction, and of the harmonic fill, to trust, per image:
    (B, 2) weights in [0, 1], for ``fill + a * (refiner - fill) + h * (harmonic - fill)``; with
    ``sparse`` (B, 2 + n), a weight ``s_i`` for ``+ s_i * (sparse_i - fill)`` for each of its n
    specs, the :func:`restore_core.sparse_fill.sparse_fill` of each probe.

    Measured on the image itself, without a clean copy: its own dead mask, shifted by half the
    image (so the probe has the damage's kind, rate and shapes), hides more of its observed
    pixels; the refiner and the two fills predict those known pixels, and the weights are the
    least-squares blend on them, each clipped to [0, 1] (0, 0 = the biharmonic fill). A
    refiner trained on other images can be wrong about this one (measured: -0.5 to -1.3 dB on
    sharp test photos where it gained on its own photos); the probe catches that, image by
    image. Only the central ``probe_size`` window is probed (0 = all of it), so a large image
    costs little more than one pass; ``shifts`` offsets of the mask are probed, two probes each
    (0 = 1 shift for windows of 64 x 64 pixels or more, 2 below). A window under 64 x 64 pixels
    has too few probe pixels for a fit of its own (measured on 32x32 digits: per-image weights
    lost up to 0.16 dB where the net alone gained): its weights are pulled towards the batch's
    pooled ones, as if the batch supplied the rest of a 64 x 64 window (a ridge of
    ``4096 / window pixels - 1`` times the image's own probe energy), so a result then depends
    on the other images of its batch.
    """

    def predict(x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        pred, filled, harmonic = _predict(model, x, d, bases)
        directions = [pred.clamp(0.0, 1.0) - filled, harmonic - filled]
        directions += [sparse_fill(x, d, filled, spec) - filled for spec in active_specs(sparse)]
        return filled, directions

    # the net's pass is the dearest, then the sparse fills' (the harmonic fill comes with the base)
    costly = [0] + [2 + i for i in range(len(active_specs(sparse)))]
    return probe_weights(predict, images, dead, probe_size, shifts, costly).to(images.dtype)
