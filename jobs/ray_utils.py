"""The edge between the jobs and Ray: starting/joining Ray, reading datasets, sizing actor pools.

Only ``jobs/`` imports ray (``restore_core`` stays pure). Every job goes through these three
functions so that they all start Ray, read fsspec URLs and size their actor pools the same way.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import posixpath
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from jobs.config_ray import RayConfig
from restore_core.config import InputConfig
from restore_core.errors import UserError
from restore_core.io import datasets
from restore_core.io.locations import Location, is_process_local

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger("jobs.ray")

#: Whether Ray's own output reaches this terminal (``--verbose``, or ``IMRESTORE_VERBOSE=1``).
#: Off: workers' stdout/stderr, Ray's log lines below ERROR and library deprecation warnings
#: stay out of the job's log (they are still in Ray's log files, whose folder the job prints).
_VERBOSE = os.environ.get("IMRESTORE_VERBOSE", "") not in ("", "0")


def set_verbose(verbose: bool) -> None:
    """Show Ray's own output (worker lines, dedup notices, warnings) or keep the log to the job's."""
    global _VERBOSE
    _VERBOSE = verbose
    if not verbose:
        hide_library_warnings()


def is_verbose() -> bool:
    return _VERBOSE


def hide_library_warnings() -> None:
    """Deprecation and future warnings (Ray's, torch's...) say nothing about the user's data."""
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    # Ray's advice on its own tuning (actor pool sizes, block counts): the job sizes those itself.
    warnings.filterwarnings("ignore", module=r"ray(\.|$)")


@contextlib.contextmanager
def _quiet_ray_start() -> Iterator[None]:
    """While Ray starts: its C++ core (driver side) logs only fatal errors, and what it prints on
    file descriptor 2 is kept aside, shown only if the start fails. Ray's C++ code writes its
    notices (actor arguments in the object store, the log level it read) straight to fd 2."""
    saved_env = os.environ.get("RAY_BACKEND_LOG_LEVEL")
    os.environ["RAY_BACKEND_LOG_LEVEL"] = "fatal"
    sys.stderr.flush()
    saved_fd = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved_fd, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            if saved_env is None:
                os.environ.pop("RAY_BACKEND_LOG_LEVEL", None)
            else:
                os.environ["RAY_BACKEND_LOG_LEVEL"] = saved_env


def _set_ray_data_console(level: int) -> None:
    """Ray Data logs to its own file (kept at DEBUG) and to the console: only the console changes."""
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(level)


def ray_logs_folder() -> str:
    """Where this driver's Ray session writes its logs (the workers' output among them)."""
    import ray

    node = getattr(getattr(ray, "_private", None), "worker", None)
    node = getattr(node, "_global_node", None)
    getter = getattr(node, "get_logs_dir_path", None)
    return str(getter()) if callable(getter) else "/tmp/ray/session_latest/logs"


#: CPUs kept free of actors for Ray Data's read and write tasks. With every CPU taken by actors
#: the reads can never be scheduled and the job hangs (measured on Ray 2.60, 2 CPUs).
MIN_FREE_CPUS = 0.5


