"""A quality run's run-wide numbers, computed on the cluster: the driver only gets small summaries.

``aggregate_run`` reads every Parquet file under ``<staging>/data`` (scored now, or staged from an
earlier run: any file name) with Ray Data and computes, as Ray Data operations:

- exact duplicates: ``groupby(sha256, dhash).count()``; near duplicates: locality-sensitive
  hashing of the 64-bit dHash (``d + 1`` bit bands, ``groupby(band, band value)``, pairs in a
  bucket confirmed by a pure, swappable function, only spanning edges returned), joined by a
  union-find over the confirmed edges in the driver (their number grows with the duplicates,
  not the images);
- odd size and aspect ratio: ``groupby(width, height).count()`` (distinct sizes), exact robust
  z-scores from it;
- blur against the run: ``groupby(blur bin).count()`` of ``log(blur_width)`` in bins of 0.001,
  its median and MAD from it;
- the run-wide columns joined onto every row by a ``map_batches`` with that small broadcast,
  flags evaluated there, ``id, flags, duplicate columns, sha256, dhash`` written as shards by Ray
  and streamed into ``flags.parquet`` one row group at a time;
- counts, flag counts, min/max/mean and the worst rows per flag (one ``aggregate`` with a custom
  ``AggregateFnV2``), then histograms for quantiles and plots (a second one);
- duplicate groups for the report: ``groupby(duplicate_group).map_groups``, the largest
  ``max_duplicate_groups`` kept by a bounded heap;
- drift's added/removed ids: an anti-join by ``groupby(id)`` over this run's ids and the previous
  run's ``flags.parquet``, counts and the first few ids only.

Thumbnails are read for the worst rows only. See ``restore_core.aggregate`` for the pure parts.
"""

from __future__ import annotations

import functools
import logging
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.data
from ray.data.aggregate import Count, Sum

from jobs.quality_aggregate_stats import GROUP_IDS as GROUP_IDS
from jobs.quality_aggregate_stats import PartialAggregate as PartialAggregate
from jobs.quality_aggregate_stats import (
    _first_pass,
    _floats,
    _metric_columns,
    _partitions,
    _run_partial,
    _second_pass,
    _where,
)
from jobs.quality_aggregate_stats import duplicate_groups as duplicate_groups
from jobs.quality_aggregate_stats import id_changes as id_changes
from restore_core import aggregate as agg
from restore_core.config import QualityConfig
from restore_core.errors import UserError
from restore_core.quality import SUMMARY_METRICS, evaluate_flags
from restore_core.quality_summary import QUANTILES, flag_counts, run_summary

log = logging.getLogger("jobs.quality")

#: Columns of flags.parquet.
FLAG_COLUMNS = ["id", "flags", "exact_duplicates", "near_duplicates", "duplicate_group", "sha256", "dhash"]


@dataclass
class RunAggregate:
    """What the driver keeps of a run: the summary (as ``report.summarize`` returns it), the
    report's histograms and worst rows, and the id changes against the previous run."""

    summary: dict[str, Any]
    histograms: dict[str, tuple[np.ndarray, np.ndarray, bool]] = field(default_factory=dict)
    worst: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    id_diff: dict[str, Any] | None = None


def read_staged(fs: Any, out_fs: Any, data_dir: str) -> ray.data.Dataset:
    """Every Parquet file under ``data_dir`` as one Dataset, thumbnails left out."""
    files = sorted(p for p in fs.find(data_dir) if p.endswith(".parquet"))
    if not files:
        raise UserError(f"the run wrote no shards under {data_dir}: is the input empty?")
    with fs.open(files[0], "rb") as f:
        names = pq.read_schema(f).names
    columns = [c for c in names if c != "thumbnail"]
    return ray.data.read_parquet(data_dir, filesystem=out_fs).select_columns(columns)


# ----------------------------------------------------------------------------- duplicates


def _more_than_one(t: pa.Table) -> Any:
    return pc.greater(t.column("rows"), 1)


