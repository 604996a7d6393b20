"""The learned inpainting refiner: a small U-Net that corrects a cheap fill of the dead pixels.

Images are float32 (B, C, H, W) in [0, 1]; masks are bool (B, 1, H, W) (``dead``: True = to
fill; ``observed``: True = a real pixel). The net sees the cheap fill (:func:`fill.harmonic_fill`),
the dead mask and, when the spec asks for it and bases are given, the NMF patch reconstruction
of the fill; it predicts a residual over the fill, and only dead pixels take the result.

Training is self-supervised (:func:`training_loss`): extra pixels among the *observed* ones are
hidden with random masks of the kinds met in practice, and the loss is measured on those hidden
but known pixels only. No clean copy of the data is needed: the net learns from the damaged
dataset itself. :func:`train_refiner` is a plain single-process loop (benchmarks, tests); the
distributed job calls :func:`training_loss` itself.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from restore_core import nmf
from restore_core.bases import Bases
from restore_core.fill import both_fills


@dataclasses.dataclass(frozen=True)
class RefinerSpec:
    """Architecture of a refiner (JSON-simple: stored in the model's meta.json).

    ``channels`` 1 (gray; applied to each channel of a colour image) or 3 (RGB).
    ``width`` feature channels at full resolution (doubled at each level down), ``levels``
    number of 2x downsamplings, ``fill_order`` 1 (harmonic) or 2 (biharmonic) cheap fill with
    at most ``fill_iters`` conjugate-gradient iterations; ``both_fills`` also gives the net
    the harmonic fill (free: the biharmonic solve starts from it; harmonic is better inside
    large holes, biharmonic between scattered pixels, and the net learns where to use which),
    ``use_bases`` adds the NMF patch reconstruction of the fill as an input (needs bases).
    """

    channels: int = 1
    width: int = 16
    levels: int = 2
    fill_order: int = 2
    fill_iters: int = 200
    both_fills: bool = True
    use_bases: bool = False

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"refiner channels must be 1 or 3, got {self.channels}")
        if self.fill_order not in (1, 2):
            raise ValueError(f"refiner fill_order must be 1 or 2, got {self.fill_order}")
        if self.width < 4 or self.levels < 0 or self.levels > 5:
            raise ValueError(f"refiner width must be >= 4 and levels in 0..5, got {self.width}, {self.levels}")


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, padding_mode="replicate"),
        nn.LeakyReLU(0.1),
        nn.Conv2d(cout, cout, 3, padding=1, padding_mode="replicate"),
        nn.LeakyReLU(0.1),
    )


class Refiner(nn.Module):
    """U-Net over (fill, dead mask[, NMF reconstruction]) predicting a residual over the fill.

    ``forward(fill (B, C, H, W), dead (B, 1, H, W) float, extra (B, C, H, W) or None, other
    (B, C, H, W) or None)`` returns (B, C, H, W), not yet clamped nor merged with the observed
    pixels; ``extra`` is the NMF reconstruction, ``other`` the harmonic fill.
    """

    def __init__(self, spec: RefinerSpec) -> None:
        super().__init__()
        self.spec = spec
        c, w = spec.channels, spec.width
        cin = c + 1 + (c if spec.use_bases else 0) + (c if spec.both_fills and spec.fill_order == 2 else 0)
        self.inc = _block(cin, w)
        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        ch = w
        for _ in range(spec.levels):
            self.down.append(_block(ch, ch * 2))
            ch *= 2
        for _ in range(spec.levels):
            self.up.append(nn.Conv2d(ch, ch // 2, 1))
            self.dec.append(_block(ch, ch // 2))
            ch //= 2
        self.out = nn.Conv2d(w, c, 3, padding=1, padding_mode="replicate")
        # starts as the fill exactly: a random output layer adds noise of ~0.01-0.02, which cost
        # 6 dB on smooth photos (45 dB fills) before training removed it (measured); the price is
        # a slow first ~50 steps while the inner layers get their first gradients
        nn.init.zeros_(self.out.weight)
        if self.out.bias is not None:
            nn.init.zeros_(self.out.bias)

    def forward(
        self,
        fill: torch.Tensor,
        dead: torch.Tensor,
        extra: torch.Tensor | None = None,
        other: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h, w = fill.shape[-2:]
        mult = 2**self.spec.levels
        ph, pw = (-h) % mult, (-w) % mult
        parts = [fill - 0.5, dead] + [t - 0.5 for t in (extra, other) if t is not None]  # centred inputs
        x = torch.cat(parts, dim=1)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        skips = [self.inc(x)]
        for down in self.down:
            skips.append(down(F.avg_pool2d(skips[-1], 2)))
        y = skips.pop()
        for up, dec in zip(self.up, self.dec, strict=True):
            skip = skips.pop()
            y = F.interpolate(up(y), size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = dec(torch.cat([y, skip], dim=1))
        res = self.out(y)[..., :h, :w]
        return fill + res


def build_refiner(spec: RefinerSpec) -> nn.Module:
    """A freshly initialised refiner (it starts as the identity over the cheap fill)."""
    return Refiner(spec)


def _spec_of(model: nn.Module) -> RefinerSpec:
    spec = getattr(model, "spec", None)
    if not isinstance(spec, RefinerSpec):
        raise TypeError("model is not a refiner built by build_refiner")
    return spec


# ----------------------------------------------------------------------------- NMF input channel


def nmf_reconstruction(filled: torch.Tensor, dead: torch.Tensor, bases: Bases, stride: int = 2) -> torch.Tensor:
    """Patch NMF reconstruction of a filled batch: every p x p patch (every ``stride`` pixels)
    is fitted on its observed pixels with the bases frozen, and overlapping reconstructions are
    averaged. (B, C, H, W) in, (B, C, H, W) out, on the input's device."""
    meta = bases.meta
    if meta.mode != "patch":
        raise ValueError("the refiner's NMF channel needs patch-mode bases")
    p = meta.patch_size
    b, c, h, w = filled.shape
    if meta.channels == 1:
        planes, m = filled.reshape(b * c, 1, h, w), dead.expand(b, c, h, w).reshape(b * c, 1, h, w)
    else:
        planes, m = filled, dead.expand(b, c, h, w)
    ph, pw = max(p - h, 0) + (-(max(h, p) - p) % stride), max(p - w, 0) + (-(max(w, p) - p) % stride)
    x = F.pad(planes, (0, pw, 0, ph), mode="replicate")
    obs = F.pad((~m).to(filled.dtype), (0, pw, 0, ph))
    cols = F.unfold(x, p, stride=stride)  # (N, Cp*p*p, L)
    mcols = F.unfold(obs, p, stride=stride)
    n, k, L = cols.shape
    X = cols.transpose(1, 2).reshape(n * L, k)
    M = mcols.transpose(1, 2).reshape(n * L, k)
    H = torch.from_numpy(bases.H).to(filled.device, filled.dtype)
    W = nmf.fit_weights(X, H, M, max_iter=50, tol=1e-3, device=filled.device)
    assert isinstance(W, torch.Tensor)
    rec = (W @ H).reshape(n, L, k).transpose(1, 2)
    size = x.shape[-2:]
    num = F.fold(rec, size, p, stride=stride)
    den = F.fold(torch.ones_like(rec), size, p, stride=stride)
    out = (num / den.clamp_min(1e-6))[..., :h, :w]
    return out.reshape(b, c, h, w).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------- running


def _predict(
    model: nn.Module, images: torch.Tensor, dead: torch.Tensor, bases: Bases | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model's unclamped prediction for every pixel (gradients flow through the net only),
    the cheap fill it started from and the harmonic fill, all (B, C, H, W)."""
    spec = _spec_of(model)
    b, c, h, w = images.shape
    if spec.channels == 1 and c != 1:
        images, dead = images.reshape(b * c, 1, h, w), dead.repeat_interleave(c, dim=0)
    elif spec.channels != images.shape[1]:
        raise ValueError(f"refiner is for {spec.channels} channels, images have {c}")
    with torch.no_grad():
        two = spec.both_fills and spec.fill_order == 2
        harmonic, filled = both_fills(images, dead, iters=spec.fill_iters, biharmonic=spec.fill_order == 2)
        other = harmonic if two else None
        extra = None
        if spec.use_bases:
            if bases is None:
                raise ValueError("this refiner was trained with NMF bases as an input: give the bases")
            extra = nmf_reconstruction(filled, dead, bases)
    pred = model(filled, dead.to(images.dtype), extra, other)
    return pred.reshape(b, c, h, w), filled.reshape(b, c, h, w), harmonic.reshape(b, c, h, w)


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
        obj = (w[:, None, :] @ gram @ w[:, :, None])[:, 0, 0] - 2 * (w * rhs).sum(dim=1)
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


@torch.no_grad()
def calibration(
    model: nn.Module,
    images: torch.Tensor,
    dead: torch.Tensor,
    bases: Bases | None = None,
    probe_size: int = 64,
    shifts: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """How much of the refiner's correction, and of the harmonic fill, to trust, per image:
    two (B,) weights in [0, 1], for ``fill + a * (refiner - fill) + h * (harmonic - fill)``.

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
    h, w = images.shape[-2:]
    ys, xs = _probe_region(h, w, probe_size)
    x = images[..., ys, xs]
    d = dead.to(torch.bool)[..., ys, xs]
    if shifts <= 0:
        shifts = 1 if d.shape[-2] * d.shape[-1] >= 64 * 64 else 2
    grams, rhss = [], []
    for hide in _probe_masks(d, shifts):
        pred, filled, harmonic = _predict(model, x, d | hide, bases)
        where = hide.to(x.dtype).expand_as(x)
        g, r = _normal_equations([pred.clamp(0.0, 1.0) - filled, harmonic - filled], x - filled, where)
        grams.append(g)
        rhss.append(r)
    area = d.shape[-2] * d.shape[-1]
    weights = _shrunk_weights(grams, rhss, max(0.0, 64 * 64 / area - 1.0)).to(images.dtype)
    return weights[:, 0], weights[:, 1]


@torch.no_grad()
def refine(
    model: nn.Module,
    images: torch.Tensor,
    dead: torch.Tensor,
    bases: Bases | None = None,
    calibrate: bool = True,
    probe_size: int = 64,
    shifts: int = 0,
) -> torch.Tensor:
    """Fill dead pixels with the refiner.

    Parameters
    ----------
    model : the refiner (from :func:`build_refiner`), on the images' device
    images : Tensor (B, C, H, W) float32 in [0, 1]
    dead : Tensor (B, 1, H, W) bool, True = to fill
    bases : Bases, needed when the refiner's spec has ``use_bases``
    calibrate : blend the refiner's correction into its fill with a weight measured on each
        image itself (:func:`calibration`); False = the refiner's output as it is
    probe_size : side of the window :func:`calibration` probes (0 = the whole image)
    shifts : offsets of the dead mask :func:`calibration` probes (0 = by the window's size)

    Returns
    -------
    Tensor (B, C, H, W) float32 in [0, 1]; observed pixels are the input's, bit for bit.
    """
    was_training = model.training
    model.eval()
    try:
        dead = dead.to(torch.bool)
        pred, filled, harmonic = _predict(model, images, dead, bases)
        pred = pred.clamp_(0.0, 1.0)
        if calibrate:
            a, hw = (t.view(-1, 1, 1, 1) for t in calibration(model, images, dead, bases, probe_size, shifts))
            pred = (filled + a * (pred - filled) + hw * (harmonic - filled)).clamp_(0.0, 1.0)
    finally:
        model.train(was_training)
    return torch.where(dead, pred, images)


# ----------------------------------------------------------------------------- training


def random_training_mask(
    shape: tuple[int, int, int, int], generator: torch.Generator, device: torch.device | str | None = None
) -> torch.Tensor:
    """Random pixels to hide, of the kinds met in practice: bool (B, 1, H, W), True = hide.

    Each image draws one kind: scattered pixels (5-80 %), lines (rows and/or columns, 1-2 pixels
    wide, 5-60 %), small blocks (2-12 pixels, 5-60 %), or a mix of scattered pixels and blocks.
    Drawn with ``generator`` on its device, then moved to ``device``.
    """
    b, one, h, w = shape
    if one != 1:
        raise ValueError(f"mask shape must be (B, 1, H, W), got {shape}")
    gdev = generator.device

    def uni(*size: int) -> torch.Tensor:
        return torch.rand(*size, generator=generator, device=gdev)

    kind = torch.randint(0, 4, (b, 1, 1, 1), generator=generator, device=gdev)
    rate = 0.05 + 0.75 * uni(b, 1, 1, 1)
    scattered = uni(b, 1, h, w) < rate
    # lines: rows, columns or both; each line 1 or 2 pixels thick
    line_rate = rate.clamp(max=0.6)
    axis = torch.randint(0, 3, (b, 1, 1, 1), generator=generator, device=gdev)
    thick = torch.randint(1, 3, (b, 1, 1, 1), generator=generator, device=gdev)
    per_line = 1.0 - (1.0 - line_rate) ** (1.0 / thick.to(rate.dtype))
    batch = torch.arange(b, device=gdev)
    rows = uni(b, 1, h, 1) < per_line
    cols = uni(b, 1, 1, w) < per_line
    rows[batch, 0, torch.randint(0, h, (b,), generator=generator, device=gdev), 0] = True  # never none
    cols[batch, 0, 0, torch.randint(0, w, (b,), generator=generator, device=gdev)] = True
    rows = rows | (torch.roll(rows, 1, dims=2) & (thick == 2))
    cols = cols | (torch.roll(cols, 1, dims=3) & (thick == 2))
    lines = torch.where(
        axis == 0, rows.expand(b, 1, h, w), torch.where(axis == 1, cols.expand(b, 1, h, w), rows | cols)
    )
    # blocks: squares of side s placed at random (density chosen so that the cover is ~rate)
    blocks = torch.zeros(b, 1, h, w, dtype=torch.bool, device=gdev)
    side = torch.randint(2, 13, (b,), generator=generator, device=gdev)
    for s in side.unique().tolist():
        sel = side == s
        n = int(sel.sum())
        br = line_rate[sel]
        density = 1.0 - (1.0 - br) ** (1.0 / (s * s))
        seeds = (uni(n, 1, h, w) < density).to(torch.float32)
        seeds[torch.arange(n, device=gdev), 0, h // 2, w // 2] = 1.0  # never none (placement is random anyway)
        grown = F.max_pool2d(seeds, s, stride=1, padding=s // 2)[..., :h, :w] > 0
        blocks[sel] = grown
    mixed = (uni(b, 1, h, w) < rate * 0.5) | blocks
    out = torch.where(kind == 0, scattered, torch.where(kind == 1, lines, torch.where(kind == 2, blocks, mixed)))
    return out.to(device if device is not None else gdev)


def training_loss(
    model: nn.Module,
    images: torch.Tensor,
    observed: torch.Tensor,
    generator: torch.Generator,
    bases: Bases | None = None,
) -> torch.Tensor:
    """Self-supervised loss on one batch: mean squared error on hidden-but-observed pixels.

    The error is averaged over each image's hidden pixels, then over the images, so an image
    counts the same whatever share of it was hidden. (Dividing by each image's fill error, to
    weigh every image alike in dB, was measured to stall learning: images the fill already gets
    right then dominate the gradient and the net learns to output the fill.)

    Parameters
    ----------
    model : the refiner, in training mode, on the images' device
    images : Tensor (B, C, H, W) float32 in [0, 1] (values at unobserved pixels are ignored)
    observed : Tensor (B, 1, H, W) bool, True = a real pixel (not dead in the data)
    generator : torch.Generator drawing the hidden pixels
    bases : Bases, when the refiner's spec has ``use_bases``

    Returns
    -------
    scalar Tensor (differentiable in the model's parameters).
    """
    observed = observed.to(torch.bool)
    hide = random_training_mask(tuple(observed.shape), generator, images.device) & observed  # type: ignore[arg-type]
    dead = ~observed | hide
    pred = _predict(model, images, dead, bases)[0]
    weight = hide.to(images.dtype).expand_as(images)
    count = weight.sum(dim=(1, 2, 3))
    err = ((pred - images) ** 2 * weight).sum(dim=(1, 2, 3))
    has = count > 0
    if not bool(has.any()):
        return (pred * 0.0).sum()
    return (err[has] / count[has]).mean()


@torch.no_grad()
def self_supervised_gain(
    model: nn.Module,
    images: torch.Tensor,
    observed: torch.Tensor,
    generator: torch.Generator,
    bases: Bases | None = None,
) -> float:
    """How much better than its cheap fill the refiner predicts hidden-but-observed pixels, in dB
    (positive = better), on damaged images alone: a check a training job can run on rows kept
    aside, before trusting a refiner over the fill. Same shapes as :func:`training_loss`."""
    was_training = model.training
    model.eval()
    try:
        observed = observed.to(torch.bool)
        hide = random_training_mask(tuple(observed.shape), generator, images.device) & observed  # type: ignore[arg-type]
        pred, filled, _ = _predict(model, images, ~observed | hide, bases)
    finally:
        model.train(was_training)
    weight = hide.to(images.dtype).expand_as(images)
    err = float(((pred.clamp(0.0, 1.0) - images) ** 2 * weight).sum())
    base = float(((filled - images) ** 2 * weight).sum())
    if base <= 0.0 or err <= 0.0:
        return 0.0 if base == err else (float("inf") if err <= 0.0 else float("-inf"))
    return 10.0 * math.log10(base / err)


def _to_nchw(images: np.ndarray) -> np.ndarray:
    a = np.asarray(images, dtype=np.float32)
    if a.ndim == 3:
        return a[:, None]
    if a.ndim == 4:
        return np.ascontiguousarray(a.transpose(0, 3, 1, 2))
    raise ValueError(f"images must be (N, H, W) or (N, H, W, C), got shape {a.shape}")


def _crops(
    images: np.ndarray, observed: np.ndarray, batch_size: int, crop: int, rng: np.random.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless random crops with flips and transposes (image, observed), NCHW tensors."""
    x = _to_nchw(images)
    m = np.asarray(observed, dtype=bool)[:, None]
    n, _, h, w = x.shape
    ch, cw = min(crop, h), min(crop, w)
    while True:
        idx = rng.integers(0, n, batch_size)
        ys = rng.integers(0, h - ch + 1, batch_size)
        xs = rng.integers(0, w - cw + 1, batch_size)
        xb = np.stack([x[i, :, y : y + ch, z : z + cw] for i, y, z in zip(idx, ys, xs, strict=True)])
        mb = np.stack([m[i, :, y : y + ch, z : z + cw] for i, y, z in zip(idx, ys, xs, strict=True)])
        if rng.random() < 0.5:
            xb, mb = xb[..., ::-1], mb[..., ::-1]
        if rng.random() < 0.5:
            xb, mb = xb[..., ::-1, :], mb[..., ::-1, :]
        if ch == cw and rng.random() < 0.5:
            xb, mb = xb.swapaxes(-1, -2), mb.swapaxes(-1, -2)
        yield torch.from_numpy(np.ascontiguousarray(xb)), torch.from_numpy(np.ascontiguousarray(mb))


def train_refiner(
    images: np.ndarray | Iterable[tuple[torch.Tensor, torch.Tensor]],
    observed: np.ndarray | None,
    spec: RefinerSpec,
    steps: int = 2000,
    lr: float = 2e-3,
    batch_size: int = 16,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
    device: str | torch.device = "cpu",
    crop: int = 64,
    bases: Bases | None = None,
    time_budget_s: float = 0.0,
    budget_clock: str = "wall",
    max_wall_s: float = 0.0,
    ema_decay: float = 0.995,
) -> nn.Module:
    """Train a refiner self-supervised on damaged images; a plain single-process loop.

    Parameters
    ----------
    images : np.ndarray (N, H, W) or (N, H, W, C) float32 in [0, 1], or an iterable of
        ``(images (B, C, H, W), observed (B, 1, H, W) bool)`` tensor batches (then ``observed``
        is None and ``crop``/``batch_size`` are not used).
    observed : np.ndarray (N, H, W) bool, True = a real pixel; None = all observed.
    spec : RefinerSpec
    steps, lr, batch_size, seed : optimisation (Adam, cosine decay of ``lr`` to 5 % of it)
    progress : called as ``progress(step, mean loss of the last steps)`` every 50 steps
    device : where to train
    crop : side of the random training crops (array input)
    bases : Bases, when ``spec.use_bases``
    time_budget_s : stop after this many seconds (0 = no limit); the learning-rate schedule
        follows the elapsed share of the budget then
    budget_clock : ``wall`` (elapsed time) or ``cpu`` (this process's CPU time, all threads:
        the fair measure on a shared machine; 1200 CPU-seconds = 10 minutes on 2 busy cores)
    max_wall_s : also stop after this many seconds of elapsed time (0 = no limit)
    ema_decay : the returned weights are the exponential moving average of the trained ones
        with this decay (Adam's step-to-step noise was measured at +-0.3 dB)

    Returns
    -------
    the trained refiner (averaged weights), in eval mode, on ``device``, with ``steps_done`` set.
    """
    torch.manual_seed(seed)
    dev = torch.device(device)
    model = build_refiner(spec).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    if budget_clock not in ("wall", "cpu"):
        raise ValueError(f"budget_clock must be 'wall' or 'cpu', got {budget_clock!r}")
    clock = time.perf_counter if budget_clock == "wall" else time.process_time
    t0, wall0 = clock(), time.perf_counter()

    def progress_share(step: int) -> float:
        share = step / steps
        if time_budget_s > 0:
            share = max(share, (clock() - t0) / time_budget_s)
        if max_wall_s > 0:
            share = max(share, (time.perf_counter() - wall0) / max_wall_s)
        return min(share, 1.0)

    base_lr = lr
    gen = torch.Generator().manual_seed(seed)
    if isinstance(images, np.ndarray):
        obs = np.ones(images.shape[:3], bool) if observed is None else observed
        batches: Iterator[tuple[torch.Tensor, torch.Tensor]] = _crops(
            images, obs, batch_size, crop, np.random.default_rng(seed)
        )
    else:
        batches = iter(images)
    averaged = build_refiner(spec).to(dev)
    averaged.load_state_dict(model.state_dict())
    model.train()
    recent: list[float] = []
    done = 0
    for step in range(1, steps + 1):
        share = progress_share(step - 1)
        if share >= 1.0:
            break
        for group in opt.param_groups:  # cosine decay to 5 % of lr over the steps or the budget
            group["lr"] = base_lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * share)))
        try:
            xb, mb = next(batches)
        except StopIteration:
            break
        loss = training_loss(model, xb.to(dev), mb.to(dev), gen, bases)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # the returned weights: an exponential moving average (smooths Adam's noise)
            decay = min(ema_decay, (1.0 + step) / (10.0 + step))
            for pa, pm in zip(averaged.parameters(), model.parameters(), strict=True):
                pa.lerp_(pm, 1.0 - decay)
        done = step
        recent.append(float(loss.detach()))
        if progress is not None and (step % 50 == 0 or step == steps):
            progress(step, float(np.mean(recent[-50:])))
    averaged.steps_done = done  # type: ignore[assignment]
    averaged.eval()
    return averaged
