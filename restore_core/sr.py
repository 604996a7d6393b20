"""Super-resolution CNN: the write-up's 4-layer model, the degrade function, training and inference.

Images are float32 in [0, 1]. Tensors are (B, 1, H, W): the network sees one plane at a time
(a gray image, the luminance of a colour image, or one colour channel; see ``apply_image``).

The write-up (Chainer): conv3x3 pad 1 without bias 1->16->32->64, each followed by BatchNorm and
ReLU, then conv3x3 64->1 with bias and a sigmoid; trained with MSE and Adam (batch 64, 10 epochs)
to map an image shrunk 28->10 and enlarged back to 28 onto the original. ``SRNet(channels=(16, 32,
64), residual=False)`` is exactly that model (23,985 parameters). ``residual=True`` predicts the
detail added on top of the enlarged input instead of the whole image (the sigmoid goes: the
output is the input plus a correction, clamped to [0, 1] at inference), which trains faster and
keeps flat areas untouched; wider/deeper nets are other ``channels`` tuples.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from restore_core.config import SRConfig, SRDegradeConfig
from restore_core.errors import ArtifactError, UserError

#: The write-up's hidden widths.
WRITEUP_CHANNELS = (16, 32, 64)

#: BT.601 full-range RGB -> YCbCr (JPEG's), used for the luminance-only colour mode.
_RGB_TO_Y = np.array([0.299, 0.587, 0.114], dtype=np.float32)


# ----------------------------------------------------------------------------- model


class SRNet(nn.Module):
    """A plain 3x3 CNN: (conv without bias, BatchNorm, ReLU) per width in ``channels``, then a
    3x3 conv with bias to one plane.

    Parameters
    ----------
    channels : sequence of int
        Hidden widths; (16, 32, 64) is the write-up.
    residual : bool
        False: ``sigmoid(head(h))`` (the write-up). True: ``x + head(h)``, the net learns only
        the missing detail; clamp to [0, 1] when using the output as an image.

    Input and output: (B, 1, H, W) float32, any H and W (fully convolutional, padding 1).
    """

    def __init__(self, channels: Sequence[int] = WRITEUP_CHANNELS, residual: bool = False) -> None:
        super().__init__()
        if not channels or any(int(c) < 1 for c in channels):
            raise ValueError(f"channels must be positive widths, got {list(channels)}")
        self.channels = tuple(int(c) for c in channels)
        self.residual = bool(residual)
        layers: list[nn.Module] = []
        c_in = 1
        for c in self.channels:
            # No conv bias: BatchNorm's shift makes it redundant (the write-up's nobias=True).
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(c_in, 1, 3, padding=1, bias=True)
        if self.residual:
            # Start as the identity map: the first steps refine the input instead of undoing noise.
            nn.init.zeros_(self.head.weight)
            assert self.head.bias is not None
            nn.init.zeros_(self.head.bias)

    @property
    def receptive_radius(self) -> int:
        """Pixels of context each output pixel depends on, per side (one per 3x3 conv)."""
        return len(self.channels) + 1

    def architecture(self) -> dict[str, Any]:
        return {"name": "srnet", "channels": list(self.channels), "residual": self.residual, "in_channels": 1}

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, H, W)
        out = self.head(self.body(x))  # (B, 1, H, W)
        if self.residual:
            return x + out
        return torch.sigmoid(out)


def writeup_net() -> SRNet:
    """The write-up's model."""
    return SRNet(WRITEUP_CHANNELS, residual=False)


def param_count(net: nn.Module) -> int:
    """Trainable parameters (BatchNorm's running statistics are buffers, not parameters)."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def net_from_architecture(arch: dict[str, Any]) -> SRNet:
    """Rebuild a network from meta.json's ``architecture``; bad values raise ArtifactError."""
    try:
        if arch.get("name", "srnet") != "srnet" or int(arch.get("in_channels", 1)) != 1:
            raise ValueError(f"unknown architecture {arch.get('name')!r}")
        channels = [int(c) for c in arch["channels"]]
        return SRNet(channels, residual=bool(arch.get("residual", False)))
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"SR model meta.json has a bad architecture {arch!r} ({exc})") from None


# ----------------------------------------------------------------------------- degrade


def resize(x: torch.Tensor, size: tuple[int, int], filt: str, align_corners: bool = False, antialias: bool = False):
    """Resize (B, C, H, W) to ``size`` (h, w) with one of nearest/bilinear/bicubic/area.

    ``align_corners`` and ``antialias`` only apply to bilinear and bicubic (torch's rules).
    The result is clamped to [0, 1] (bicubic overshoots at edges).
    """
    if filt not in ("nearest", "bilinear", "bicubic", "area"):
        raise UserError(f"resampling filter must be nearest, bilinear, bicubic or area, got {filt!r}")
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    kwargs: dict[str, Any] = {}
    if filt in ("bilinear", "bicubic"):
        kwargs = {"align_corners": align_corners, "antialias": antialias}
    out = F.interpolate(x.float(), size=size, mode=filt, **kwargs)
    return out.clamp_(0.0, 1.0)