def _hash_rows(table: pa.Table, min_bits: int) -> pa.Table:
    """Rows with both hashes: sha256, dhash and whether the dHash is informative."""
    keep = pc.and_(pc.is_valid(table.column("sha256")), pc.is_valid(table.column("dhash")))
    t = table.select(["sha256", "dhash"]).filter(keep)
    flags = [agg.informative(int(h, 16), min_bits) for h in t.column("dhash").to_pylist()]
    return t.append_column("informative", pa.array(flags, pa.bool_()))


def _band_rows(table: pa.Table, max_distance: int) -> pa.Table:
    hashes = np.array([int(h, 16) for h in table.column("dhash").to_pylist()], dtype=np.uint64)
    band, key, value = agg.band_keys(hashes, max_distance)
    return pa.table({"band": band, "key": key, "hash": value})


def _bucket_edges(confirm: agg.Confirm) -> Callable[[pa.Table], pa.Table]:
    def edges(group: pa.Table) -> pa.Table:
        src, dst = agg.bucket_edges(group.column("hash").to_numpy(), confirm)
        return pa.table({"src": pa.array(src, pa.uint64()), "dst": pa.array(dst, pa.uint64())})

    return edges


def duplicate_index(ds: ray.data.Dataset, cfg: QualityConfig, confirm: agg.Confirm | None = None) -> agg.DuplicateIndex:
    """Exact and near-duplicate groups of the run, as the small index the rows are joined with.

    ``confirm`` decides which candidate pairs (hashes sharing a band) are near duplicates; the
    default is the Hamming distance ``<= near_duplicate_distance``.
    """
    parts = _partitions()
    min_bits, d = cfg.near_duplicate_min_bits, cfg.near_duplicate_distance
    confirm = confirm or agg.hamming_confirm(d)
    hashed = ds.select_columns(["sha256", "dhash"]).map_batches(
        functools.partial(_hash_rows, min_bits=min_bits), batch_format="pyarrow"
    )
    by_sha = (
        hashed.groupby(["sha256", "dhash", "informative"], num_partitions=parts)
        .aggregate(Count(alias_name="rows"))
        .materialize()
    )
    sha_groups = [(r["sha256"], r["dhash"], int(r["rows"])) for r in _where(by_sha, _more_than_one).take_all()]
    by_hash = (
        _where(by_sha, lambda t: t.column("informative"))
        .groupby("dhash", num_partitions=parts)
        .aggregate(Sum("rows", alias_name="rows"))
        .materialize()
    )
    hash_counts = {int(r["dhash"], 16): int(r["rows"]) for r in _where(by_hash, _more_than_one).take_all()}
    edges: list[tuple[int, int]] = []
    if d > 0 and by_hash.count() > 1:
        linked = (
            by_hash.map_batches(functools.partial(_band_rows, max_distance=d), batch_format="pyarrow")
            .groupby(["band", "key"], num_partitions=parts)
            .map_groups(_bucket_edges(confirm), batch_format="pyarrow")
        )
        for part in linked.iter_batches(batch_format="pyarrow", batch_size=65536):
            batch = cast(pa.Table, part)
            edges += zip(batch.column("src").to_pylist(), batch.column("dst").to_pylist(), strict=True)
    return agg.duplicate_index(sha_groups, hash_counts, edges, min_bits)


def shape_stats(ds: ray.data.Dataset, floor: float) -> agg.ShapeStats:
    """Medians and spreads of the run's image shapes from its distinct ``(width, height)``."""
    sizes = (
        _where(
            ds.select_columns(["width", "height"]),
            lambda t: pc.and_(pc.greater(t.column("width"), 0), pc.greater(t.column("height"), 0)),
        )
        .groupby(["width", "height"], num_partitions=_partitions())
        .aggregate(Count(alias_name="rows"))
        .take_all()
    )
    w = np.array([r["width"] for r in sizes], dtype=np.float64)
    h = np.array([r["height"] for r in sizes], dtype=np.float64)
    c = np.array([r["rows"] for r in sizes], dtype=np.int64)
    return agg.shape_stats(w, h, c, floor)


