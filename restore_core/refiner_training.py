"""Self-supervised training of the refiner: random training masks, the loss on hidden-but-observed
pixels, the held-out gain check and :func:`train_refiner`, a plain single-process loop
(benchmarks, tests; the distributed job calls :func:`training_loss` itself)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from restore_core.bases import Bases
from restore_core.refiner_net import RefinerSpec, _predict, build_refiner


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


def _batches(
    images: np.ndarray | Iterable[tuple[torch.Tensor, torch.Tensor]],
    observed: np.ndarray | None,
    batch_size: int,
    crop: int,
    seed: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The training batches of :func:`train_refiner`: random crops of an array, or the given batches."""
    if isinstance(images, np.ndarray):
        obs = np.ones(images.shape[:3], bool) if observed is None else observed
        batches: Iterator[tuple[torch.Tensor, torch.Tensor]] = _crops(
            images, obs, batch_size, crop, np.random.default_rng(seed)
        )
    else:
        batches = iter(images)
    return batches


def _budget_clock(budget_clock: str) -> Callable[[], float]:
    """The clock a time budget is counted on: ``wall`` (elapsed) or ``cpu`` (this process's)."""
    if budget_clock not in ("wall", "cpu"):
        raise ValueError(f"budget_clock must be 'wall' or 'cpu', got {budget_clock!r}")
    return time.perf_counter if budget_clock == "wall" else time.process_time


def _set_cosine_lr(opt: torch.optim.Optimizer, base_lr: float, share: float) -> None:
    """Cosine decay to 5 % of ``base_lr`` over the steps or the budget (``share`` done, 0..1)."""
    for group in opt.param_groups:
        group["lr"] = base_lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * share)))


@torch.no_grad()
def _ema_update(averaged: nn.Module, model: nn.Module, ema_decay: float, step: int) -> None:
    """The returned weights: an exponential moving average (smooths Adam's noise)."""
    decay = min(ema_decay, (1.0 + step) / (10.0 + step))
    for pa, pm in zip(averaged.parameters(), model.parameters(), strict=True):
        pa.lerp_(pm, 1.0 - decay)


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
    clock = _budget_clock(budget_clock)
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
    batches = _batches(images, observed, batch_size, crop, seed)
    averaged = build_refiner(spec).to(dev)
    averaged.load_state_dict(model.state_dict())
    model.train()
    recent: list[float] = []
    done = 0
    for step in range(1, steps + 1):
        share = progress_share(step - 1)
        if share >= 1.0:
            break
        _set_cosine_lr(opt, base_lr, share)
        try:
            xb, mb = next(batches)
        except StopIteration:
            break
        loss = training_loss(model, xb.to(dev), mb.to(dev), gen, bases)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _ema_update(averaged, model, ema_decay, step)
        done = step
        recent.append(float(loss.detach()))
        if progress is not None and (step % 50 == 0 or step == steps):
            progress(step, float(np.mean(recent[-50:])))
    averaged.steps_done = done  # type: ignore[assignment]
    averaged.eval()
    return averaged
