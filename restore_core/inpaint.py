"""Filling dead pixels of whole images with NMF bases, many images in one solver call.

Images are float32 in [0, 1], (H, W) or (H, W, C); dead masks are boolean (H, W), True =
dead. Two modes, set by the bases:

- ``global``: each image is one row of X at the bases' exact size (the write-up's setting).
- ``patch``: overlapping p x p patches every ``stride`` pixels; each patch is fitted on its
  observed pixels, and each dead pixel takes the average of its patches' reconstructions,
  weighted by how many observed pixels each patch had. Works at any image size.

Gray bases restore colour images channel by channel; RGB bases need 3 (or 4, RGBA) channels.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from restore_core import baselines, nmf
from restore_core.bases import Bases
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


class NMFInpainter:
    """Fills dead pixels with frozen NMF bases, batching every patch of every image.

    Parameters
    ----------
    bases : Bases
    fit : FitConfig
        ``method`` nmf (masked FISTA) or reference (the write-up's gradient descent); ``stride``,
        ``l1``, ``max_iter``, ``tol``, ``keep_observed``, ``masked``, ``chunk_size``.
    device : str
    """

    def __init__(self, bases: Bases, fit: FitConfig, device: str = "auto") -> None:
        self.bases = bases
        self.fit = fit
        self.device = resolve_device(device)
        self.H = torch.from_numpy(bases.H).to(self.device)  # (k, n_pixels)
        self.lipschitz = nmf.spectral_norm_sq(self.H)
        self.last_weights: np.ndarray | None = None
        # The write-up's method reconstructs every pixel; ours keeps the observed ones.
        self.keep_observed = fit.keep_observed and fit.method != "reference"
        # Weight of the smooth-fill prior against the patches' summed confidence (see
        # _restore_patches): negligible under random dead pixels, dominant inside big holes.
        self.prior_weight = 0.1

    # ------------------------------------------------------------------ solver
    def _solve(self, X: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
        """Reconstruct rows of X (B, n) with observed mask M (B, n), chunked."""
        out = torch.empty_like(X)
        weights = []
        step = max(1, self.fit.chunk_size)
        for s in range(0, X.shape[0], step):
            x, m = X[s : s + step], M[s : s + step]
            if self.fit.method == "reference":
                W = nmf.fit_weights_reference(
                    x, self.H, lr=self.fit.reference_lr, n_iter=self.fit.reference_iter, device=self.device
                )
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", nmf.ConvergenceWarning)
                    W = nmf.fit_weights(
                        x,
                        self.H,
                        m if self.fit.masked else None,
                        l1=self.fit.l1,
                        max_iter=self.fit.max_iter,
                        tol=self.fit.tol,
                        device=self.device,
                        lipschitz=self.lipschitz,
                    )
            assert isinstance(W, torch.Tensor)
            weights.append(W.cpu())
            out[s : s + step] = W @ self.H
        self.last_weights = torch.cat(weights).numpy() if weights else None
        return out.clamp_(0.0, 1.0)

    # ------------------------------------------------------------------ public
    def restore_batch(
        self,
        images: Sequence[np.ndarray],
        dead: Sequence[np.ndarray],
        pixel_budget: int = 1_000_000,
        tile: int = 512,
    ) -> list[np.ndarray]:
        """Restore every image; returns float32 images of the same shapes.

        Images are solved together in groups of at most ``pixel_budget`` pixels, so that one
        solver call serves many small images while memory stays bounded. In patch mode, images
        larger than ``tile`` x ``tile`` are cut into overlapping tiles first (each restored like
        a small image, the overlaps cropped away), so peak memory does not grow with image size.
        """
        pieces: list[tuple[np.ndarray, np.ndarray]] = []
        layout: list[list[tuple[int, tuple[slice, slice], tuple[slice, slice]]]] = []
        for img, d in zip(images, dead, strict=True):
            spans = self._tiles(img.shape[:2], tile)
            layout.append([])
            for window, keep_out, keep_in in spans:
                layout[-1].append((len(pieces), keep_out, keep_in))
                pieces.append((img[window], d[window]))
        solved: list[np.ndarray] = []
        group: list[int] = []
        size = 0
        for i, (img, _) in enumerate(pieces):
            if group and size + img.size > pixel_budget:
                solved.extend(self._restore_group([pieces[j][0] for j in group], [pieces[j][1] for j in group]))
                group, size = [], 0
            group.append(i)
            size += img.size
        if group:
            solved.extend(self._restore_group([pieces[j][0] for j in group], [pieces[j][1] for j in group]))
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

    def _tiles(
        self, shape: tuple[int, ...], tile: int
    ) -> list[tuple[tuple[slice, slice], tuple[slice, slice], tuple[slice, slice]]]:
        """(window, where its kept part goes, the kept part within the window) per tile."""
        h, w = int(shape[0]), int(shape[1])
        if self.bases.meta.mode != "patch" or (h <= tile and w <= tile):
            return [((slice(0, h), slice(0, w)), (slice(0, h), slice(0, w)), (slice(0, h), slice(0, w)))]
        margin = 2 * self.bases.meta.patch_size  # context on each side of a kept part
        step = max(tile - 2 * margin, margin)

        def spans(n: int) -> list[tuple[int, int, int, int]]:
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

        result = []
        for y0, y1, ky0, ky1 in spans(h):
            for x0, x1, kx0, kx1 in spans(w):
                result.append(
                    (
                        (slice(y0, y1), slice(x0, x1)),
                        (slice(ky0, ky1), slice(kx0, kx1)),
                        (slice(ky0 - y0, ky1 - y0), slice(kx0 - x0, kx1 - x0)),
                    )
                )
        return result

    def _restore_group(self, images: Sequence[np.ndarray], dead: Sequence[np.ndarray]) -> list[np.ndarray]:
        jobs: list[tuple[int, np.ndarray, np.ndarray]] = []  # (image index, plane, dead)
        planes_of: list[list[np.ndarray]] = []
        for i, (img, d) in enumerate(zip(images, dead, strict=True)):
            planes = _planes(img, self.bases.meta.channels)
            planes_of.append(planes)
            for p in planes:
                jobs.append((i, p, d))
        if self.bases.meta.mode == "global":
            filled = self._restore_global([p for _, p, _ in jobs], [d for _, _, d in jobs])
        else:
            filled = self._restore_patches([p for _, p, _ in jobs], [d for _, _, d in jobs])
        out: list[list[np.ndarray]] = [[] for _ in images]
        for (i, _, _), f in zip(jobs, filled, strict=True):
            out[i].append(f)
        return [_join(o, img) for o, img in zip(out, images, strict=True)]

    def _finish(self, plane: np.ndarray, rec: np.ndarray, d: np.ndarray) -> np.ndarray:
        rec = rec.astype(np.float32)
        if self.keep_observed:
            rec[~d] = plane[~d]
        return rec

    def _restore_global(self, planes: list[np.ndarray], dead: list[np.ndarray]) -> list[np.ndarray]:
        h, w = self.bases.meta.image_shape
        for p in planes:
            if p.shape[:2] != (h, w):
                raise UserError(
                    f"bases are global for {w}x{h} images, image is {p.shape[1]}x{p.shape[0]}; "
                    "use patch-mode bases for images of other sizes"
                )
        if not planes:
            return []
        X = torch.from_numpy(np.stack([p.reshape(-1) for p in planes])).to(self.device)
        M = (
            torch.from_numpy(
                np.stack(
                    [
                        (~np.broadcast_to(d[..., None] if p.ndim == 3 else d, p.shape)).reshape(-1)
                        for p, d in zip(planes, dead, strict=True)
                    ]
                )
            )
            .to(self.device)
            .float()
        )
        rec = self._solve(X, M).cpu().numpy()
        return [self._finish(p, r.reshape(p.shape), d) for p, r, d in zip(planes, rec, dead, strict=True)]

    def _prior_target(self, plane: np.ndarray, d: np.ndarray) -> np.ndarray:
        """The fill the prior pulls dead pixels towards (observed pixels unchanged)."""
        if not d.any():
            return plane
        if self.fit.prior_fill == "biharmonic":
            # the batched torch solve: scikit-image's result (docs/restore.md) without a sparse
            # factorisation per image
            return fill_image(plane, d, order=2)
        return baselines.smooth_fill(plane, d)

    def _restore_patches(self, planes: list[np.ndarray], dead: list[np.ndarray]) -> list[np.ndarray]:
        # Dead pixels are pulled weakly (weight ``fit.prior``) towards a prior fill, so patches
        # that see only part of a hole do not extrapolate wildly. With ``refine`` > 0 the fit is
        # repeated with the previous result as the prior's target (a fixed-point iteration).
        if self.fit.method == "reference":
            # The write-up literally: fit the damaged patches as they are (dead pixels = 0), no
            # prior, no fallback fill, every pixel reconstructed.
            return self._patch_pass(planes, dead, planes, fallback=False)
        targets = [self._prior_target(plane, d) for plane, d in zip(planes, dead, strict=True)]
        out = self._patch_pass(planes, dead, targets)
        for _ in range(max(0, self.fit.refine)):
            out = self._patch_pass(planes, dead, out)
        return out

    def _patch_pass(
        self, planes: list[np.ndarray], dead: list[np.ndarray], targets: list[np.ndarray], fallback: bool = True
    ) -> list[np.ndarray]:
        p, s = self.bases.meta.patch_size, max(1, self.fit.stride)
        cols, masks, metas, fit_weights = [], [], [], []
        needed: list[torch.Tensor] = []
        prior = self.fit.prior
        for plane, d, smooth in zip(planes, dead, targets, strict=True):
            target = np.where(d if plane.ndim == 2 else d[..., None], smooth, plane).astype(np.float32)
            img = torch.from_numpy(np.ascontiguousarray(target))
            img = img[None, None] if img.ndim == 2 else img.permute(2, 0, 1)[None]  # (1, C, H, W)
            obs = torch.from_numpy(~d).float()[None, None]  # (1, 1, H, W)
            weight = obs + prior * (1.0 - obs)
            H_, W_ = img.shape[2:]
            # Pad so that patches every s pixels cover the image; padding counts as dead.
            ph = max(p, H_) + (-(max(p, H_) - p) % s) - H_
            pw = max(p, W_) + (-(max(p, W_) - p) % s) - W_
            img = F.pad(img, (0, pw, 0, ph))
            obs = F.pad(obs, (0, pw, 0, ph))
            c = img.shape[1]
            weight = F.pad(weight, (0, pw, 0, ph))
            x = F.unfold(img, p, stride=s)[0].T  # (N, C*p*p), channel-major
            m = F.unfold(obs.expand(1, c, -1, -1).contiguous(), p, stride=s)[0].T  # (N, C*p*p)
            wts = F.unfold(weight.expand(1, c, -1, -1).contiguous(), p, stride=s)[0].T  # (N, C*p*p)
            dead_in = F.pad(torch.from_numpy(d).float()[None, None], (0, pw, 0, ph))  # padding is not dead
            needed.append(F.unfold(dead_in, p, stride=s)[0].amax(dim=0) > 0)  # (N,)
            cols.append(x)
            masks.append(m)
            fit_weights.append(wts)
            metas.append((img.shape[2:], (H_, W_), c))
        X = torch.cat(cols)
        M = torch.cat(fit_weights)
        if self.keep_observed:
            # Only patches that hold a dead pixel inside the image feed a pixel of the result
            # (observed ones are kept as they are): with sparse defects, most patches are skipped.
            need = torch.cat(needed)
            rec = torch.zeros_like(X)
            if bool(need.any()):
                rec[need] = self._solve(X[need].to(self.device), M[need].to(self.device)).cpu()
        else:
            rec = self._solve(X.to(self.device), M.to(self.device)).cpu()
        results = []
        start = 0
        for (padded, (H_, W_), c), x, m, plane, d, smooth in zip(
            metas, cols, masks, planes, dead, targets, strict=True
        ):
            n = x.shape[0]
            r = rec[start : start + n]
            start += n
            # Patches with more observed pixels are more trustworthy; a patch that saw almost
            # nothing extrapolates badly, so its weight falls off quadratically.
            conf = m.mean(dim=1, keepdim=True) ** 2  # (N, 1)
            num = F.fold((r * conf).T[None], padded, p, stride=s)[0]  # (C, Hp, Wp)
            den = F.fold(conf.expand_as(r).T[None].contiguous(), padded, p, stride=s)[0]
            est = (num / den.clamp_min(1e-12))[:, :H_, :W_]
            support = den[0, :H_, :W_].numpy()  # (H, W): summed confidence of the patches
            est_np = est.permute(1, 2, 0).numpy() if c > 1 else est[0].numpy()
            out = self._finish(plane, est_np, d)
            weak = d & (support < 1.0)
            if fallback and weak.any():
                # Where patches saw little (holes near or larger than a patch), blend towards a
                # smooth fill from the observed pixels: a prior of weight ``prior_weight``.
                if smooth is plane:
                    smooth = baselines.smooth_fill(plane, d)
                a = support / (support + self.prior_weight)
                if out.ndim == 3:
                    a = a[..., None]
                blended = a * out + (1.0 - a) * smooth
                sel = weak if out.ndim == 2 else np.broadcast_to(weak[..., None], out.shape)
                out = np.where(sel, blended, out)
            results.append(out.astype(np.float32))
        return results


def restore_image(img: np.ndarray, dead: np.ndarray, method: str, inpainter: NMFInpainter | None = None) -> np.ndarray:
    """One image by any method name: ``nmf``/``reference`` (need ``inpainter``), ``fill`` (the
    torch biharmonic fill, one image), ``biharmonic``, ``median``, ``none``."""
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
    if method == "none":
        return img.astype(np.float32, copy=True)
    raise ValueError(f"unknown method {method!r}")
