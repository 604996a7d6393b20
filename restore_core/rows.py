"""A restore batch's output rows: their columns, a row's dead mask and why it may not be filled,
its metrics, error rows, and the columns handed back as a batch.

The rows are built as ``{column: list}`` (:func:`new_rows`) and turned into the
``dict[str, np.ndarray]`` Ray Data's numpy batch format wants (:func:`to_batch`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from restore_core import codec, masks, metrics
from restore_core.codec import cell_bytes
from restore_core.config import RestoreConfig
from restore_core.errors import ImageDecodeError

#: Metric columns written for every row (NaN where not applicable).
METRIC_COLUMNS = (
    "dead_fraction_in",
    "dead_fraction_out",
    "psnr_in",
    "psnr_out",
    "psnr_dead_out",
    "ssim_in",
    "ssim_out",
)
OUTPUT_COLUMNS = (
    "id",
    "image",
    "status",
    "error",
    "method",
    "mask_source",
    "width",
    "height",
    "channels",
    *METRIC_COLUMNS,
    "bytes_in",  # encoded size of the input image (0 when unreadable)
    "bytes_out",  # encoded size of the restored image, in output.image_format (0 on error)
    "seconds",
)
#: ``mask_source`` values: the row's mask cell, or the ``masks.rule`` detection.
MASK_FROM_COLUMN = "column"
MASK_DETECTED = "detected"


def new_rows(ids: np.ndarray, method: str) -> dict[str, list[Any]]:
    """The output columns of ``len(ids)`` rows before any is restored: ``ok``, metrics NaN, sizes 0."""
    n = len(ids)
    out: dict[str, list[Any]] = {c: [None] * n for c in OUTPUT_COLUMNS}
    # A null id stays null (str() would make it the id "None"); the row is an error row.
    out["id"] = [None if i is None else str(i) for i in ids]
    for c in METRIC_COLUMNS:
        out[c] = [float("nan")] * n
    for c in ("width", "height", "channels", "bytes_in", "bytes_out"):
        out[c] = [0] * n
    out["method"] = [method] * n
    out["status"] = ["ok"] * n
    return out


def row_error(out: dict[str, list[Any]], i: int, exc: BaseException) -> None:
    """Make row ``i`` an error row: the exception's type and message, no image."""
    out["status"][i] = "error"
    out["error"][i] = f"{type(exc).__name__}: {exc}"[:500]
    out["image"][i] = None
    out["bytes_out"][i] = 0


def to_batch(out: dict[str, list[Any]], batch: dict[str, np.ndarray], image_column: str) -> dict[str, np.ndarray]:
    """The rows as numpy columns, with the input's other columns passed through (not its images)."""
    result_batch = {k: _column(v) for k, v in out.items()}
    for name, col in batch.items():
        if name not in result_batch and name != image_column:
            result_batch[name] = col
    return result_batch


def dead_mask(img: np.ndarray, mask_cell: Any, cfg: RestoreConfig) -> tuple[np.ndarray, str]:
    """The (H, W) dead mask and where it came from: the mask cell when it holds bytes, else
    detection (a null or empty cell falls back to detection; ``mask_source`` says which)."""
    raw = cell_bytes(mask_cell) if mask_cell is not None else None
    if raw:
        try:
            m, _ = codec.decode(raw, cfg.decode.max_pixels)
            return masks.mask_from_png(m, img.shape[:2]), MASK_FROM_COLUMN
        except ImageDecodeError as exc:
            raise ImageDecodeError(f"mask column '{cfg.input.mask_column}': {exc}") from None
    mc = cfg.masks
    return masks.detect(img, mc.rule, mc.saturated_level, mc.ignore_zero_regions_larger_than), MASK_DETECTED


def too_little_observed(dead: np.ndarray, source: str, cfg: RestoreConfig, method: str) -> str | None:
    """Why a row cannot be filled (nothing, or too little, observed), or None."""
    if method == "none":
        return None
    observed = 1.0 - metrics.dead_fraction(dead)
    where = (
        f"the mask column '{cfg.input.mask_column}'" if source == MASK_FROM_COLUMN else f"masks.rule {cfg.masks.rule!r}"
    )
    if observed <= 0.0:
        return (
            f"nothing observed: every pixel is dead by {where}, so there is nothing to fill from; "
            "the input is passed through"
        )
    floor = cfg.fit.min_observed_fraction
    if observed < floor:
        return (
            f"only {observed:.2%} of pixels observed (dead by {where}), under fit.min_observed_fraction="
            f"{floor:g}; the input is passed through"
        )
    return None


def add_metrics(
    out: dict[str, list[Any]],
    i: int,
    img: np.ndarray,
    restored: np.ndarray,
    dead: np.ndarray,
    source: str,
    ref_cell: Any,
    cfg: RestoreConfig,
    method: str,
) -> None:
    """Row ``i``'s ``dead_fraction_out`` and, with a usable reference, its PSNR and SSIM."""
    if restored.shape[:2] == img.shape[:2]:
        mc = cfg.masks
        after = masks.detect(restored, mc.rule, mc.saturated_level, mc.ignore_zero_regions_larger_than)
        if source == MASK_FROM_COLUMN:
            # the user's mask says which pixels were dead: count those still dead, nothing else
            # (a black pixel the mask calls good is content, not a dead pixel)
            after = dead if method == "none" else dead & after
        out["dead_fraction_out"][i] = metrics.dead_fraction(after)
    try:
        ref_bytes = cell_bytes(ref_cell) if ref_cell is not None else None
        ref = codec.decode(ref_bytes, cfg.decode.max_pixels)[0] if ref_bytes else None
    except Exception as exc:
        # The restored image is good without its reference: keep it, leave the metrics null.
        out["error"][i] = f"reference not used ({type(exc).__name__}: {exc}); psnr/ssim left empty"[:500]
        return
    if ref is not None:
        if ref.shape != img.shape:
            out["error"][i] = (
                f"reference not used: it is {_shape(ref)}, the image is {_shape(img)}; psnr/ssim left empty"
            )
        if ref.shape == img.shape:
            out["psnr_in"][i] = metrics.psnr(ref, img)
            out["ssim_in"][i] = metrics.ssim(ref, img)
        if ref.shape == restored.shape:
            out["psnr_out"][i] = metrics.psnr(ref, restored)
            out["ssim_out"][i] = metrics.ssim(ref, restored)
            if restored.shape[:2] == dead.shape:
                out["psnr_dead_out"][i] = metrics.psnr(ref, restored, dead)


def _shape(a: np.ndarray) -> str:
    return f"{a.shape[1]}x{a.shape[0]}" + (f"x{a.shape[2]}" if a.ndim == 3 else "")


def _column(values: list[Any]) -> np.ndarray:
    if values and all(isinstance(v, float) for v in values):
        return np.asarray(values, dtype=np.float64)
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.int64)
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr
