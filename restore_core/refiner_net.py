"""The refiner's network and how it runs on inputs: its spec, the U-Net, the NMF input channel
and the prediction over the cheap fills (:mod:`restore_core.refiner` is the public face)."""

from __future__ import annotations

import dataclasses

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
    # in-place activations: the same numbers without a fresh tensor each (a convolution's
    # backward pass needs its input, not its output, so training is unaffected)
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, padding_mode="replicate"),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, padding_mode="replicate"),
        nn.LeakyReLU(0.1, inplace=True),
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
    """A freshly initialised refiner (it starts as the identity over the cheap fill).

    Its weights are in the channels-last layout: same results (measured bit for bit on the
    forward pass), 1.6-1.8x faster forward and backward on a CPU core (oneDNN convolutions), and
    the layout GPUs' mixed-precision convolutions prefer. Artifacts are written contiguous
    (:func:`restore_core.io.refiners.refiner_artifact` copies each tensor)."""
    net = Refiner(spec)
    net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # a real Module.to keyword
    return net


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
    model: nn.Module, images: torch.Tensor, dead: torch.Tensor, bases: Bases | None, rows: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model's unclamped prediction for every pixel (gradients flow through the net only),
    the cheap fill it started from and the harmonic fill, all (B, C, H, W). With ``rows`` (bool
    (B,)), the net runs on those images only; the others' prediction is their fill (the refiner
    treats each image on its own, so this changes nothing for the images it runs on)."""
    spec = _spec_of(model)
    b, c, h, w = images.shape
    if spec.channels == 1 and c != 1:
        images, dead = images.reshape(b * c, 1, h, w), dead.repeat_interleave(c, dim=0)
        rows = None if rows is None else rows.repeat_interleave(c)
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
    if rows is None:
        pred = model(filled, dead.to(images.dtype), extra, other)
    else:
        pred = filled.clone()
        if bool(rows.any()):
            pick = lambda t: None if t is None else t[rows]  # noqa: E731
            pred[rows] = model(filled[rows], dead[rows].to(images.dtype), pick(extra), pick(other))
    return pred.reshape(b, c, h, w), filled.reshape(b, c, h, w), harmonic.reshape(b, c, h, w)
