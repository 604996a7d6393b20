"""The restorer that needs no training: the biharmonic fill, with the harmonic fill and the
sparse-transform fill blended in by weights measured on each image itself (``fit.method:
sparse``, what ``auto`` uses when no refiner is given).

The same probes as the learned method's calibration
(:func:`restore_core.refiner_calibration.probe_weights`): the image's own dead mask, shifted,
hides more of its observed pixels, the three fills predict them, and the least-squares blend on
them (each weight in [0, 1]) is the image's. Where the sparse fill recovers texture and edges
between scattered pixels or inside small holes it gets weight near 1; where it rings (flat
content, whole missing lines) the probe gives it less and the biharmonic fill stays. All batched
torch on the images' device: no per-image CPU step.
"""

from __future__ import annotations

import dataclasses

import torch

from restore_core.fill import both_fills
from restore_core.refiner_calibration import probe_weights
from restore_core.sparse_fill import SparseSpec, sparse_fill


def _candidates(x: torch.Tensor, d: torch.Tensor, sparse: SparseSpec) -> tuple[torch.Tensor, list[torch.Tensor]]:
    harmonic, biharmonic = both_fills(x, d)
    directions = [harmonic - biharmonic]
    if sparse.iters > 0:
        directions.append(sparse_fill(x, d, biharmonic, sparse) - biharmonic)
    return biharmonic, directions


@torch.no_grad()
def blend_fill(
    images: torch.Tensor, dead: torch.Tensor, sparse: SparseSpec | None = None, probe_size: int = 64
) -> torch.Tensor:
    """Fill dead pixels with the calibrated blend of the harmonic, biharmonic and sparse fills.

    Parameters
    ----------
    images : Tensor (B, C, H, W) float32 in [0, 1]; values at dead pixels are ignored
    dead : Tensor (B, 1, H, W) bool, True = to fill
    sparse : settings of the sparse-transform fill (None = the defaults; ``iters`` 0 = blend
        the two harmonic fills only)
    probe_size : side of the central window the weights are measured on (0 = the whole image)

    Returns
    -------
    Tensor (B, C, H, W) float32 in [0, 1]; observed pixels are the input's, bit for bit.
    """
    spec = sparse if sparse is not None else SparseSpec()
    dead = dead.to(torch.bool)
    if not bool(dead.any()):
        return images.clone()

    def predict(x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return _candidates(x, d, spec)

    weights = probe_weights(predict, images, dead, probe_size).to(images.dtype)
    # the full-image sparse fill is the costly part: skipped when no image of the batch uses it
    used = spec if spec.iters > 0 and bool((weights[:, -1] > 0).any()) else dataclasses.replace(spec, iters=0)
    base, directions = _candidates(images, dead, used)
    out = base.clone()
    for i, direction in enumerate(directions):
        out += weights[:, i].view(-1, 1, 1, 1) * direction
    return torch.where(dead, out.clamp_(0.0, 1.0), images)