def _blur_bin_rows(table: pa.Table) -> pa.Table:
    return pa.table({"blur_bin": pa.array(agg.blur_bins(_floats(table, "blur_width")), pa.int64())})


def blur_stats(ds: ray.data.Dataset, floor: float) -> agg.BlurStats:
    """Median and spread of the run's ``log(blur_width)`` from its ``blur bin -> rows`` counts."""
    bins = (
        ds.select_columns(["blur_width"])
        .map_batches(_blur_bin_rows, batch_format="pyarrow")
        .groupby("blur_bin", num_partitions=_partitions())
        .aggregate(Count(alias_name="rows"))
        .take_all()
    )
    b = np.array([r["blur_bin"] for r in bins], dtype=np.int64)
    c = np.array([r["rows"] for r in bins], dtype=np.int64)
    return agg.blur_stats(b, c, floor)


def _enrich(
    table: pa.Table, index: agg.DuplicateIndex, shape: agg.ShapeStats, blur: agg.BlurStats, cfg: QualityConfig
) -> pa.Table:
    """One batch with the run-wide columns joined on and ``flags`` evaluated over them."""
    cols = index.columns(
        table.column("sha256").to_pylist(), table.column("dhash").to_pylist(), cfg.near_duplicate_min_bits
    )
    cols.update(shape.columns(_floats(table, "width"), _floats(table, "height")))
    cols.update(blur.columns(_floats(table, "blur_width")))
    for name, values in cols.items():
        if name in table.column_names:
            table = table.drop_columns([name])
        table = table.append_column(name, pa.array(values))
    metrics = [c.metric for r in cfg.flags.values() for c in r.all_conditions()]
    raised = evaluate_flags(_metric_columns(table, metrics), cfg.flags)
    tags = [",".join(n for n, hit in raised.items() if hit[i]) for i in range(table.num_rows)]
    return table.set_column(table.column_names.index("flags"), "flags", pa.array(tags, pa.string()))


# ----------------------------------------------------------------------------- the run


def _write_flags(fs: Any, out_fs: Any, enriched: ray.data.Dataset, staging: str) -> None:
    """flags.parquet: Ray writes the shards, the driver streams them into one file a row group at a time."""
    shards = posixpath.join(staging, "_flags")
    enriched.select_columns(FLAG_COLUMNS).write_parquet(shards, filesystem=out_fs)
    files = sorted(p for p in fs.find(shards) if p.endswith(".parquet"))
    target = posixpath.join(staging, "flags.parquet")
    schema = None
    writer = None
    try:
        with fs.open(target, "wb") as out:
            for path in files:
                with fs.open(path, "rb") as f:
                    pf = pq.ParquetFile(f)
                    for g in range(pf.num_row_groups):
                        t = pf.read_row_group(g)
                        if writer is None:
                            schema = t.schema
                            writer = pq.ParquetWriter(out, schema)
                        writer.write_table(t.cast(schema))
            if writer is None:
                writer = pq.ParquetWriter(out, pa.schema([(c, pa.string()) for c in FLAG_COLUMNS]))
            writer.close()
    finally:
        fs.rm(shards, recursive=True)


def _thumbnails(out_fs: Any, data_dir: str, ids: set[str]) -> dict[str, dict[str, Any]]:
    if not ids:
        return {}
    wanted = pa.array(sorted(ids), pa.string())

    def pick(t: pa.Table) -> pa.Table:
        return t.filter(pc.is_in(t.column("id"), value_set=wanted))

    ds = ray.data.read_parquet(data_dir, filesystem=out_fs).select_columns(["id", "thumbnail", "error"])
    rows = ds.map_batches(pick, batch_format="pyarrow").take_all()
    return {r["id"]: r for r in rows}


def kept_thumbnails(out_fs: Any, data_dir: str, ids: list[str]) -> pa.Table:
    """``id, thumbnail`` of those of ``ids`` whose staged rows kept a thumbnail (flagged rows)."""
    rows = _thumbnails(out_fs, data_dir, set(ids))
    kept = [(i, r["thumbnail"]) for i, r in rows.items() if r.get("thumbnail")]
    return pa.table(
        {"id": pa.array([i for i, _ in kept], pa.string()), "thumbnail": pa.array([t for _, t in kept], pa.binary())}
    )


