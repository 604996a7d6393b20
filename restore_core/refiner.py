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

import torch
from torch import nn

from restore_core.bases import Bases
from restore_core.fill import flat_holes
from restore_core.refiner_calibration import calibration
from restore_core.refiner_net import Refiner, RefinerSpec, _predict, build_refiner, nmf_reconstruction
from restore_core.refiner_training import (
    random_training_mask,
    self_supervised_gain,
    train_refiner,
    training_loss,
)
from restore_core.sparse_fill import Sparse, active_specs, add_sparse_fill

__all__ = [
    "Refiner",
    "RefinerSpec",
    "build_refiner",
    "calibration",
    "nmf_reconstruction",
    "random_training_mask",
    "refine",
    "self_supervised_gain",
    "train_refiner",
    "training_loss",
]


@torch.no_grad()
def refine(
    model: nn.Module,
    images: torch.Tensor,
    dead: torch.Tensor,
    bases: Bases | None = None,
    calibrate: bool = True,
    probe_size: int = 64,
    shifts: int = 0,
    sparse: Sparse = None,
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
    sparse : with ``calibrate``, also blend in sparse-transform fills
        (:func:`restore_core.sparse_fill.sparse_fill`, started from the biharmonic fill), each
        spec with its own measured weight (:func:`restore_core.sparse_fill.sparse_specs` are the
        restore job's); None or ``iters`` 0 = off

    Returns
    -------
    Tensor (B, C, H, W) float32 in [0, 1]; observed pixels are the input's, bit for bit.
    """
    was_training = model.training
    model.eval()
    try:
        dead = dead.to(torch.bool)
        if not calibrate:
            pred = _predict(model, images, dead, bases)[0].clamp_(0.0, 1.0)
        else:
            weights = calibration(model, images, dead, bases, probe_size, shifts, sparse)
            # the costly full-image passes (the net, each sparse fill) only on the images that use them
            pred, filled, harmonic = _predict(model, images, dead, bases, rows=weights[:, 0] > 0)
            w = weights.view(images.shape[0], -1, 1, 1, 1)
            blend = filled + w[:, 0] * (pred.clamp_(0.0, 1.0) - filled) + w[:, 1] * (harmonic - filled)
            for i, spec in enumerate(active_specs(sparse)):
                add_sparse_fill(blend, weights[:, 2 + i], images, dead, filled, spec)
            flat, value = flat_holes(images, dead)  # a flat neighbourhood: its value (blend.py)
            pred = torch.where(flat, value, blend.clamp_(0.0, 1.0))
    finally:
        model.train(was_training)
    return torch.where(dead, pred, images)
