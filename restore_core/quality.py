"""The per-batch quality step, its columns and flag rules.

``QualityScorer`` is what the quality job maps over the dataset (``map_batches`` with an actor
pool) and what tests and benchmarks call in-process: a batch of rows in (``dict[str,
np.ndarray]``, Ray Data's numpy format), one row of no-reference metrics out for every row in.
A row that cannot be decoded gets ``status = "error"``, ``decode_error = 1`` and a message; the
others go on. Nothing here imports ray.

The run-wide helpers live in :mod:`restore_core.duplicates` (duplicate columns),
:mod:`restore_core.run_columns` (odd size, aspect ratio and blur against the run) and
:mod:`restore_core.only_flagged` (restoring only flagged rows); they are re-exported here under
their old names.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from restore_core import codec, masks, metrics
from restore_core.codec import cell_bytes as _cell_bytes  # the restore step's cell rules
from restore_core.config import FlagRule, QualityConfig
from restore_core.duplicates import duplicate_columns as duplicate_columns
from restore_core.duplicates import near_duplicate_groups as near_duplicate_groups
from restore_core.errors import ConfigError, ImageDecodeError
from restore_core.only_flagged import restore_only_flagged as restore_only_flagged
from restore_core.run_columns import blur_columns as blur_columns
from restore_core.run_columns import blur_deviation as blur_deviation
from restore_core.run_columns import blur_stats as blur_stats
from restore_core.run_columns import robust_deviation as robust_deviation
from restore_core.run_columns import shape_columns as shape_columns

#: Numeric per-image columns (float64; NaN where not applicable, e.g. after a decode error).
NUMERIC_COLUMNS = (
    "width",
    "height",
    "channels",
    "bytes",
    "dead_fraction",  # isolated dead pixels (or the mask column's), [0, 1], lower is better
    "saturated_fraction",  # [0, 1], lower is better
    "sharpness",  # variance of the Laplacian of the working copy, [0, inf), higher is sharper
    "blur_width",  # pixels of the working copy: Gaussian width of the sharpest edges, higher is blurrier
    "noise_level",  # 8-bit levels: pixel noise (wavelet estimate, native pixels); ~0.1-0.25 after a blur
    "detail_ratio",  # fine detail kept against the reference column, when there is one; < 1 = detail lost
    "brightness",  # mean luminance, [0, 1]
    "luma_p05",  # 5th percentile of the luminance, [0, 1]: high = washed out (light)
    "luma_p99",  # 99th percentile of the luminance, [0, 1]: low = even the highlights are dim (dark)
    "dark_fraction",  # share near black, [0, 1]
    "bright_fraction",  # share near white, [0, 1]
    "contrast",  # RMS contrast, [0, 0.5]
    "relative_contrast",  # RMS contrast / headroom to the nearer of black and white, [0, 5.8]; low = blank
    "entropy",  # bits, [0, 8]
    "content_entropy",  # bits, [0, 8]: entropy with a plain background left out; low = low information
    "color_fraction",  # share of pixels whose channels differ, [0, 1]: 0 = grayscale (stored as RGB too)
    "psnr",  # dB against the reference column, when there is one
    "ssim",  # [-1, 1] against the reference column, when there is one
    "decode_error",  # 1 when the row could not be read, else 0
    "seconds",  # scoring time per row in its batch
)
#: Text per-image columns.
TEXT_COLUMNS = ("id", "status", "error", "mode", "format", "sha256", "dhash", "flags")
#: Columns computed over the whole run (duplicates), added by :func:`duplicate_columns`.
GROUP_COLUMNS = ("exact_duplicates", "near_duplicates", "duplicate_group")
#: Columns computed over the whole run against its own distribution, added by :func:`shape_columns`
#: and :func:`blur_columns`.
RUN_COLUMNS = ("size_deviation", "aspect_deviation", "blur_deviation")
#: Metrics that flag rules may name.
FLAG_METRICS = (*NUMERIC_COLUMNS, "exact_duplicates", "near_duplicates", *RUN_COLUMNS)
#: Metrics shown as histograms and quantiles in summaries.
SUMMARY_METRICS = (
    "dead_fraction",
    "saturated_fraction",
    "blur_width",
    "noise_level",
    "detail_ratio",
    "sharpness",
    "brightness",
    "luma_p05",
    "luma_p99",
    "dark_fraction",
    "bright_fraction",
    "contrast",
    "relative_contrast",
    "entropy",
    "content_entropy",
    "color_fraction",
    "width",
    "height",
    "size_deviation",
    "aspect_deviation",
    "blur_deviation",
    "psnr",
    "ssim",
)
OUTPUT_COLUMNS = (*TEXT_COLUMNS, *NUMERIC_COLUMNS, "thumbnail")

_OPS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    ">": np.greater,
    ">=": np.greater_equal,
    "<": np.less,
    "<=": np.less_equal,
}


def check_flag_metrics(flags: Mapping[str, FlagRule]) -> None:
    """A ConfigError naming the first flag whose metric is not a known column."""
    for name, rule in flags.items():
        for depth, one in enumerate(rule.conditions()):
            for req, cond in enumerate((one, *one.requirements())):
                if cond.metric in FLAG_METRICS:
                    continue
                key = f"flags.{name}.{'also.' * depth}{'require.' * req}metric"
                raise ConfigError(
                    f"config key '{key}' is {cond.metric!r}, not a metric column (one of: {', '.join(FLAG_METRICS)})"
                )


def evaluate_flags(columns: Mapping[str, np.ndarray], flags: Mapping[str, FlagRule]) -> dict[str, np.ndarray]:
    """Boolean (n,) arrays, one for each enabled flag whose metric is among ``columns``.

    NaN metrics (undecodable rows, PSNR without a reference) never raise a flag, nor does a rule
    on an image that carries one of the rule's ``unless`` flags (judged before any ``unless``).
    A ``require`` condition whose metric is not among ``columns`` (a run-wide column, while one
    batch is scored) is left out: the batch's flags are then a superset of the run's.
    """

    def holds(cond: FlagRule) -> np.ndarray:
        values = np.asarray(columns[cond.metric], dtype=np.float64)
        with np.errstate(invalid="ignore"):
            return np.asarray(_OPS[cond.op](values, cond.value) & ~np.isnan(values))

    raw: dict[str, np.ndarray] = {}
    for name, rule in flags.items():
        if not rule.enabled or rule.metric not in columns:
            continue
        hit = None
        for cond in rule.conditions():  # OR of the rule's conditions whose metric is at hand
            if cond.metric not in columns:
                continue
            one = holds(cond)
            for req in cond.requirements():  # each ANDed with its required conditions
                if req.metric in columns:
                    one = one & holds(req)
            hit = one if hit is None else hit | one
        if hit is not None:
            raw[name] = hit
    out = {}
    for name, hit in raw.items():
        for other in flags[name].unless:  # e.g. a blank frame is low_information, not also dark
            if other in raw:
                hit = hit & ~raw[other]
        out[name] = hit
    return out


def thumbnail_jpeg(img: np.ndarray, size: int) -> bytes:
    """A JPEG (quality 90) of ``img`` (float32 [0, 1], (H, W[, C])) whose longest side is at most
    ``size``; gray stays gray, alpha is left out. JPEG, not PNG: a tenth of the encoding time
    (a PNG took a fifth of the scoring time, as most rows of a soft dataset carry a provisional
    flag) and a quarter of the bytes, for a picture a person looks at."""
    a = np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    if a.ndim == 3:
        a = a[:, :, 0] if a.shape[2] < 3 else a[:, :, :3]
    pil = Image.fromarray(a)
    pil.thumbnail((size, size), Image.Resampling.BOX)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def thumbnail_suffix(data: bytes) -> str:
    """The file suffix of a thumbnail's bytes: ``.png`` for the PNGs of runs before JPEG, else ``.jpg``."""
    return ".png" if data[:8] == b"\x89PNG\r\n\x1a\n" else ".jpg"


