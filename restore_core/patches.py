"""Geometry for the NMF inpainters: tiles of large images, groups of images under a pixel budget,
and overlapping p x p patches cut out of a plane (``unfold``) and folded back into it.

Pure functions of arrays; nothing here knows about bases or solvers (see
:mod:`restore_core.inpaint`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

#: (rows, columns) of a rectangle.
Window = tuple[slice, slice]
#: One tile: (the window cut out, where its kept part goes in the image, the kept part within the window).
TileSpan = tuple[Window, Window, Window]
#: Where each tile of one image went: (index of the solved piece, where it goes, its kept part).
Layout = list[tuple[int, Window, Window]]


# ----------------------------------------------------------------------------- tiles and groups


def whole_image(shape: tuple[int, ...]) -> list[TileSpan]:
    """The one tile covering an image of ``shape`` (H, W, ...)."""
    full = (slice(0, int(shape[0])), slice(0, int(shape[1])))
    return [(full, full, full)]


def _spans(n: int, tile: int, step: int, margin: int) -> list[tuple[int, int, int, int]]:
    """(window start, window stop, kept start, kept stop) along one axis of length ``n``."""
    if n <= tile:
        return [(0, n, 0, n)]
    out = []
    for start in range(0, n, step):
        stop = min(start + step, n)
        lo, hi = max(0, start - margin), min(n, stop + margin)
        out.append((lo, hi, start, stop))
        if stop == n:
            break
    return out


def tile_spans(shape: tuple[int, ...], tile: int, margin: int) -> list[TileSpan]:
    """Overlapping tiles of at most about ``tile`` pixels a side, each with ``margin`` pixels of
    context around the part it keeps; one tile when the image fits."""
    h, w = int(shape[0]), int(shape[1])
    if h <= tile and w <= tile:
        return whole_image(shape)
    step = max(tile - 2 * margin, margin)
    result = []
    for y0, y1, ky0, ky1 in _spans(h, tile, step, margin):
        for x0, x1, kx0, kx1 in _spans(w, tile, step, margin):
            result.append(
                (
                    (slice(y0, y1), slice(x0, x1)),
                    (slice(ky0, ky1), slice(kx0, kx1)),
                    (slice(ky0 - y0, ky1 - y0), slice(kx0 - x0, kx1 - x0)),
                )
            )
    return result


def cut(
    images: Sequence[np.ndarray], dead: Sequence[np.ndarray], spans_of: Callable[[tuple[int, ...]], list[TileSpan]]
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[Layout]]:
    """Every image (and its dead mask) cut into its tiles: the pieces in order, and per image
    where its pieces go (for :func:`paste`)."""
    pieces: list[tuple[np.ndarray, np.ndarray]] = []
    layout: list[Layout] = []
    for img, d in zip(images, dead, strict=True):
        layout.append([])
        for window, keep_out, keep_in in spans_of(img.shape[:2]):
            layout[-1].append((len(pieces), keep_out, keep_in))
            pieces.append((img[window], d[window]))
    return pieces, layout


def paste(images: Sequence[np.ndarray], solved: Sequence[np.ndarray], layout: Sequence[Layout]) -> list[np.ndarray]:
    """The images put back together from their solved pieces (the overlaps cropped away)."""
    out = []
    for img, parts in zip(images, layout, strict=True):
        if len(parts) == 1:
            out.append(solved[parts[0][0]])
            continue
        full = np.empty(img.shape, dtype=np.float32)
        for index, keep_out, keep_in in parts:
            full[keep_out] = solved[index][keep_in]
        out.append(full)
    return out


def pixel_groups(sizes: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive indices grouped so that each group's sizes sum to at most ``budget`` (a single
    item larger than the budget is a group of its own)."""
    groups: list[list[int]] = []
    group: list[int] = []
    total = 0
    for i, n in enumerate(sizes):
        if group and total + n > budget:
            groups.append(group)
            group, total = [], 0
        group.append(i)
        total += n
    if group:
        groups.append(group)
    return groups


# ----------------------------------------------------------------------------- patches


@dataclasses.dataclass(frozen=True)
class PlanePatches:
    """One plane's overlapping p x p patches every ``stride`` pixels, rows channel-major.

    The plane is padded (bottom, right) so that the patches cover it; padding counts as not
    observed and not dead.
    """

    values: torch.Tensor  # (N, C*p*p) the plane's pixels
    observed: torch.Tensor  # (N, C*p*p) 1 = observed
    fit_weights: torch.Tensor  # (N, C*p*p) weight of each pixel in the fit: 1 observed, ``prior`` dead, 0 padding
    has_dead: torch.Tensor  # (N,) the patch holds a dead pixel of the image
    padded: tuple[int, int]  # the padded plane's (height, width)
    size: tuple[int, int]  # the plane's (height, width)
    channels: int


def extract(plane: np.ndarray, dead: np.ndarray, p: int, stride: int, prior: float) -> PlanePatches:
    """The patches of ``plane`` ((H, W) or (H, W, C) float32) with its dead mask (H, W)."""
    img = torch.from_numpy(np.ascontiguousarray(plane))
    img = img[None, None] if img.ndim == 2 else img.permute(2, 0, 1)[None]  # (1, C, H, W)
    obs = torch.from_numpy(~dead).float()[None, None]  # (1, 1, H, W)
    weight = obs + prior * (1.0 - obs)
    height, width = img.shape[2:]
    pad_h = max(p, height) + (-(max(p, height) - p) % stride) - height
    pad_w = max(p, width) + (-(max(p, width) - p) % stride) - width
    pad = (0, pad_w, 0, pad_h)
    img, obs, weight = F.pad(img, pad), F.pad(obs, pad), F.pad(weight, pad)
    c = img.shape[1]
    dead_in = F.pad(torch.from_numpy(dead).float()[None, None], pad)
    return PlanePatches(
        values=F.unfold(img, p, stride=stride)[0].T,
        observed=F.unfold(obs.expand(1, c, -1, -1).contiguous(), p, stride=stride)[0].T,
        fit_weights=F.unfold(weight.expand(1, c, -1, -1).contiguous(), p, stride=stride)[0].T,
        has_dead=F.unfold(dead_in, p, stride=stride)[0].amax(dim=0) > 0,
        padded=(int(img.shape[2]), int(img.shape[3])),
        size=(int(height), int(width)),
        channels=int(c),
    )


def assemble(rec: torch.Tensor, patches: PlanePatches, p: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """The plane from its reconstructed patches ``rec`` (N, C*p*p), and the patches' summed
    confidence per pixel (H, W).

    Each pixel is the average of its patches, weighted by confidence: the share of the patch
    observed, squared (a patch that saw almost nothing extrapolates badly).
    """
    conf = patches.observed.mean(dim=1, keepdim=True) ** 2  # (N, 1)
    num = F.fold((rec * conf).T[None], patches.padded, p, stride=stride)[0]  # (C, Hp, Wp)
    den = F.fold(conf.expand_as(rec).T[None].contiguous(), patches.padded, p, stride=stride)[0]
    height, width = patches.size
    est = (num / den.clamp_min(1e-12))[:, :height, :width]
    support = den[0, :height, :width].numpy()
    return (est.permute(1, 2, 0).numpy() if patches.channels > 1 else est[0].numpy()), support
