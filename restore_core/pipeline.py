"""The per-batch restore step: a batch of rows in, a batch of rows out.

``Restorer`` is what the Ray job maps over the dataset (``map_batches`` with an actor pool),
and what tests and benchmarks call in-process. A batch is a ``dict[str, np.ndarray]`` of
equal-length columns (Ray Data's numpy batch format). Every input row gives exactly one
output row; a row that fails gets ``status = "error"`` and a message, the others go on.

Which pixels are dead (``mask_source``): the row's ``mask`` cell when it holds bytes (non-zero =
dead; an all-zero mask means nothing is dead), else (no mask column, a null or empty cell) the
``masks.rule`` detection. Colour channels only: an alpha channel is given back as it was.

``dead_fraction_in`` is the share of the image's pixels that were dead (by that source);
``dead_fraction_out`` the share still dead in the output, judged the same way: for a mask, the
masked pixels that still look dead by ``masks.rule`` (all of them when ``fit.method`` is
``none``); for detection, ``masks.rule`` rerun on the output. NaN when SR changed the size.

A row with nothing observed (every pixel dead), or with an observed share under
``fit.min_observed_fraction``, is not filled: ``status = "error"``, the input image passed
through as it was. An unreadable or mis-sized ``reference`` leaves the full-reference metrics
null and says so in ``error``; the row stays ``ok``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any

import numpy as np
import torch

from restore_core import codec, masks, metrics, rows
from restore_core.bases import Bases, validate_bases
from restore_core.blend import blend_fill
from restore_core.codec import cell_bytes
from restore_core.config import RestoreConfig
from restore_core.device import resolve_device
from restore_core.errors import ImageDecodeError, UserError
from restore_core.fill import harmonic_fill
from restore_core.inpaint import NMFInpainter, restore_image
from restore_core.quality import restore_only_flagged
from restore_core.refiner import RefinerSpec, refine
from restore_core.rows import OUTPUT_COLUMNS
from restore_core.sparse_fill import sparse_specs

#: A decoded row: the image, its info, its dead mask and where the mask came from.
Decoded = tuple[np.ndarray, codec.ImageInfo, np.ndarray, str]
SRApply = Callable[[np.ndarray], np.ndarray]
#: Pixels (times channels) per batched fill or refiner call: bounds memory, amortises the calls.
PIXEL_BUDGET = 4 * 2**20


def resolve_method(method: str, have_bases: bool, have_refiner: bool) -> str:
    """The method ``fit.method`` names: ``auto`` is ``learned`` with a refiner, else ``sparse``
    (:func:`restore_core.blend.blend_fill`, no training; it beats ``nmf`` and the biharmonic
    fill on the benchmark's every set, docs/restore.md, so bases alone do not make ``nmf`` the
    default); other names are themselves. ``have_bases`` is kept for callers' symmetry."""
    if method != "auto":
        return method
    return "learned" if have_refiner else "sparse"


