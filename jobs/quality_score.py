"""Where a quality run's rows are scored: in the driver process when they are few, else by Ray
Data's actor pool.

Up to ``local_score_max_rows`` rows to score (an incremental run's new and changed files, or a
small input) are scored in this process with the same scoring class the actors run, batch by
batch, into ``<staging>/data/scored-00000.parquet``: no Ray is started for them, which on a
small increment is most of a run's time (30-45 s on a busy 2-core machine). More rows go through
``read_dataset(...).map_batches(ScoreActor, ...)`` with an actor pool and progress lines.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import posixpath
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data

from jobs import logs, quality_incremental, quality_read
from jobs.config_quality import QualityJobConfig
from jobs.ray_utils import (
    actor_pool_args,
    init_ray,
    input_rows,
    is_process_local,
    pool_size,
    read_dataset,
    remote_progress,
)
from restore_core.errors import UserError
from restore_core.io import datasets

log = logging.getLogger("jobs.quality")


@dataclasses.dataclass
class Scored:
    """How the rows were scored: seconds, where (``driver``/``ray``/``none``) and actors used."""

    seconds: float
    where: str
    actors: int = 0


def score(
    cfg: QualityJobConfig, inc: quality_incremental.Plan, fs: Any, out_fs: Any, staging: str, actor: Any
) -> Scored:
    """Score the rows ``inc`` leaves to score into ``<staging>/data`` (``fs``: fsspec, ``out_fs``:
    pyarrow, both the output's); ``actor`` is the job's scoring class (``actor(cfg)`` maps a
    numpy batch to an Arrow table)."""
    t0 = time.perf_counter()
    folder = posixpath.join(staging, "data")
    paths = inc.to_score if inc.to_score is not None else _all_files_if_local(cfg)
    n_rows = rows_in(cfg, paths, cfg.local_score_max_rows) if paths is not None else None
    if paths is not None and n_rows is not None:
        if n_rows:
            log.info("quality: scoring %d rows in the driver process (local_score_max_rows=%d)", n_rows,
                     cfg.local_score_max_rows)  # fmt: skip
            score_in_driver(cfg, paths, fs, folder, actor, n_rows)
        return Scored(time.perf_counter() - t0, "driver" if n_rows else "none")
    init_ray(cfg.ray)
    pool = actor_pool_args(cfg.ray)
    read_files = reads_in_actors(cfg)
    if read_files:  # an image folder: the actors read the files (jobs/quality_read.py)
        blocks = quality_read.path_blocks(cfg.input, inc.to_score, cfg.ray.batch_size)
        total: int | None = sum(b.num_rows for b in blocks)
        # from_blocks keeps the blocks as made (from_arrow also runs a metadata task for each).
        ds = ray.data.from_blocks(blocks)
    else:
        total = rows_in(cfg, inc.to_score) if inc.to_score is not None else input_rows(cfg.input)
        ds = read_dataset(cfg.input, inc.to_score)
    # Logs (stderr not a terminal) get a progress line at most every IMRESTORE_PROGRESS_SECONDS.
    with remote_progress(total, "scoring") as counter:
        scored = ds.map_batches(
            actor,
            fn_constructor_kwargs={"cfg": cfg, "progress": counter, "read_files": read_files},
            batch_size=cfg.ray.batch_size,
            batch_format="numpy",
            **pool,
        )
        scored.write_parquet(folder, filesystem=out_fs)
    return Scored(time.perf_counter() - t0, "ray", pool_size(pool))


def reads_in_actors(cfg: QualityJobConfig) -> bool:
    """Whether the scoring actors read the input's files themselves: an image folder that
    Ray's workers can reach (a ``memory://`` one is read in the driver and handed over)."""
    return cfg.input.format == "images" and not is_process_local(cfg.input.path)


def _all_files_if_local(cfg: QualityJobConfig) -> list[str] | None:
    """Every input file when the whole input may be scored in this process: not a ``memory://``
    input (the actor pool gets those), no ``input.limit``, no cells that point at other files."""
    icfg = cfg.input
    if cfg.local_score_max_rows <= 0 or is_process_local(icfg.path) or icfg.limit:
        return None
    files = datasets.list_files(icfg.path, icfg.format, icfg.storage_options)
    if icfg.format == "parquet" and quality_incremental.points_at_files(cfg, files):
        return None
    return list(files)


def rows_in(cfg: QualityJobConfig, paths: list[str], at_most: int | None = None) -> int | None:
    """How many rows ``paths`` hold (Parquet: from the footers, 16 at a time); None as soon as
    the count passes ``at_most`` (the footers of a large input are not all read to learn that)."""
    icfg = cfg.input
    if icfg.format == "images":
        return len(paths) if at_most is None or len(paths) <= at_most else None
    fs, _ = datasets.filesystem(icfg.path, icfg.storage_options)

    def one(path: str) -> int:
        with fs.open(path, "rb") as f:
            return int(pq.ParquetFile(f).metadata.num_rows)

    total = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        for start in range(0, len(paths), 16):
            total += sum(pool.map(one, paths[start : start + 16]))
            if at_most is not None and total > at_most:
                return None
    return total


def _batches(cfg: QualityJobConfig, paths: list[str]) -> Iterator[dict[str, np.ndarray]]:
    """The rows of ``paths`` as numpy batches, as Ray Data hands them to the scoring actor."""
    icfg = cfg.input
    step = cfg.ray.batch_size
    if icfg.format == "images":  # paths only: the scorer reads them (quality_read.FileReader)
        yield from quality_read.path_batches(icfg, paths, step)
        return
    fs, _ = datasets.filesystem(icfg.path, icfg.storage_options)
    schema = datasets.parquet_input_schema(icfg.path, icfg.storage_options, icfg.id_column, icfg.image_column, paths)
    for path in paths:
        with fs.open(path, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=step):
                table = datasets.conform(pa.Table.from_batches([batch]), schema, where=path)
                yield {name: _column(table.column(name)) for name in table.column_names}


def _objects(values: list[Any]) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def _column(col: pa.ChunkedArray) -> np.ndarray:
    t = col.type
    if (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)) and col.null_count == 0:
        return np.asarray(col.to_numpy())
    return _objects(col.to_pylist())


