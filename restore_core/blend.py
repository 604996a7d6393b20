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

import numpy as np
import torch

from restore_core.fill import both_fills, flat_holes, on_one_image
from restore_core.refiner_calibration import probe_weights
from restore_core.sparse_fill import Sparse, SparseSpec, active_specs, add_sparse_fill, sparse_fill, sparse_specs


def _candidates(x: torch.Tensor, d: torch.Tensor, specs: list[SparseSpec]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    harmonic, biharmonic = both_fills(x, d)
    return biharmonic, [harmonic - biharmonic] + [sparse_fill(x, d, biharmonic, s) - biharmonic for s in specs]


@torch.no_grad()
def blend_fill(images: torch.Tensor, dead: torch.Tensor, sparse: Sparse = None, probe_size: int = 64) -> torch.Tensor:
    """Fill dead pixels with the calibrated blend of the harmonic, biharmonic and sparse fills.

    Parameters
    ----------
    images : Tensor (B, C, H, W) float32 in [0, 1]; values at dead pixels are ignored
    dead : Tensor (B, 1, H, W) bool, True = to fill
    sparse : the sparse-transform fills to blend in, each with its own weight (None = the
        defaults, :func:`restore_core.sparse_fill.sparse_specs`; none = blend the two
        harmonic fills only)
    probe_size : side of the central window the weights are measured on (0 = the whole image)

    Returns
    -------
    Tensor (B, C, H, W) float32 in [0, 1]; observed pixels are the input's, bit for bit.
    Under 64 x 64 pixels the weights are pulled towards the batch's (see
    :func:`restore_core.refiner_calibration.calibration`), so a result then depends a little on
    the other images of its batch.
    """
    specs = active_specs(sparse_specs() if sparse is None else sparse)
    dead = dead.to(torch.bool)
    if not bool(dead.any()):
        return images.clone()

    def predict(x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return _candidates(x, d, specs)

    costly = range(1, 1 + len(specs))  # each sparse fill is a full-image pass; the harmonic one is not
    weights = probe_weights(predict, images, dead, probe_size, costly=costly).to(images.dtype)
    harmonic, base = both_fills(images, dead)
    out = base + weights[:, 0].view(-1, 1, 1, 1) * (harmonic - base)
    for i, spec in enumerate(specs):  # the costly full-image sparse fills only on the images that use them
        add_sparse_fill(out, weights[:, 1 + i], images, dead, base, spec)
    flat, value = flat_holes(images, dead)  # a flat neighbourhood: its value
    out = torch.where(flat, value, out.clamp_(0.0, 1.0))
    return torch.where(dead, out, images)


def blend_image(img: np.ndarray, dead: np.ndarray, sparse: Sparse = None) -> np.ndarray:
    """:func:`blend_fill` of one numpy image, observed pixels unchanged (see
    :func:`restore_core.fill.on_one_image`)."""
    return on_one_image(lambda x, d: blend_fill(x, d, sparse), img, dead)
