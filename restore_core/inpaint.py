"""Filling dead pixels of whole images with NMF bases, many images in one solver call.

Images are float32 in [0, 1], (H, W) or (H, W, C); dead masks are boolean (H, W), True =
dead. Two modes, set by the bases:

- ``global``: each image is one row of X at the bases' exact size (the write-up's setting).
- ``patch``: overlapping p x p patches every ``stride`` pixels; each patch is fitted on its
  observed pixels, and each dead pixel takes the average of its patches' reconstructions,
  weighted by how many observed pixels each patch had. Works at any image size.

One :class:`WeightFitter` (the solver), a :class:`GlobalInpainter` or :class:`PatchInpainter`
(chosen once by the bases' mode) and :class:`NMFInpainter` (tiles, pixel-budget groups, colour
planes) around them; the patch geometry is :mod:`restore_core.patches`.

Gray bases restore colour images channel by channel; RGB bases need 3 (or 4, RGBA) channels.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from restore_core import baselines, nmf, patches
from restore_core.bases import Bases
from restore_core.blend import blend_image
from restore_core.config import FitConfig
from restore_core.device import resolve_device
from restore_core.errors import UserError
from restore_core.fill import fill_image


def _planes(img: np.ndarray, channels: int) -> list[np.ndarray]:
    """Split an image into the arrays the bases expect: (H, W) for gray, (H, W, 3) for RGB."""
    if img.ndim == 2:
        if channels != 1:
            raise UserError(f"bases are for {channels} channels, image is gray; use gray bases")
        return [img]
    c = img.shape[2]
    if channels == 1:
        return [img[:, :, i] for i in range(c)]
    if c < 3:
        raise UserError(f"bases are for RGB, image has {c} channels; use gray bases")
    return [img[:, :, :3]] + ([img[:, :, 3]] if c == 4 else [])


def _join(planes: list[np.ndarray], like: np.ndarray) -> np.ndarray:
    if like.ndim == 2:
        return planes[0]
    parts = [p[:, :, None] if p.ndim == 2 else p for p in planes]
    return np.concatenate(parts, axis=2)


class WeightFitter:
    """Fits weights with frozen bases and reconstructs: ``fit.method`` nmf (masked FISTA) or
    reference (the write-up's plain gradient descent), in chunks of ``fit.chunk_size`` rows."""

    def __init__(self, H: np.ndarray, fit: FitConfig, device: torch.device) -> None:
        self.fit = fit
        self.device = device
        self.H = torch.from_numpy(H).to(device)  # (k, n_pixels)
        self.lipschitz = nmf.spectral_norm_sq(self.H)

    def no_weights(self) -> np.ndarray:
        return np.zeros((0, self.H.shape[0]), np.float32)

    def _weights(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        fit = self.fit
        if fit.method == "reference":
            W = nmf.fit_weights_reference(x, self.H, lr=fit.reference_lr, n_iter=fit.reference_iter, device=self.device)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", nmf.ConvergenceWarning)
                W = nmf.fit_weights(
                    x,
                    self.H,
                    m if fit.masked else None,
                    l1=fit.l1,
                    max_iter=fit.max_iter,
                    tol=fit.tol,
                    device=self.device,
                    lipschitz=self.lipschitz,
                )
        assert isinstance(W, torch.Tensor)
        return W

    def reconstruct(self, X: torch.Tensor, M: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        """Rows of X (B, n) with fit weights M (B, n) -> (their reconstruction in [0, 1], the
        fitted weights (B, k))."""
        out = torch.empty_like(X)
        weights = []
        step = max(1, self.fit.chunk_size)
        for s in range(0, X.shape[0], step):
            W = self._weights(X[s : s + step], M[s : s + step])
            weights.append(W.cpu())
            out[s : s + step] = W @ self.H
        return out.clamp_(0.0, 1.0), (torch.cat(weights).numpy() if weights else self.no_weights())


def _keep_observed(plane: np.ndarray, rec: np.ndarray, dead: np.ndarray, keep: bool) -> np.ndarray:
    rec = rec.astype(np.float32)
    if keep:
        rec[~dead] = plane[~dead]
    return rec


class GlobalInpainter:
    """Global bases: each plane is one row at the bases' exact size (the write-up's setting)."""

    def __init__(self, fitter: WeightFitter, image_shape: tuple[int, int], keep_observed: bool) -> None:
        self.fitter, self.image_shape, self.keep_observed = fitter, image_shape, keep_observed

    def restore_planes(self, planes: list[np.ndarray], dead: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        h, w = self.image_shape
        for p in planes:
            if p.shape[:2] != (h, w):
                raise UserError(
                    f"bases are global for {w}x{h} images, image is {p.shape[1]}x{p.shape[0]}; "
                    "use patch-mode bases for images of other sizes"
                )
        if not planes:
            return [], self.fitter.no_weights()
        device = self.fitter.device
        X = torch.from_numpy(np.stack([p.reshape(-1) for p in planes])).to(device)
        observed = [
            (~np.broadcast_to(d[..., None] if p.ndim == 3 else d, p.shape)).reshape(-1)
            for p, d in zip(planes, dead, strict=True)
        ]
        M = torch.from_numpy(np.stack(observed)).to(device).float()
        rec, W = self.fitter.reconstruct(X, M)
        rec_np = rec.cpu().numpy()
        out = [
            _keep_observed(p, r.reshape(p.shape), d, self.keep_observed)
            for p, r, d in zip(planes, rec_np, dead, strict=True)
        ]
        return out, W


class PatchInpainter:
    """Patch bases: overlapping p x p patches every ``fit.stride`` pixels, each fitted on its
    observed pixels; a dead pixel takes its patches' reconstructions, weighted by how much of
    each patch was observed. Works at any image size.

    Dead pixels are pulled weakly (weight ``fit.prior``) towards a prior fill (``fit.prior_fill``),
    so patches that see only part of a hole do not extrapolate wildly; with ``fit.refine`` > 0
    the fit is repeated with the previous result as the prior's target. Where the patches saw
    little (holes near or larger than a patch), the result is blended towards a smooth fill with
    weight ``fit.hole_prior`` against the patches' summed confidence.
    """

    def __init__(self, fitter: WeightFitter, patch_size: int, fit: FitConfig, keep_observed: bool) -> None:
        self.fitter, self.patch_size, self.fit, self.keep_observed = fitter, patch_size, fit, keep_observed

    def restore_planes(self, planes: list[np.ndarray], dead: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        if self.fit.method == "reference":
            # The write-up literally: fit the damaged patches as they are (dead pixels = 0), no
            # prior, no fallback fill, every pixel reconstructed.
            return self._pass(planes, dead, planes, fallback=False)
        targets = [self._prior_target(plane, d) for plane, d in zip(planes, dead, strict=True)]
        out, W = self._pass(planes, dead, targets)
        for _ in range(max(0, self.fit.refine)):
            out, W = self._pass(planes, dead, out)
        return out, W

    def _prior_target(self, plane: np.ndarray, d: np.ndarray) -> np.ndarray:
        """The fill the prior pulls dead pixels towards (observed pixels unchanged)."""
        if not d.any():
            return plane
        if self.fit.prior_fill == "biharmonic":
            # the batched torch solve: scikit-image's result (docs/restore.md) without a sparse
            # factorisation per image
            return fill_image(plane, d, order=2)
        return baselines.smooth_fill(plane, d)

    def _pass(
        self, planes: list[np.ndarray], dead: list[np.ndarray], targets: list[np.ndarray], fallback: bool = True
    ) -> tuple[list[np.ndarray], np.ndarray]:
        p, s = self.patch_size, max(1, self.fit.stride)
        sets = []
        for plane, d, target in zip(planes, dead, targets, strict=True):
            pulled = np.where(d if plane.ndim == 2 else d[..., None], target, plane).astype(np.float32)
            sets.append(patches.extract(pulled, d, p, s, self.fit.prior))
        rec, W = self._reconstruct(sets)
        results = []
        start = 0
        for ps, plane, d, target in zip(sets, planes, dead, targets, strict=True):
            n = ps.values.shape[0]
            est, support = patches.assemble(rec[start : start + n], ps, p, s)
            start += n
            out = _keep_observed(plane, est, d, self.keep_observed)
            if fallback:
                out = self._blend_holes(out, plane, d, target, support)
            results.append(out.astype(np.float32))
        return results, W

    def _reconstruct(self, sets: list[patches.PlanePatches]) -> tuple[torch.Tensor, np.ndarray]:
        X = torch.cat([ps.values for ps in sets])
        M = torch.cat([ps.fit_weights for ps in sets])
        device = self.fitter.device
        if not self.keep_observed:
            rec, W = self.fitter.reconstruct(X.to(device), M.to(device))
            return rec.cpu(), W
        # Only patches that hold a dead pixel inside the image feed a pixel of the result
        # (observed ones are kept as they are): with sparse defects, most patches are skipped.
        need = torch.cat([ps.has_dead for ps in sets])
        out = torch.zeros_like(X)
        if not bool(need.any()):
            return out, self.fitter.no_weights()
        rec, W = self.fitter.reconstruct(X[need].to(device), M[need].to(device))
        out[need] = rec.cpu()
        return out, W

    def _blend_holes(
        self, out: np.ndarray, plane: np.ndarray, d: np.ndarray, target: np.ndarray, support: np.ndarray
    ) -> np.ndarray:
        """Where the patches saw little, blend towards a smooth fill from the observed pixels."""
        weak = d & (support < 1.0)
        if not weak.any():
            return out
        smooth = baselines.smooth_fill(plane, d) if target is plane else target
        a = support / (support + self.fit.hole_prior)
        if out.ndim == 3:
            a = a[..., None]
        blended = a * out + (1.0 - a) * smooth
        sel = weak if out.ndim == 2 else np.broadcast_to(weak[..., None], out.shape)
        return np.where(sel, blended, out)


class NMFInpainter:
    """Fills dead pixels with frozen NMF bases, batching every patch of every image.

    The bases' mode picks, once, a :class:`GlobalInpainter` or a :class:`PatchInpainter`; this
    class cuts large images into tiles (patch mode), groups the pieces under a pixel budget and
    splits colour images into the planes the bases expect.

    Parameters
    ----------
    bases : Bases
    fit : FitConfig
        ``method`` nmf (masked FISTA) or reference (the write-up's gradient descent); ``stride``,
        ``l1``, ``max_iter``, ``tol``, ``keep_observed``, ``masked``, ``chunk_size``, ``prior``,
        ``prior_fill``, ``refine``, ``hole_prior``.
    device : str
    """

    def __init__(self, bases: Bases, fit: FitConfig, device: str = "auto") -> None:
        self.bases = bases
        self.fit = fit
        self.device = resolve_device(device)
        # The write-up's method reconstructs every pixel; ours keeps the observed ones.
        self.keep_observed = fit.keep_observed and fit.method != "reference"
        self.fitter = WeightFitter(bases.H, fit, self.device)
        meta = bases.meta
        self.planes: GlobalInpainter | PatchInpainter = (
            GlobalInpainter(self.fitter, meta.image_shape, self.keep_observed)
            if meta.mode == "global"
            else PatchInpainter(self.fitter, meta.patch_size, fit, self.keep_observed)
        )

    def restore_batch(
        self, images: Sequence[np.ndarray], dead: Sequence[np.ndarray], pixel_budget: int = 1_000_000, tile: int = 512
    ) -> list[np.ndarray]:
        """Restore every image; returns float32 images of the same shapes.

        Images are solved together in groups of at most ``pixel_budget`` pixels, so that one
        solver call serves many small images while memory stays bounded. In patch mode, images
        larger than ``tile`` x ``tile`` are cut into overlapping tiles first (each restored like
        a small image, the overlaps cropped away), so peak memory does not grow with image size.
        """
        return self.restore_with_weights(images, dead, pixel_budget, tile)[0]

    def restore_with_weights(
        self, images: Sequence[np.ndarray], dead: Sequence[np.ndarray], pixel_budget: int = 1_000_000, tile: int = 512
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """:meth:`restore_batch`, and the weights fitted in each group's last solve, stacked (n, k)
        (none for a group whose patches held no dead pixel)."""
        if self.bases.meta.mode == "patch":
            margin = 2 * self.bases.meta.patch_size  # context on each side of a tile's kept part
            pieces, layout = patches.cut(images, dead, lambda shape: patches.tile_spans(shape, tile, margin))
        else:
            pieces, layout = patches.cut(images, dead, patches.whole_image)
        solved: list[np.ndarray] = []
        weights = [self.fitter.no_weights()]
        for group in patches.pixel_groups([img.size for img, _ in pieces], pixel_budget):
            out, W = self._restore_group([pieces[j][0] for j in group], [pieces[j][1] for j in group])
            solved.extend(out)
            weights.append(W)
        return patches.paste(images, solved, layout), np.concatenate(weights)

    def _restore_group(
        self, images: Sequence[np.ndarray], dead: Sequence[np.ndarray]
    ) -> tuple[list[np.ndarray], np.ndarray]:
        owner: list[int] = []  # image index of each plane
        planes: list[np.ndarray] = []
        plane_dead: list[np.ndarray] = []
        for i, (img, d) in enumerate(zip(images, dead, strict=True)):
            for p in _planes(img, self.bases.meta.channels):
                owner.append(i)
                planes.append(p)
                plane_dead.append(d)
        filled, W = self.planes.restore_planes(planes, plane_dead)
        out: list[list[np.ndarray]] = [[] for _ in images]
        for i, f in zip(owner, filled, strict=True):
            out[i].append(f)
        return [_join(o, img) for o, img in zip(out, images, strict=True)], W


def restore_image(img: np.ndarray, dead: np.ndarray, method: str, inpainter: NMFInpainter | None = None) -> np.ndarray:
    """One image by any method name: ``nmf``/``reference`` (need ``inpainter``), ``fill`` (the
    torch biharmonic fill, one image), ``sparse`` (:func:`restore_core.blend.blend_image`),
    ``biharmonic``, ``median``, ``none``."""
    if method in ("nmf", "reference"):
        if inpainter is None:
            raise ValueError(f"method {method!r} needs bases")
        return inpainter.restore_batch([img], [dead])[0]
    if method == "biharmonic":
        return baselines.biharmonic(img, dead)
    if method == "median":
        return baselines.median_fill(img, dead)
    if method == "fill":
        return fill_image(img, dead, order=2)
    if method == "sparse":
        return blend_image(img, dead)
    if method == "none":
        return img.astype(np.float32, copy=True)
    raise ValueError(f"unknown method {method!r}")