def score_in_driver(
    cfg: QualityJobConfig, paths: list[str], out_fs: Any, folder: str, make_scorer: Any, n_rows: int
) -> int:
    """Score ``paths`` in this process into ``<folder>/scored-<k>.parquet``, batch by batch; the
    row count. ``n_rows``: the rows ``paths`` hold (for the progress lines). ``make_scorer(cfg)``
    is the job's scoring actor class (``read_files``: it reads an image folder's files itself):
    the rows come out as the actor pool would write them. A
    batch whose columns cannot take the open file's types (an extra column all null in one file,
    text in the next) starts a new file, as the actor pool writes one file a block."""
    scorer = make_scorer(cfg, read_files=cfg.input.format == "images")
    rows = 0
    writer = None
    sink: Any = None
    files = 0
    bar = logs.progress_bar(n_rows, "scoring")  # log lines when stderr is not a terminal
    try:
        for batch in _batches(cfg, paths):
            table = scorer(batch)
            bar.update(table.num_rows)
            if writer is not None and table.schema != writer.schema:
                try:
                    table = datasets.conform(table, writer.schema.remove_metadata(), where="scored rows")
                except UserError:
                    writer.close()
                    sink.close()
                    writer = None
            if writer is None:
                out_fs.makedirs(folder, exist_ok=True)
                sink = out_fs.open(posixpath.join(folder, f"scored-{files:05d}.parquet"), "wb")
                writer = pq.ParquetWriter(sink, table.schema)
                files += 1
            writer.write_table(table)
            rows += table.num_rows
    finally:
        bar.close()
        if writer is not None:
            writer.close()
            sink.close()
    return rows