def init_ray(ray_cfg: RayConfig) -> None:
    """Start Ray in this process, or connect to a running cluster; a no-op when Ray is up.

    ``ray_cfg.address`` ``""`` starts an embedded Ray with ``ray_cfg.num_cpus`` CPUs (0 = all),
    unless ``$RAY_ADDRESS`` is set (as it is inside ``ray job submit``), in which case the job
    joins that cluster. Any other address (``"auto"``, ``"host:port"``, ``"ray://..."``) connects.
    """
    import ray  # imported when used: a run that starts no Ray (a small incremental night) saves ~2 s
    import ray.data

    if ray.is_initialized():
        return
    verbose = is_verbose()
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="ray.*")
    # Not verbose: workers' output stays in their log files (no "(pid=...)" lines, no dedup
    # notices), and Ray's own loggers speak only of errors.
    common: dict[str, Any] = {
        "logging_level": logging.INFO if verbose else logging.ERROR,
        "log_to_driver": verbose,
    }
    address = ray_cfg.address or os.environ.get("RAY_ADDRESS", "")
    try:
        with contextlib.nullcontext() if verbose else _quiet_ray_start():
            if address:
                ray.init(address=address, **common)
            else:
                # "local": always a new instance. Without it ray.init() would join any cluster that
                # `ray start` left on this machine, which is not what address "" promises.
                ray.init(
                    address="local",
                    num_cpus=ray_cfg.num_cpus or None,
                    include_dashboard=False,
                    **common,
                )
    except ConnectionError as exc:
        raise UserError(f"cannot connect to the Ray cluster at {address!r} ({exc}); check ray.address") from None
    cpus, gpus = cluster_resources()
    where = f"cluster at {address}" if address else "on this machine"
    log.info(
        "Ray %s: %g CPUs, %g GPUs; Ray's logs in %s%s",
        where,
        cpus,
        gpus,
        ray_logs_folder(),
        "" if verbose else " (--verbose shows them here)",
    )
    # Ray Data logs every execution plan at INFO; the job prints its own summary instead.
    _set_ray_data_console(logging.INFO if verbose else logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    # Progress bars only for a person at a terminal; logs and CI get the summary instead.
    ctx.enable_progress_bars = sys.stderr.isatty()
    ctx.enable_auto_log_stats = False


def arrow_filesystem(location: Location) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem (wrapping fsspec, so every fsspec URL works) and the path inside it."""
    fs, root = location.filesystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), root


def read_dataset(input_cfg: InputConfig, files: Sequence[str] | None = None) -> ray.data.Dataset:
    """The input as a Ray Dataset with the configured id and image columns.

    ``format: parquet`` reads the sorted ``*.parquet`` files with ``ray.data.read_parquet``;
    ``format: images`` reads every image file, ``id`` being its path relative to ``input.path``
    and ``image`` its bytes. ``s3://`` with ``storage_options.endpoint_url`` (or any other fsspec
    option) works because the pyarrow filesystem wraps the fsspec one. ``memory://`` URLs live
    in this process only, so they are read here and handed to Ray (small test data only).
    Missing paths, empty folders and missing columns fail here, before any work, as UserError.
    ``files``: read these of the input's files only (full paths as ``datasets.list_files`` gives
    them, not empty; an incremental quality run's new and changed files); ids are as in a full read.
    """
    import ray
    import ray.data

    if not input_cfg.path:
        raise UserError("input.path is empty: point it at the images (Parquet files or a folder)")
    where = input_cfg.location
    if files is None:
        files = datasets.list_files(where, input_cfg.format)
    elif is_process_local(input_cfg.path):
        raise ValueError("read_dataset: a file subset of a process-local input is not supported")
    files = list(files)
    idc, imc = input_cfg.id_column, input_cfg.image_column
    if is_process_local(input_cfg.path):
        rows = list(
            datasets.iter_rows(
                where,
                input_cfg.format,
                idc,
                imc,
                input_cfg.limit,
                (input_cfg.reference_column, input_cfg.mask_column),
            )
        )
        return ray.data.from_arrow(pa.Table.from_pylist(rows))
    fs, root = arrow_filesystem(where)
    if input_cfg.format == "parquet":
        # Every file's footer: missing columns fail here, and files whose column types differ
        # are read as one schema (ids as strings, missing columns null) instead of failing mid-job.
        schema = datasets.parquet_input_schema(where, idc, imc, files)
        ds = ray.data.read_parquet(files, filesystem=fs, **({"schema": schema} if schema is not None else {}))
        if schema is None:  # the files agree: the first one's schema is everyone's
            schema = datasets.parquet_schemas(files[:1], where.filesystem()[0])[0]
        image_columns = (imc, input_cfg.reference_column, input_cfg.mask_column)
        if any(c in schema.names and datasets.is_path_struct(schema.field(c).type) for c in image_columns):
            # Hugging Face cells that point at files: read the files in the read stage.
            embed = functools.partial(datasets.embed_path_cells, columns=image_columns, location=where)
            ds = ds.map_batches(embed, batch_format="pyarrow", num_cpus=0.25)
    else:
        ds = ray.data.read_binary_files(files, filesystem=fs, include_paths=True)
        base = root if not fs.get_file_info(root).is_file else posixpath.dirname(root)

        def to_rows(table: pa.Table) -> pa.Table:
            return _binary_to_rows(table, base, idc, imc)

        ds = ds.map_batches(to_rows, batch_format="pyarrow")
    if input_cfg.limit:
        ds = ds.limit(input_cfg.limit)
    return ds


def _binary_to_rows(table: pa.Table, root: str, id_column: str, image_column: str) -> pa.Table:
    paths = table.column("path").to_pylist()
    ids = [posixpath.relpath(p, root) if p != root else posixpath.basename(p) for p in paths]
    return pa.table({id_column: pa.array(ids, pa.string()), image_column: table.column("bytes")})


def cluster_resources() -> tuple[float, float]:
    """(CPUs, GPUs) of the whole cluster Ray is connected to."""
    import ray

    res = ray.cluster_resources()
    return float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0))


def actor_pool_args(ray_cfg: RayConfig) -> dict[str, Any]:
    """``map_batches`` keyword arguments for an actor pool sized to the cluster.

    Returns ``compute`` (an ``ActorPoolStrategy``), ``num_cpus`` and, for GPU actors,
    ``num_gpus`` (whole or fractional). CPU actors: ``ray.num_actors`` (0 = one per CPU, at
    most) actors of ``ray.num_cpus_per_actor`` CPUs each, always leaving ``MIN_FREE_CPUS`` for
    the read and write tasks, without which the pipeline deadlocks. GPU actors: one per
    ``num_gpus_per_actor`` share of the cluster's GPUs. A request the cluster cannot hold is a
    UserError naming the key to change (the shares' own ranges are declared in ``RayConfig``).
    ``batch_size`` is left to the caller.
    """
    import ray
    import ray.data

    cpus, gpus = cluster_resources()
    cpu_per = float(ray_cfg.num_cpus_per_actor)
    gpu_per = float(ray_cfg.num_gpus_per_actor)
    room = cpus - MIN_FREE_CPUS
    fits_cpu = math.floor(room / cpu_per + 1e-9) if room > 0 else 0
    args: dict[str, Any] = {"num_cpus": cpu_per}
    if gpu_per > 0:
        args["num_gpus"] = gpu_per
        fits_gpu = math.floor(gpus / gpu_per + 1e-9)
        if fits_gpu == 0:
            if ray_cfg.num_actors <= 0:
                raise UserError(
                    f"ray.num_gpus_per_actor is {gpu_per} but the cluster has no GPU; set ray.num_actors to let an "
                    "autoscaler add GPU nodes, or set ray.num_gpus_per_actor: 0 for CPU actors"
                )
            # An autoscaling cluster may have no GPU node yet: start with one actor, grow to the ask.
            log.warning("no GPU in the cluster yet; waiting for the autoscaler to add GPU nodes")
            args["compute"] = ray.data.ActorPoolStrategy(min_size=1, max_size=ray_cfg.num_actors)
            return args
        n = ray_cfg.num_actors or fits_gpu
        n = min(n, fits_gpu)
    else:
        default = max(1, int(cpus))  # one actor per core: each runs torch single-threaded
        n = ray_cfg.num_actors or default
    if n > fits_cpu:
        if ray_cfg.num_actors:
            raise UserError(
                f"ray.num_actors={n} x ray.num_cpus_per_actor={cpu_per} leaves no CPU for reading and writing on "
                f"a cluster of {cpus:g} CPUs (the job would hang); lower one of them"
            )
        n = fits_cpu
    if n < 1:
        raise UserError(
            f"ray.num_cpus_per_actor={cpu_per} does not fit a cluster of {cpus:g} CPUs with {MIN_FREE_CPUS} kept "
            "for reads and writes; lower ray.num_cpus_per_actor"
        )
    args["compute"] = ray.data.ActorPoolStrategy(size=n)
    return args


def pool_size(args: dict[str, Any]) -> int:
    """The (maximum) number of actors in ``actor_pool_args``' pool, for logs and summaries."""
    compute = args["compute"]
    return int(getattr(compute, "max_size", None) or getattr(compute, "size", None) or 1)


def numpy_column(values: list[Any]) -> np.ndarray:
    """An object array holding ``values`` as they are (strings, bytes, None)."""
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def input_rows(input_cfg: InputConfig) -> int | None:
    """How many rows the input holds (Parquet footers, or the number of image files), capped by
    ``input.limit``; None when that cannot be known cheaply (progress then shows no ETA)."""
    try:
        files = datasets.list_files(input_cfg.location, input_cfg.format)
        if input_cfg.format == "parquet":
            from restore_core.io.shards import parquet_row_counts

            fs, _ = input_cfg.location.filesystem()
            n = sum(parquet_row_counts(files, fs))
        else:
            n = len(files)
    except Exception as exc:  # progress is a courtesy
        log.debug("counting the input's rows: %s", exc)
        return None
    return min(n, input_cfg.limit) if input_cfg.limit else n