def aggregate_run(
    cfg: QualityConfig,
    fs: Any,
    out_fs: Any,
    staging: str,
    run_date: str,
    previous_flags: str | None = None,
    confirm: agg.Confirm | None = None,
) -> RunAggregate:
    """Everything the run's summary, flags.parquet and report need, computed by Ray over the
    shards under ``<staging>/data``; writes ``<staging>/flags.parquet``."""
    data_dir = posixpath.join(staging, "data")
    ds = read_staged(fs, out_fs, data_dir).materialize()
    index = duplicate_index(ds, cfg, confirm)
    shape = shape_stats(ds, cfg.odd_spread_floor)
    blur = blur_stats(ds, cfg.blur_spread_floor)
    enriched = ds.map_batches(
        _enrich, fn_kwargs={"index": index, "shape": shape, "blur": blur, "cfg": cfg}, batch_format="pyarrow"
    ).materialize()
    _write_flags(fs, out_fs, enriched, staging)

    k = cfg.report.worst_per_flag
    first = _run_partial(enriched, "quality_first_pass", _first_pass(cfg), k)
    ranges = {m: (first.lo[m], first.hi[m]) for m in SUMMARY_METRICS if first.count.get(m, 0) > 0}
    second = _run_partial(enriched, "quality_second_pass", _second_pass(ranges), k)
    quantiles, histograms = _quantiles_and_histograms(first, second, ranges)
    n = first.rows
    groups = duplicate_groups(enriched, cfg.report.max_duplicate_groups)
    summary = run_summary(run_date, n, first.ok, quantiles, flag_counts(cfg.flags, first.flags, n), groups)
    worst = _worst_rows(cfg, first, out_fs, data_dir)
    diff = id_changes(enriched, previous_flags, out_fs)
    log.info("aggregated %d rows on the cluster: %d duplicate groups", n, summary["duplicate_groups"]["count"])
    return RunAggregate(summary=summary, histograms=histograms, worst=worst, id_diff=diff)


def _quantiles_and_histograms(
    first: agg.Partial, second: agg.Partial, ranges: dict[str, tuple[float, float]]
) -> tuple[dict[str, dict[str, float]], dict[str, tuple[np.ndarray, np.ndarray, bool]]]:
    """The summary's quantiles (with mean, min, max, count) and the report's histograms per metric."""
    quantiles: dict[str, dict[str, float]] = {}
    histograms: dict[str, tuple[np.ndarray, np.ndarray, bool]] = {}
    for m, (lo, hi) in ranges.items():
        qv = agg.quantiles_from_histogram(second.fine[m], second.fine_lo[m], second.fine_hi[m], QUANTILES)
        quantiles[m] = {f"p{round(p * 100):02d}": float(x) for p, x in zip(QUANTILES, qv, strict=True)}
        n = first.count[m]
        quantiles[m].update(mean=first.total[m] / n, min=lo, max=hi, count=n)
        edges, log_scale = agg.plot_edges(m, lo, hi)
        histograms[m] = (edges, second.plot[m], log_scale)
    return quantiles, histograms


def _worst_rows(cfg: QualityConfig, first: agg.Partial, out_fs: Any, data_dir: str) -> dict[str, list[dict[str, Any]]]:
    """The worst rows per flag with their thumbnails and errors, read for those rows only."""
    thumbs = _thumbnails(out_fs, data_dir, {i for rows in first.top.values() for _, i, _ in rows})
    worst: dict[str, list[dict[str, Any]]] = {}
    for name in cfg.flags:
        rows = first.top.get(name)
        if rows:
            worst[name] = [
                {
                    "id": i,
                    "value": v,
                    "thumb": thumbs.get(i, {}).get("thumbnail"),
                    "error": thumbs.get(i, {}).get("error"),
                }
                for _, i, v in rows
            ]
    return worst


__all__ = ["FLAG_COLUMNS", "RunAggregate", "aggregate_run", "duplicate_groups", "duplicate_index"]
