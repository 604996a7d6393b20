"""The per-batch quality step, flag rules, duplicate groups, and restoring only flagged rows.

``QualityScorer`` is what the quality job maps over the dataset (``map_batches`` with an actor
pool) and what tests and benchmarks call in-process: a batch of rows in (``dict[str,
np.ndarray]``, Ray Data's numpy format), one row of no-reference metrics out for every row in.
A row that cannot be decoded gets ``status = "error"``, ``decode_error = 1`` and a message; the
others go on. Nothing here imports ray.
"""

from __future__ import annotations

import io
import itertools
import posixpath
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from restore_core import codec, masks, metrics
from restore_core.codec import cell_bytes as _cell_bytes  # the restore step's cell rules
from restore_core.config import FlagRule, QualityConfig
from restore_core.errors import ConfigError, ImageDecodeError, UserError
from restore_core.io import datasets

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


def thumbnail_png(img: np.ndarray, size: int) -> bytes:
    """An 8-bit PNG of ``img`` (float32 [0, 1], (H, W[, C])) whose longest side is at most ``size``."""
    a = np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    if a.ndim == 3 and a.shape[2] == 2:  # LA: Pillow writes LA PNGs, but keep the grey only
        a = a[:, :, 0]
    pil = Image.fromarray(a)
    pil.thumbnail((size, size), Image.Resampling.BOX)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