def _biharmonic_fill(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return harmonic_fill(x, d, order=2)


def _planes_nchw(img: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) -> (C, H, W), contiguous float32."""
    a = img[:, :, None] if img.ndim == 2 else img
    return np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32)


def _from_nchw(planes: np.ndarray, like: np.ndarray) -> np.ndarray:
    return planes[0] if like.ndim == 2 else np.ascontiguousarray(planes.transpose(1, 2, 0))


def batched_fill(
    images: list[np.ndarray],
    dead: list[np.ndarray],
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    device: torch.device,
    pixel_budget: int = PIXEL_BUDGET,
) -> list[np.ndarray | Exception]:
    """Run ``fn(images (B, C, H, W), dead (B, 1, H, W)) -> (B, C, H, W)`` over images grouped by
    shape, in chunks of at most ``pixel_budget`` values; an error in one chunk is retried image
    by image, so one bad image does not fail the others."""
    results: list[np.ndarray | Exception | None] = [None] * len(images)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(img.shape, []).append(i)

    def run(idx: list[int]) -> None:
        x = torch.from_numpy(np.stack([_planes_nchw(images[i]) for i in idx])).to(device)
        d = torch.from_numpy(np.stack([dead[i] for i in idx]))[:, None].to(device)
        out = fn(x, d).cpu().numpy()
        for j, i in enumerate(idx):
            results[i] = _from_nchw(out[j], images[i])

    for shape, idx in groups.items():
        step = max(1, pixel_budget // max(1, int(np.prod(shape))))
        for s in range(0, len(idx), step):
            chunk = idx[s : s + step]
            try:
                run(chunk)
            except Exception:
                for i in chunk:
                    try:
                        run([i])
                    except Exception as exc:
                        results[i] = exc
    return [r if r is not None else RuntimeError("not restored") for r in results]


class Restorer:
    """Restores a batch of rows.

    Parameters
    ----------
    bases : Bases or None
        Needed for methods ``nmf`` and ``reference`` (and ``learned`` when the refiner uses bases).
    sr_apply : callable or None
        Applied to each restored image when ``cfg.sr.enabled`` (float32 (H, W[, C]) in [0, 1]
        in, same layout out, possibly larger when ``sr.scale > 1``).
    cfg : RestoreConfig
    flagged_ids : ids to restore (the others pass through), or None for all
    refiner : torch.nn.Module or None
        A refiner from :func:`restore_core.refiner.build_refiner` with its weights loaded;
        ``fit.method`` ``auto`` (the default) then means ``learned``.
    """

    def __init__(
        self,
        bases: Bases | None,
        sr_apply: SRApply | None,
        cfg: RestoreConfig,
        flagged_ids: Collection[str] | None = None,
        refiner: torch.nn.Module | None = None,
    ) -> None:
        self.cfg = cfg
        self.method = resolve_method(cfg.fit.method, bases is not None, refiner is not None)
        self.device = resolve_device(cfg.device)
        self.bases = bases
        self.refiner: torch.nn.Module | None = None
        if self.method == "learned":
            if refiner is None:
                raise UserError("fit.method learned needs a refiner: set 'refiner' to a train-inpaint artifact folder")
            spec = getattr(refiner, "spec", None)
            if not isinstance(spec, RefinerSpec):
                raise UserError("the refiner is not a model built by restore_core.refiner.build_refiner")
            if spec.use_bases and bases is None:
                raise UserError("this refiner takes the NMF bases as an input: set 'bases' to its learn-bases artifact")
            self.refiner = refiner.to(self.device).eval()
        self.sparse = sparse_specs(cfg.fit.sparse_iters)
        # the write-up's method (and keep_observed false) reconstruct every pixel on purpose
        self.keeps_observed = cfg.fit.keep_observed and self.method != "reference"
        if self.method in ("nmf", "reference"):
            if bases is None:
                raise UserError(f"fit.method {self.method} needs bases: set 'bases' to a learn-bases artifact")
            # Bases may arrive through ray.put rather than load_bases: refuse NaN, negative or
            # mis-shaped ones here, before any row is processed (ArtifactError, one line).
            validate_bases(bases.H, bases.meta, where=f"bases {cfg.bases or '(in memory)'}")
            self.inpainter: NMFInpainter | None = NMFInpainter(bases, cfg.fit, cfg.device)
        else:
            self.inpainter = None
        if cfg.sr.enabled and sr_apply is None:
            raise UserError("sr.enabled is true but no SR model was loaded: set sr.model")
        self.sr_apply = sr_apply if cfg.sr.enabled else None
        # restore.only_flagged: when given, only these ids are restored; the rest pass through
        self.flagged_ids = frozenset(flagged_ids) if flagged_ids is not None else None

    def _refine(self, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        assert self.refiner is not None
        spec: RefinerSpec = self.refiner.spec  # type: ignore[assignment]
        c = x.shape[1]
        if spec.channels == 1 or c == 3:
            return refine(self.refiner, x, d, self.bases, sparse=self.sparse)
        if c == 4:  # RGBA with an RGB refiner: colour by the refiner, alpha by the fill
            rgb = refine(self.refiner, x[:, :3], d, self.bases, sparse=self.sparse)
            return torch.cat([rgb, harmonic_fill(x[:, 3:], d)], dim=1)
        raise UserError(f"the refiner is for RGB images, this image has {c} channel(s): use a gray refiner")

    def _blend(self, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return blend_fill(x, d, self.sparse)

    def _fill(self, images: list[np.ndarray], dead: list[np.ndarray]) -> list[np.ndarray | Exception]:
        """Fill many images; an error in one image does not fail the others."""
        if self.method == "learned":
            return batched_fill(images, dead, self._refine, self.device)
        if self.method == "fill":
            return batched_fill(images, dead, _biharmonic_fill, self.device)
        if self.method == "sparse":
            return batched_fill(images, dead, self._blend, self.device)
        if self.inpainter is None:
            results: list[np.ndarray | Exception] = []
            for img, d in zip(images, dead, strict=True):
                try:
                    results.append(restore_image(img, d, self.method))
                except Exception as exc:
                    results.append(exc)
            return results
        try:
            return list(self.inpainter.restore_batch(images, dead))
        except Exception:
            results = []
            for img, d in zip(images, dead, strict=True):
                try:
                    results.append(self.inpainter.restore_batch([img], [d])[0])
                except Exception as exc:
                    results.append(exc)
            return results

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.flagged_ids is None:
            return self.restore_rows(batch)
        icfg = self.cfg.input
        return restore_only_flagged(
            self.restore_rows, batch, self.flagged_ids, icfg.id_column, icfg.image_column, OUTPUT_COLUMNS
        )

    def restore_rows(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Restore every row of ``batch`` (``__call__`` without the only-flagged filter)."""
        t0 = time.perf_counter()
        icfg = self.cfg.input
        if icfg.id_column not in batch:
            raise UserError(f"input has no '{icfg.id_column}' column (columns: {sorted(batch)}); set input.id_column")
        ids = batch[icfg.id_column]
        n = len(ids)
        images_col = batch.get(icfg.image_column)
        ref_col = batch.get(icfg.reference_column)
        mask_col = batch.get(icfg.mask_column)
        out = rows.new_rows(ids, self.method)

        # row -> (image, info, dead mask, mask source); the fill sees colour channels only
        decoded: dict[int, Decoded] = {}
        for i in range(n):
            try:
                row = self._decode_row(out, i, images_col, mask_col[i] if mask_col is not None else None)
                if row is not None:
                    decoded[i] = row
            except Exception as exc:
                rows.row_error(out, i, exc)

        order = sorted(decoded)
        filled = self._fill([masks.colour_channels(decoded[i][0]) for i in order], [decoded[i][2] for i in order])
        for i, result in zip(order, filled, strict=True):
            try:
                self._finish_row(out, i, decoded[i], result, ref_col[i] if ref_col is not None else None)
            except Exception as exc:
                rows.row_error(out, i, exc)

        seconds = (time.perf_counter() - t0) / max(n, 1)
        out["seconds"] = [seconds] * n
        return rows.to_batch(out, batch, icfg.image_column)

    def _decode_row(
        self, out: dict[str, list[Any]], i: int, images_col: np.ndarray | None, mask_cell: Any
    ) -> Decoded | None:
        """Decode row ``i`` and find its dead pixels; None (an error row) when it cannot be filled."""
        if out["id"][i] is None:
            raise ValueError(f"the row has no id (null in column '{self.cfg.input.id_column}'); give every row an id")
        if images_col is None:
            raise ImageDecodeError(f"no '{self.cfg.input.image_column}' column")
        raw = cell_bytes(images_col[i])
        out["bytes_in"][i] = len(raw) if raw is not None else 0
        img, info = codec.decode(raw, self.cfg.decode.max_pixels)
        out["width"][i], out["height"][i], out["channels"][i] = info.width, info.height, info.channels
        dead, source = rows.dead_mask(img, mask_cell, self.cfg)
        out["mask_source"][i] = source
        out["dead_fraction_in"][i] = metrics.dead_fraction(dead)
        why = rows.too_little_observed(dead, source, self.cfg, self.method)
        if why is not None:
            out["status"][i], out["error"][i], out["image"][i] = "error", why, raw
            return None
        return img, info, dead, source

    def _finish_row(
        self, out: dict[str, list[Any]], i: int, row: Decoded, result: np.ndarray | Exception, ref_cell: Any
    ) -> None:
        """Row ``i`` from its fill: SR, no new dead pixel, metrics, the encoded image."""
        img, info, dead, source = row
        if isinstance(result, Exception):
            raise result
        restored = finish_image(
            result,
            img,
            dead,
            self.method,
            info.bit_depth,
            self.sr_apply,
            mask_given=source == rows.MASK_FROM_COLUMN and self.keeps_observed,
        )
        rows.add_metrics(out, i, img, restored, dead, source, ref_cell, self.cfg, self.method)
        ocfg = self.cfg.output
        out["image"][i] = codec.encode_like(restored, info, ocfg.image_format, ocfg.quality)
        out["bytes_out"][i] = len(out["image"][i])


def finish_image(
    filled: np.ndarray,
    img: np.ndarray,
    dead: np.ndarray,
    method: str,
    bit_depth: int,
    sr_apply: SRApply | None = None,
    mask_given: bool = False,
) -> np.ndarray:
    """From the filled colour channels to the image to write: the input's alpha back as it was,
    the SR model applied, and no new dead pixel (:func:`no_new_dead`).

    ``filled`` is the fill of ``masks.colour_channels(img)``; ``dead`` its dead mask; ``method``
    the fill's name (``none`` fills nothing, so its dead pixels stay). ``mask_given``: ``dead``
    came from the user's mask (and the method keeps observed pixels): without SR, every pixel
    outside it is the input's exactly, and a filled pixel may be 0 (black next to the mask is
    content, not a dead pixel), so nothing is lifted.
    """
    restored = masks.join_alpha(filled, masks.split_alpha(img)[1])
    if sr_apply is not None:
        restored = sr_apply(restored)
    colour, alpha = masks.split_alpha(restored)
    kept = masks.colour_channels(img)
    if mask_given and sr_apply is None and colour.shape == kept.shape:
        colour = np.where(np.broadcast_to(dead if kept.ndim == 2 else dead[..., None], kept.shape), colour, kept)
    else:
        colour = no_new_dead(colour, kept, dead if method != "none" else None, bit_depth)
    return masks.join_alpha(colour, alpha)


def no_new_dead(restored: np.ndarray, img: np.ndarray, dead: np.ndarray | None, bit_depth: int) -> np.ndarray:
    """Lift to one output step the pixels that would be written back as dead (every channel
    quantised to 0) though they were filled, or were not zero in the input: a fill or the SR
    net can reach 0 in dark areas, and the file would then hold new "dead" pixels that the next
    run (or a quality check) counts. Zero regions that were kept (not in ``dead``) stay zero, and
    so do dead pixels when nothing filled them (``dead=None``, method ``none``). Images enlarged
    by SR (other shape) are left as they are."""
    if restored.shape[:2] != img.shape[:2]:
        return restored
    step = 1.0 / (2**bit_depth - 1)
    if dead is not None and dead.all():
        dead = None  # nothing observed, nothing filled: the image comes back as it was

    def zero(a: np.ndarray) -> np.ndarray:
        z = a < 0.5 * step
        return z.all(axis=2) if a.ndim == 3 else z

    was_zero = zero(img)
    lift = zero(restored) & (~was_zero if dead is None else (dead | ~was_zero))
    if not lift.any():
        return restored
    out = restored.copy()
    out[lift] = np.maximum(out[lift], step)
    return out
