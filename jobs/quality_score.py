"""Where a quality run's rows are scored: in the driver process when they are few, else by Ray
Data's actor pool.

Up to ``local_score_max_rows`` rows to score (an incremental run's new and changed files, or a
small input) are scored in this process with the same scoring class the actors run, batch by
batch, into ``<staging>/data/scored-00000.parquet``: no Ray is started for them, which on a
small increment is most of a run's time (30-45 s on a busy 2-core machine). More rows go through
``map_batches(ScoreActor, ...)`` with an actor pool: the actors read an image folder's files
themselves (``jobs/quality_read.py``; other inputs come from ``read_dataset``), score them and
write the shards (:class:`ShardWriter`); the driver gets a row count a batch, for progress lines.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import posixpath
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs import logs, quality_incremental, quality_read
from jobs.config_quality import QualityJobConfig
from jobs.ray_utils import (
    actor_pool_args,
    init_ray,
    input_rows,
    is_process_local,
    pool_size,
    read_dataset,
)
from restore_core.errors import UserError
from restore_core.io import datasets
from restore_core.io.locations import Location

log = logging.getLogger("jobs.quality")


class ShardWriter:
    """An actor's writer of scored batches: one Parquet shard a batch in ``folder`` of the output.
    A shard is named after the Ray task that scored it and the batch's place in that task (a
    task may hold several batches), so a retried task (its actor restarted) writes the same
    files again instead of second copies of its rows."""

    def __init__(self, output: Location, folder: str) -> None:
        self.fs, _ = output.filesystem()
        self.folder = folder
        self.fs.makedirs(folder, exist_ok=True)
        self.task, self.batches = "", 0

    def write(self, table: pa.Table) -> pa.Table:
        """Write ``table``; ``{"rows": [its row count]}``."""
        # (outside a Ray worker there is no task: asking would start Ray in this process; a run
        # scored in the driver never imports Ray)
        ray = sys.modules.get("ray")
        task = (ray.get_runtime_context().get_task_id() if ray and ray.is_initialized() else None) or uuid.uuid4().hex
        if task != self.task:
            self.task, self.batches = task, 0
        name = f"part-{task}-{self.batches:05d}.parquet"
        self.batches += 1
        with self.fs.open(posixpath.join(self.folder, name), "wb") as f:
            pq.write_table(table, f)
        return pa.table({"rows": pa.array([table.num_rows], pa.int64())})


@dataclasses.dataclass
class Scored:
    """How the rows were scored: seconds, where (``driver``/``ray``/``none``) and actors used."""

    seconds: float
    where: str
    actors: int = 0


def score(cfg: QualityJobConfig, inc: quality_incremental.Plan, fs: Any, staging: str, actor: Any) -> Scored:
    """Score the rows ``inc`` leaves to score into ``<staging>/data`` (``fs``: the output's
    fsspec filesystem); ``actor`` is the job's scoring class (``actor(cfg)`` maps a numpy batch
    to an Arrow table; ``write_to``: it writes the table there and returns its row count)."""
    t0 = time.perf_counter()
    folder = posixpath.join(staging, "data")
    paths = inc.to_score if inc.to_score is not None else _all_files_if_local(cfg, inc.listed)
    inc.listed = None  # the scoring holds it from here, as long as it needs it
    n_rows = rows_in(cfg, paths, cfg.local_score_max_rows) if paths is not None else None
    if paths is not None and n_rows is not None:
        if n_rows:
            log.info("quality: scoring %d rows in the driver process (local_score_max_rows=%d)", n_rows,
                     cfg.local_score_max_rows)  # fmt: skip
            score_in_driver(cfg, paths, fs, folder, actor, n_rows)
        return Scored(time.perf_counter() - t0, "driver" if n_rows else "none")
    init_ray(cfg.ray)
    pool = actor_pool_args(cfg.ray)
    ds, total = _input_dataset(cfg, paths)  # the listing made above, not a second one
    paths = None  # in the blocks now: not held through the scoring
    scored = ds.map_batches(
        actor,
        fn_constructor_kwargs={"cfg": cfg, "read_files": reads_in_actors(cfg), "write_to": folder},
        batch_size=cfg.ray.batch_size,
        batch_format="numpy",
        **pool,
    )
    # The actors write the shards; what comes back is one small row a batch, for the progress
    # lines (logs, when stderr is not a terminal: at most every IMRESTORE_PROGRESS_SECONDS).
    done = 0
    with logs.progress_bar(total, "scoring") as bar:
        for counts in scored.iter_batches(batch_format="pyarrow", batch_size=None):
            n = int(pc.sum(counts.column("rows")).as_py() or 0)
            done += n
            bar.update(n)
    if total is not None and done != total:
        raise RuntimeError(f"the actor pool scored {done} rows where the input holds {total}")
    return Scored(time.perf_counter() - t0, "ray", pool_size(pool))


def _input_dataset(cfg: QualityJobConfig, files: list[str] | None) -> tuple[Any, int | None]:
    """The rows to score as a Ray Dataset (``files``: these of the input's files only) and how
    many they are (None when that cannot be known cheaply). An image folder gives path-only
    blocks that the actors read (``jobs/quality_read.py``)."""
    import ray.data

    if reads_in_actors(cfg):
        blocks = quality_read.path_blocks(cfg.input, files, cfg.ray.batch_size)
        # from_blocks keeps the blocks as made (from_arrow also runs a metadata task for each).
        return ray.data.from_blocks(blocks), sum(b.num_rows for b in blocks)
    total = rows_in(cfg, files) if files is not None else input_rows(cfg.input)
    return read_dataset(cfg.input, files), total


def reads_in_actors(cfg: QualityJobConfig) -> bool:
    """Whether the scoring actors read the input's files themselves: an image folder that
    Ray's workers can reach (a ``memory://`` one is read in the driver and handed over)."""
    return cfg.input.format == "images" and not is_process_local(cfg.input.path)


def _all_files_if_local(cfg: QualityJobConfig, listed: list[str] | None = None) -> list[str] | None:
    """Every input file (``listed``: the listing the run made already) when the whole input may
    be scored in this process: not a ``memory://`` input (the actor pool gets those), no
    ``input.limit``, no cells that point at other files."""
    icfg = cfg.input
    if cfg.local_score_max_rows <= 0 or is_process_local(icfg.path) or icfg.limit:
        return None
    files = listed if listed is not None else datasets.list_files(icfg.location, icfg.format)
    if icfg.format == "parquet" and quality_incremental.points_at_files(cfg, files):
        return None
    return list(files)


def rows_in(cfg: QualityJobConfig, paths: list[str], at_most: int | None = None) -> int | None:
    """How many rows ``paths`` hold (Parquet: from the footers, 16 at a time); None as soon as
    the count passes ``at_most`` (the footers of a large input are not all read to learn that)."""
    icfg = cfg.input
    if icfg.format == "images":
        return len(paths) if at_most is None or len(paths) <= at_most else None
    fs, _ = icfg.location.filesystem()

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
    fs, _ = icfg.location.filesystem()
    schema = datasets.parquet_input_schema(icfg.location, icfg.id_column, icfg.image_column, paths)
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