class QualityScorer:
    """Scores a batch of rows with no-reference metrics (and PSNR/SSIM given a reference).

    Parameters
    ----------
    cfg : QualityConfig
        Dead-pixel rule (``masks``), exposure levels, flag rules (only those whose metric is
        per-image are evaluated here; duplicate flags need the whole run), thumbnail size.

    Output columns: :data:`OUTPUT_COLUMNS` plus the input's other columns except the image,
    reference and mask bytes. ``flags`` holds the per-image flags, comma-separated; ``thumbnail``
    a small PNG for flagged rows only (None otherwise), so the report can show the worst images
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
                out["thumbnail"][i] = thumbnail_png(decoded[i], size)
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


# ----------------------------------------------------------------------------- duplicates


def near_duplicate_groups(hashes: Sequence[int] | np.ndarray, max_distance: int) -> np.ndarray:
    """Group labels (int64, (n,)) joining hashes within ``max_distance`` bits of one another.

    Transitive (single-link) groups; label = the smallest index in the group. Scales past
    pairwise comparison by the pigeonhole rule: two 64-bit hashes within ``d`` bits agree exactly
    on at least one of ``d + 1`` disjoint bit bands, so only hashes sharing a band value are
    compared. Equal hashes are merged first, so a run of identical (e.g. flat) images costs one
    comparison, not n². Vectorised: the pairs inside the buckets are compared a distance in the
    sorted order at a time, and the links joined by ``scipy.sparse.csgraph.connected_components``.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    h = np.asarray(hashes, dtype=np.uint64)
    n = h.size
    if n == 0:
        return np.arange(0, dtype=np.int64)
    uniq, inverse = np.unique(h, return_inverse=True)
    inverse = inverse.ravel()
    src, dst = [np.arange(0, dtype=np.int64)], [np.arange(0, dtype=np.int64)]
    if max_distance > 0 and uniq.size > 1:
        bands = min(max_distance + 1, 64)
        edges = np.linspace(0, 64, bands + 1).astype(int)
        for lo, hi in itertools.pairwise(edges.tolist()):
            key = (uniq >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
            order = np.argsort(key, kind="stable")
            sk = key[order]
            del key
            cand = np.flatnonzero(sk[1:] == sk[:-1])  # not the last of its bucket: the few in shared buckets
            if cand.size == 0:
                continue
            left = np.searchsorted(sk, sk[cand], side="right") - cand - 1  # members after it in its bucket
            del sk
            for step in range(1, int(left.max()) + 1):
                a = cand[left >= step]
                close = np.bitwise_count(uniq[order[a]] ^ uniq[order[a + step]]) <= max_distance
                src.append(order[a[close]])
                dst.append(order[a[close] + step])
    s, d = np.concatenate(src), np.concatenate(dst)
    graph = coo_matrix((np.ones(s.size, dtype=np.int8), (s, d)), shape=(uniq.size, uniq.size))
    _, comp = connected_components(graph, directed=False)
    comp = comp[inverse]  # each hash's component, per input position
    smallest = np.full(int(comp.max()) + 1, n, dtype=np.int64)
    np.minimum.at(smallest, comp, np.arange(n, dtype=np.int64))
    return smallest[comp]


def duplicate_columns(
    sha256: Sequence[str | None], dhash_hex: Sequence[str | None], max_distance: int, min_bits: int = 0
) -> dict[str, np.ndarray]:
    """Duplicate columns over a whole run.

    Near duplicates are looked for among informative hashes only (``min_bits`` ones and zeros at
    least, :func:`restore_core.metrics.hash_is_informative`): flat images, smooth skies and small
    objects on plain backgrounds all hash alike without being copies of one another. Exact
    duplicates (the same pixels) are found among every row.

    Returns ``exact_duplicates`` (float64: how many *other* rows have the same pixels),
    ``near_duplicates`` (float64: how many other rows are perceptually close, exact copies of
    this row not counted) and ``duplicate_group`` (int64: the near-duplicate group label, -1 for
    rows in no group or without a hash).
    """
    n = len(sha256)
    valid = np.array([s is not None and d is not None for s, d in zip(sha256, dhash_hex, strict=True)], dtype=bool)
    exact = np.zeros(n, dtype=np.float64)
    near = np.zeros(n, dtype=np.float64)
    group = np.full(n, -1, dtype=np.int64)
    idx = np.flatnonzero(valid)
    if idx.size == 0:
        return {"exact_duplicates": exact, "near_duplicates": near, "duplicate_group": group}
    shas = np.array([str(sha256[int(i)]) for i in idx])
    _, sha_inv, sha_counts = np.unique(shas, return_inverse=True, return_counts=True)
    exact[idx] = sha_counts[sha_inv] - 1
    values = [int(str(dhash_hex[int(i)]), 16) for i in idx]
    informative = np.array([metrics.hash_is_informative(v, min_bits) for v in values], dtype=bool)
    # An uninformative hash is grouped with its exact copies only: its own pixel hash stands in.
    keys = [v if ok else f"sha:{shas[j]}" for j, (v, ok) in enumerate(zip(values, informative, strict=True))]
    hashes = np.array([v if ok else 0 for v, ok in zip(values, informative, strict=True)], dtype=np.uint64)
    labels = np.arange(idx.size, dtype=np.int64)
    near_idx = np.flatnonzero(informative)
    if near_idx.size:
        labels[near_idx] = near_idx[near_duplicate_groups(hashes[near_idx], max_distance)]
    first_by_key: dict[Any, int] = {}
    for j in np.flatnonzero(~informative):
        labels[j] = first_by_key.setdefault(keys[j], int(j))
    _, lab_inv, lab_counts = np.unique(labels, return_inverse=True, return_counts=True)
    near[idx] = lab_counts[lab_inv] - 1 - exact[idx]
    in_group = lab_counts[lab_inv] > 1
    group[idx[in_group]] = idx[labels[in_group]]
    return {"exact_duplicates": exact, "near_duplicates": near, "duplicate_group": group}


def robust_deviation(values: np.ndarray, floor: float) -> np.ndarray:
    """|x - median| / max(1.4826 * MAD, floor) of finite ``values`` (NaN stays NaN).

    A robust z-score: the median and the median absolute deviation ignore the outliers they are
    meant to find. ``floor`` keeps a dataset whose values are all alike (every image 128x128)
    from calling the smallest difference odd.
    """
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    out = np.full(v.shape, np.nan)
    if not ok.any():
        return out
    med = float(np.median(v[ok]))
    mad = float(np.median(np.abs(v[ok] - med)))
    out[ok] = np.abs(v[ok] - med) / max(1.4826 * mad, floor)
    return out


def shape_columns(width: np.ndarray, height: np.ndarray, floor: float) -> dict[str, np.ndarray]:
    """Odd size and odd aspect ratio of each image against the run's own distribution.

    In log units, an image's width and height deviate from the run's typical ones by ``dw`` and
    ``dh``. Its aspect-ratio deviation is ``dw - dh`` (a 128x48 crop among squares); its size
    deviation is the part both sides share (both smaller, or both larger: a 32x32 thumbnail), so
    a change of shape alone is not also called a change of size. Both are robust z-scores
    (:func:`robust_deviation`, ``floor`` in log units). Returns ``size_deviation`` and
    ``aspect_deviation``, float64 (n,), NaN for unreadable rows.
    """
    w = np.asarray(width, dtype=np.float64)
    h = np.asarray(height, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        lw = np.where(w > 0, np.log(w), np.nan)
        lh = np.where(h > 0, np.log(h), np.nan)
    ok = np.isfinite(lw) & np.isfinite(lh)
    dw = lw - (np.median(lw[ok]) if ok.any() else np.nan)
    dh = lh - (np.median(lh[ok]) if ok.any() else np.nan)
    common = np.where(np.sign(dw) == np.sign(dh), np.sign(dw) * np.minimum(np.abs(dw), np.abs(dh)), 0.0)
    common[~ok] = np.nan
    return {"size_deviation": robust_deviation(common, floor), "aspect_deviation": robust_deviation(lw - lh, floor)}


def blur_stats(blur_width: np.ndarray, floor: float) -> tuple[float, float]:
    """The run's typical blur and its spread: median and ``max(1.4826 * MAD, floor)`` of
    ``log(blur_width)`` over the images that have one (NaN median when none does)."""
    v = np.asarray(blur_width, dtype=np.float64)
    v = np.log(v[np.isfinite(v) & (v > 0)])
    if v.size == 0:
        return float("nan"), max(floor, 1e-12)
    med = float(np.median(v))
    return med, max(1.4826 * float(np.median(np.abs(v - med))), floor, 1e-12)


def blur_deviation(blur_width: np.ndarray, center: float, scale: float) -> np.ndarray:
    """Signed robust z-score ``(log(blur_width) - center) / scale`` (:func:`blur_stats`); NaN
    where ``blur_width`` is NaN or not positive. Positive: blurrier than the run's typical image."""
    v = np.asarray(blur_width, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        lv = np.where(v > 0, np.log(np.where(v > 0, v, 1.0)), np.nan)
    return (lv - center) / scale


def blur_columns(blur_width: np.ndarray, floor: float) -> dict[str, np.ndarray]:
    """Blur of each image against the run's own: ``blur_deviation``, float64 (n,).

    A photo set that is soft by nature (fundus photos, a shallow depth of field, scans) has wide
    edges throughout; an image is blurred *for this dataset* when its edges are much wider than
    the run's typical ones. The built-in ``blurry`` rule needs both this and the absolute
    ``blur_width`` condition. Like the odd size, it assumes most images of a run are fine.
    """
    center, scale = blur_stats(blur_width, floor)
    return {"blur_deviation": blur_deviation(blur_width, center, scale)}


# ----------------------------------------------------------------------------- only flagged


def read_flagged_ids(
    run_folder: str, flags: Collection[str] = ("dead_pixels",), storage_options: dict[str, Any] | None = None
) -> frozenset[str]:
    """Ids of the images a quality run flagged with any of ``flags`` (for ``restore.only_flagged``).

    ``run_folder`` is one run, ``<quality output>/run=<date>``; its ``flags.parquet`` (written
    by the quality job, duplicate flags included) is read. A UserError when it is missing.
    """
    fs, root = datasets.filesystem(run_folder, storage_options)
    path = posixpath.join(root, "flags.parquet")
    if not fs.exists(path):
        raise UserError(
            f"{run_folder} holds no finished quality run (no flags.parquet); set restore.only_flagged to a "
            "<quality output>/run=<date> folder"
        )
    with fs.open(path, "rb") as f:
        table = pq.read_table(f, columns=["id", "flags"])
    wanted = set(flags)
    ids = table.column("id").to_pylist()
    tags = table.column("flags").to_pylist()
    return frozenset(str(i) for i, t in zip(ids, tags, strict=True) if t and wanted & set(t.split(",")))


def restore_only_flagged(
    restore: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    batch: dict[str, np.ndarray],
    flagged_ids: Collection[str],
    id_column: str,
    image_column: str,
    output_columns: Sequence[str],
) -> dict[str, np.ndarray]:
    """Run ``restore`` on the flagged rows of ``batch``; pass the other rows through untouched.

    Passed-through rows keep their image bytes as they came (no decode, no re-encode), get
    ``status = "ok"``, ``method = "skipped"``, NaN metrics, 0 sizes and their own byte counts in
    ``bytes_in``/``bytes_out``. Row order is kept.
    ``output_columns`` are the restore step's own columns (pipeline.OUTPUT_COLUMNS).
    """
    ids = batch[id_column]
    n = len(ids)
    hit = np.array([str(i) in flagged_ids for i in ids], dtype=bool)
    if hit.all():
        return restore(batch)
    restored = restore({k: np.asarray(v)[hit] for k, v in batch.items()}) if hit.any() else {}
    images = batch.get(image_column)
    out: dict[str, np.ndarray] = {}
    for name in dict.fromkeys([*output_columns, *restored, *(k for k in batch if k != image_column)]):
        # the passed-through value first, by name, so every batch has the same column types
        col: np.ndarray
        if name == "id":
            col = _objects([str(i) for i in ids])
        elif name == "image":
            col = _objects([_cell_bytes(images[i]) if images is not None else None for i in range(n)])
        elif name == "status":
            col = _objects(["ok"] * n)
        elif name == "method":
            col = _objects(["skipped"] * n)
        elif name in batch and name != image_column:
            col = np.asarray(batch[name]).copy()  # an input column the restore step passes through
        elif name in ("width", "height", "channels"):
            col = np.zeros(n, dtype=np.int64)
        elif name in ("bytes_in", "bytes_out"):  # passed through: the same bytes in and out
            cells = [_cell_bytes(images[i]) if images is not None else None for i in range(n)]
            col = np.asarray([len(c) if c else 0 for c in cells], dtype=np.int64)
        elif name.startswith(("psnr", "ssim", "dead_fraction")) or name == "seconds":
            col = np.full(n, np.nan, dtype=np.float64)
        else:
            col = _objects([None] * n)
        if name in restored:
            part = np.asarray(restored[name])
            if col.dtype != object and part.dtype == object:
                col = col.astype(object)
            col[hit] = part
        out[name] = col
    return out


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