class QualityScorer:
    """Scores a batch of rows with no-reference metrics (and PSNR/SSIM given a reference).

    Parameters
    ----------
    cfg : QualityConfig
        Dead-pixel rule (``masks``), exposure levels, flag rules (only those whose metric is
        per-image are evaluated here; duplicate flags need the whole run), thumbnail size.

    Output columns: :data:`OUTPUT_COLUMNS` plus the input's other columns except the image,
    reference and mask bytes. ``flags`` holds the per-image flags, comma-separated; ``thumbnail``
    a small JPEG for flagged rows only (None otherwise), so the report can show the worst images
    without reading the dataset again.
    """

    def __init__(self, cfg: QualityConfig) -> None:
        check_flag_metrics(cfg.flags)
        self.cfg = cfg

    def score_image(self, img: np.ndarray, mask_cell: Any = None, ref_cell: Any = None) -> dict[str, float | str]:
        """Metrics of one decoded image (float32 [0, 1], (H, W) or (H, W, C))."""
        cfg = self.cfg
        raw_mask = _cell_bytes(mask_cell) if mask_cell is not None else None
        if raw_mask:  # a given mask wins over detection
            m, _ = codec.decode(raw_mask, cfg.decode.max_pixels)
            dead = masks.mask_from_png(m, img.shape[:2])
            fill = dead
        else:
            mc = cfg.masks
            candidates = masks.detect(img, mc.rule, mc.saturated_level, mc.ignore_zero_regions_larger_than)
            if cfg.dead_rule == "isolated":
                dead = metrics.isolated_dead_pixels(img, candidates, cfg.dead_min_contrast)
            else:
                dead = candidates
            # the working copy also fills candidates in small clumps (two dead pixels side by side)
            fill = dead | masks.drop_large_regions(candidates, 16)
        # Resolution-free scores come from the working copy, dead pixels filled: they are spikes
        # that would make a blurred image look sharp.
        work = metrics.working_copy(img, fill, cfg.working_size)
        p05, p99 = metrics.luminance_quantiles(work, (0.05, 0.99))
        exp = metrics.exposure(work, cfg.dark_level, cfg.bright_level)
        row: dict[str, float | str] = {
            "dead_fraction": metrics.dead_fraction(dead),
            "saturated_fraction": metrics.saturated_fraction(img, cfg.masks.saturated_level),
            "sharpness": metrics.sharpness(work),
            "blur_width": metrics.blur_width(work),
            "noise_level": metrics.noise_level(img, fill),
            "brightness": exp.brightness,
            "luma_p05": p05,
            "luma_p99": p99,
            "dark_fraction": exp.dark_fraction,
            "bright_fraction": exp.bright_fraction,
            "contrast": metrics.contrast(work),
            "relative_contrast": metrics.relative_contrast(work),
            "entropy": metrics.entropy(work),
            "content_entropy": metrics.content_entropy(work),
            "color_fraction": metrics.color_fraction(img),
            "sha256": metrics.pixel_hash(img),
            # 64-bit perceptual hash of the working copy (a DCT pHash; the column keeps its old name)
            "dhash": f"{metrics.phash(work):016x}",
        }
        try:
            ref_bytes = _cell_bytes(ref_cell) if ref_cell is not None else None
            ref = codec.decode(ref_bytes, cfg.decode.max_pixels)[0] if ref_bytes else None
        except Exception as exc:
            # the image's own metrics stand without its reference: note it, leave psnr/ssim empty
            row["error"] = f"reference not used ({type(exc).__name__}: {exc}); psnr/ssim left empty"[:500]
            return row
        if ref is not None and ref.shape != img.shape:
            row["error"] = "reference not used: its size or channels differ from the image's; psnr/ssim left empty"
        elif ref is not None:
            row["psnr"] = metrics.psnr(ref, img)
            row["ssim"] = metrics.ssim(ref, img)
            row["detail_ratio"] = metrics.detail_ratio(img, ref, ignore=fill)
        return row

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        icfg = self.cfg.input
        ids = batch[icfg.id_column]
        n = len(ids)
        images = batch.get(icfg.image_column)
        refs = batch.get(icfg.reference_column)
        mask_col = batch.get(icfg.mask_column)
        out: dict[str, list[Any]] = {c: [None] * n for c in TEXT_COLUMNS}
        for c in NUMERIC_COLUMNS:
            out[c] = [float("nan")] * n
        # A null id stays null (str() would make it the id "None"); the row is an error row.
        out["id"] = [None if i is None else str(i) for i in ids]
        out["status"] = ["ok"] * n
        out["decode_error"] = [0.0] * n
        out["thumbnail"] = [None] * n
        decoded: dict[int, np.ndarray] = {}
        for i in range(n):
            try:
                if out["id"][i] is None:
                    raise ValueError(f"the row has no id (null in column '{icfg.id_column}'); give every row an id")
                if images is None:
                    raise ImageDecodeError(f"no '{icfg.image_column}' column")
                raw = _cell_bytes(images[i])
                out["bytes"][i] = float(len(raw)) if raw is not None else float("nan")
                img, info = codec.decode(raw, self.cfg.decode.max_pixels)
                out["width"][i], out["height"][i], out["channels"][i] = info.width, info.height, info.channels
                out["mode"][i], out["format"][i] = info.mode, info.format
                row = self.score_image(
                    img,
                    mask_col[i] if mask_col is not None else None,
                    refs[i] if refs is not None else None,
                )
                for k, v in row.items():
                    out[k][i] = v
                decoded[i] = img
            except Exception as exc:  # one bad row must not fail the batch
                out["status"][i] = "error"
                out["error"][i] = f"{type(exc).__name__}: {exc}"[:500]
                out["decode_error"][i] = 1.0
                decoded.pop(i, None)
        numeric = {c: np.asarray(out[c], dtype=np.float64) for c in NUMERIC_COLUMNS}
        raised = evaluate_flags(numeric, self.cfg.flags)
        size = self.cfg.report.thumbnail_size
        for i in range(n):
            names = [name for name, hit in raised.items() if hit[i]]
            out["flags"][i] = ",".join(names)
            if names and size > 0 and i in decoded:
                out["thumbnail"][i] = thumbnail_jpeg(decoded[i], size)
        numeric["seconds"][:] = (time.perf_counter() - t0) / max(n, 1)
        result: dict[str, np.ndarray] = {c: _objects(out[c]) for c in (*TEXT_COLUMNS, "thumbnail")}
        result.update(numeric)
        dropped = {icfg.image_column, icfg.reference_column, icfg.mask_column}
        for name, col in batch.items():
            if name not in result and name not in dropped:
                result[name] = col
        return result


def _objects(values: list[Any]) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def table_from_columns(columns: Mapping[str, np.ndarray]) -> pa.Table:
    """A pyarrow table of a scored batch with fixed types for the quality columns.

    Text columns are always ``string``, ``thumbnail`` ``binary`` and metrics ``float64``, even
    in a batch where a column is all null, so every shard of a run has the same schema. Other
    (passed-through) columns keep the type Arrow infers.
    """
    arrays = {}
    for name, col in columns.items():
        if name in TEXT_COLUMNS:
            arrays[name] = pa.array(list(col), type=pa.string())
        elif name == "thumbnail":
            arrays[name] = pa.array(list(col), type=pa.binary())
        elif name in NUMERIC_COLUMNS:
            arrays[name] = pa.array(np.asarray(col, dtype=np.float64))
        elif col.dtype == object:
            arrays[name] = pa.array(list(col))
        else:
            arrays[name] = pa.array(col)
    return pa.table(arrays)