def low_size(hw: tuple[int, int], scale: float) -> tuple[int, int]:
    """The shrunk size for a degrade ``scale``: 28 / 2.8 -> 10 (at least 1 pixel)."""
    return max(1, round(hw[0] / scale)), max(1, round(hw[1] / scale))


def shrink(x: torch.Tensor, cfg: SRDegradeConfig) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, h, w): the low-resolution image of the degrade."""
    return resize(x, low_size(tuple(x.shape[-2:]), cfg.scale), cfg.filter, cfg.align_corners, cfg.antialias)  # type: ignore[arg-type]


def degrade(x: torch.Tensor, cfg: SRDegradeConfig) -> torch.Tensor:
    """Shrink by ``cfg.scale`` then enlarge back, both with ``cfg.filter``: the blurry model input.

    (B, C, H, W) float32 in [0, 1] -> same shape and range. The write-up: 28 -> 10 -> 28, bilinear.
    """
    hw = (int(x.shape[-2]), int(x.shape[-1]))
    return resize(shrink(x, cfg), hw, cfg.filter, cfg.align_corners, antialias=False)


def bicubic_baseline(x: torch.Tensor, cfg: SRDegradeConfig) -> torch.Tensor:
    """The plain-enlargement reference: the same low-resolution image, enlarged with bicubic."""
    hw = (int(x.shape[-2]), int(x.shape[-1]))
    return resize(shrink(x, cfg), hw, "bicubic", align_corners=False, antialias=False)


def degrade_np(images: np.ndarray, cfg: SRDegradeConfig) -> np.ndarray:
    """Numpy convenience: (N, H, W) float32 -> degraded (N, H, W) float32 in [0, 1]."""
    with torch.no_grad():
        return degrade(torch.from_numpy(np.ascontiguousarray(images, np.float32))[:, None], cfg)[:, 0].numpy()


# ----------------------------------------------------------------------------- training


def to_luma(img: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) float32 -> (H, W) luminance (BT.601); alpha is ignored."""
    if img.ndim == 2:
        return img.astype(np.float32, copy=False)
    if img.shape[2] >= 3:
        return (img[:, :, :3] @ _RGB_TO_Y).astype(np.float32)
    return img[:, :, 0].astype(np.float32)


def sample_patches(images: Sequence[np.ndarray], patch: int, per_image: int, rng: np.random.Generator) -> np.ndarray:
    """Random training patches from images of any size.

    Parameters
    ----------
    images : sequence of np.ndarray
        float32 (H, W) or (H, W, C) in [0, 1]; colour images contribute their luminance
        (the net works on one plane, see ``apply_image``).
    patch : int
        Patch side. Images smaller than that are reflect-padded up to it; an image of exactly
        that size gives itself once (no duplicates).
    per_image : int
        Patches drawn from each larger image.

    Returns
    -------
    np.ndarray
        (n, patch, patch) float32 in [0, 1].
    """
    out: list[np.ndarray] = []
    for img in images:
        y = to_luma(img)
        h, w = y.shape
        if h < patch or w < patch:
            y = np.pad(y, ((0, max(0, patch - h)), (0, max(0, patch - w))), mode="reflect" if min(h, w) > 1 else "edge")
            h, w = y.shape
        if h == patch and w == patch:
            out.append(y)
            continue
        ys = rng.integers(0, h - patch + 1, per_image)
        xs = rng.integers(0, w - patch + 1, per_image)
        out.extend(y[a : a + patch, b : b + patch] for a, b in zip(ys, xs, strict=True))
    if not out:
        return np.empty((0, patch, patch), np.float32)
    return np.clip(np.stack(out).astype(np.float32), 0.0, 1.0)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """float16 autocast on CUDA when enabled; a no-op elsewhere (CPU float16 convs are slow)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


@dataclasses.dataclass
class TrainState:
    """What a training step needs besides the batch."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    degrade: SRDegradeConfig
    device: torch.device
    amp: bool = True


def make_train_state(
    net: nn.Module, degrade_cfg: SRDegradeConfig, device: torch.device, lr: float = 1e-3, amp: bool = True
) -> TrainState:
    """Adam (the write-up's optimiser) and a grad scaler that is active only with CUDA autocast."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    use_amp = amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    return TrainState(net=net, optimizer=opt, scaler=scaler, degrade=degrade_cfg, device=device, amp=use_amp)


def train_step(state: TrainState, clean: torch.Tensor) -> float:
    """One Adam step on MSE(net(degrade(clean)), clean). ``clean``: (B, 1, H, W) in [0, 1]."""
    state.net.train()
    clean = clean.to(state.device, non_blocking=True).float()
    with torch.no_grad():
        blurry = degrade(clean, state.degrade)  # (B, 1, H, W)
    with autocast(state.device, state.amp):
        pred = state.net(blurry)
        loss = F.mse_loss(pred.float(), clean)
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    state.scaler.step(state.optimizer)
    state.scaler.update()
    return float(loss.detach())


def per_image_psnr(ref: torch.Tensor, est: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) x2 -> (B,) PSNR in dB (data range 1); identical images are capped at 100 dB."""
    mse = ((ref.float() - est.float()) ** 2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


@torch.no_grad()
def evaluate_batch(net: nn.Module, clean: torch.Tensor, degrade_cfg: SRDegradeConfig, device: torch.device, amp=True):
    """Sums over a batch of validation images: loss and PSNR of the model, the degraded input
    and bicubic enlargement. Returns a dict of floats with ``n`` (images) for averaging."""
    net.eval()
    clean = clean.to(device).float()
    blurry = degrade(clean, degrade_cfg)
    with autocast(device, amp):
        pred = net(blurry).float().clamp(0.0, 1.0)
    return {
        "n": float(clean.shape[0]),
        "loss": float(((pred - clean) ** 2).flatten(1).mean(1).sum()),
        "psnr": float(per_image_psnr(clean, pred).sum()),
        "psnr_input": float(per_image_psnr(clean, blurry).sum()),
        "psnr_bicubic": float(per_image_psnr(clean, bicubic_baseline(clean, degrade_cfg)).sum()),
    }


# ----------------------------------------------------------------------------- inference


@torch.no_grad()
def predict(net: nn.Module, x: torch.Tensor, amp: bool = True) -> torch.Tensor:
    """(B, 1, H, W) in [0, 1] on the net's device -> (B, 1, H, W) float32 in [0, 1]."""
    net.eval()
    with autocast(x.device, amp):
        return net(x).float().clamp_(0.0, 1.0)


def _tiles(n: int, tile: int) -> Iterator[tuple[int, int]]:
    """Core intervals [a, b) covering 0..n in steps of ``tile``."""
    for a in range(0, n, tile):
        yield a, min(a + tile, n)


@torch.no_grad()
def enhance_planes(
    net: SRNet,
    planes: np.ndarray,
    *,
    tile: int = 512,
    overlap: int = 16,
    batch_tiles: int = 16,
    device: torch.device | None = None,
    amp: bool = True,
) -> np.ndarray:
    """Apply the net to (N, H, W) planes (float32 in [0, 1]); returns (N, H, W) float32 in [0, 1].

    Planes no larger than ``tile`` run whole, in batches. Larger ones are cut into ``tile`` x
    ``tile`` cores, each run with ``overlap`` pixels of real image around it and cropped back;
    when ``overlap`` >= the net's receptive radius the result equals the untiled one (no seams).
    Tiles of the same shape are batched together.
    """
    dev = device or next(net.parameters()).device
    planes = np.ascontiguousarray(planes, np.float32)
    n, h, w = planes.shape
    out = np.empty_like(planes)
    if overlap < net.receptive_radius:
        raise UserError(f"sr.tile_overlap must be >= {net.receptive_radius} for this model, got {overlap}")
    if tile < 1:
        raise UserError(f"sr.tile must be positive, got {tile}")
    if h <= tile and w <= tile:
        per = max(1, batch_tiles)
        for s in range(0, n, per):
            x = torch.from_numpy(planes[s : s + per]).to(dev)[:, None]
            out[s : s + per] = predict(net, x, amp)[:, 0].cpu().numpy()
        return out
    # Group windows by shape so that each forward pass is one batch of equal-size tiles.
    groups: dict[tuple[int, int], list[tuple[int, int, int, int, int, int, int]]] = {}
    for i in range(n):
        for y0, y1 in _tiles(h, tile):
            for x0, x1 in _tiles(w, tile):
                wy0, wy1 = max(0, y0 - overlap), min(h, y1 + overlap)
                wx0, wx1 = max(0, x0 - overlap), min(w, x1 + overlap)
                groups.setdefault((wy1 - wy0, wx1 - wx0), []).append((i, y0, y1, x0, x1, wy0, wx0))
    for (th, tw), items in groups.items():
        for s in range(0, len(items), max(1, batch_tiles)):
            chunk = items[s : s + max(1, batch_tiles)]
            windows = np.stack([planes[i, wy0 : wy0 + th, wx0 : wx0 + tw] for i, _, _, _, _, wy0, wx0 in chunk])
            pred = predict(net, torch.from_numpy(windows).to(dev)[:, None], amp)[:, 0].cpu().numpy()
            for p, (i, y0, y1, x0, x1, wy0, wx0) in zip(pred, chunk, strict=True):
                out[i, y0:y1, x0:x1] = p[y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0]
    return out


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 1] -> YCbCr (BT.601 full range, chroma centred on 0.5)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 0.5 + (b - y) / 1.772
    cr = 0.5 + (r - y) / 1.402
    return np.stack([y, cb, cr], axis=-1).astype(np.float32)


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_ycbcr`; clipped to [0, 1]."""
    y, cb, cr = ycc[..., 0], ycc[..., 1] - 0.5, ycc[..., 2] - 0.5
    r = y + 1.402 * cr
    b = y + 1.772 * cb
    g = (y - 0.299 * r - 0.114 * b) / 0.587
    return np.clip(np.stack([r, g, b], axis=-1), 0.0, 1.0).astype(np.float32)


@dataclasses.dataclass
class SRModel:
    """A trained net with the settings it was trained with (from meta.json).

    Call :meth:`apply_image` on float32 (H, W) or (H, W, C) images in [0, 1].
    """

    net: SRNet
    degrade: SRDegradeConfig
    meta: dict[str, Any]
    device: torch.device

    def enlarge(self, img: np.ndarray, scale: float) -> np.ndarray:
        """Resize (H, W[, C]) by ``scale`` with the training degrade's filter (same filter as the
        net saw its inputs made with)."""
        if scale == 1.0:
            return img
        h, w = img.shape[:2]
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = torch.from_numpy(np.ascontiguousarray(img, np.float32))
        x = x[None, None] if img.ndim == 2 else x.permute(2, 0, 1)[None]
        d = self.degrade
        y = resize(x, size, d.filter, d.align_corners, antialias=False)[0]
        return (y[0] if img.ndim == 2 else y.permute(1, 2, 0)).numpy()

    def apply_image(
        self,
        img: np.ndarray,
        *,
        scale: float = 1.0,
        color: str = "y",
        tile: int = 512,
        overlap: int = 16,
        batch_tiles: int = 16,
        amp: bool = True,
    ) -> np.ndarray:
        """Super-resolve one image.

        Parameters
        ----------
        img : np.ndarray
            float32 (H, W) or (H, W, C) in [0, 1], C in 1..4 (alpha passes through).
        scale : float
            1: same size (the write-up's use, sharpen a blurry image); > 1: enlarge by this
            factor with the training filter first, then apply the net.
        color : {"y", "per_channel"}
            RGB images: ``y`` runs the net on the luminance only and keeps the (enlarged) chroma
            (the net was trained on one plane; the eye sees detail mostly in luminance; 3x less
            work; no colour fringes from channels corrected differently). ``per_channel`` runs
            it on R, G and B separately.

        Returns
        -------
        np.ndarray
            float32 in [0, 1], shape (round(H*scale), round(W*scale)[, C]).
        """
        if img.ndim not in (2, 3):
            raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {img.shape}")
        if scale <= 0 or not math.isfinite(scale):
            raise UserError(f"sr.scale must be a positive number, got {scale}")
        img = self.enlarge(np.asarray(img, np.float32), scale)
        kw = {"tile": tile, "overlap": overlap, "batch_tiles": batch_tiles, "device": self.device, "amp": amp}
        if img.ndim == 2:
            return enhance_planes(self.net, img[None], **kw)[0]  # type: ignore[arg-type]
        c = img.shape[2]
        out = img.copy()
        if c >= 3 and color == "y":
            ycc = rgb_to_ycbcr(img[:, :, :3])
            ycc[:, :, 0] = enhance_planes(self.net, ycc[None, :, :, 0], **kw)[0]  # type: ignore[arg-type]
            out[:, :, :3] = ycbcr_to_rgb(ycc)
        elif color in ("y", "per_channel"):
            n_color = 3 if c >= 3 else 1  # gray+alpha: only the gray plane
            planes = np.moveaxis(img[:, :, :n_color], 2, 0)
            out[:, :, :n_color] = np.moveaxis(enhance_planes(self.net, planes, **kw), 0, 2)  # type: ignore[arg-type]
        else:
            raise UserError(f"sr.color must be 'y' or 'per_channel', got {color!r}")
        return np.clip(out, 0.0, 1.0)


def apply_fn(model: Any, sr_cfg: SRConfig) -> Callable[[np.ndarray], np.ndarray]:
    """``model``'s per-image inference with the settings of ``sr_cfg`` (scale, colour, tiling)."""

    def apply(img: np.ndarray) -> np.ndarray:
        return model.apply_image(
            img,
            scale=sr_cfg.scale,
            color=sr_cfg.color,
            tile=sr_cfg.tile,
            overlap=max(sr_cfg.tile_overlap, model.net.receptive_radius),
            batch_tiles=sr_cfg.batch_tiles,
            amp=sr_cfg.amp,
        )

    return apply
