"""What the Ray Train jobs (train-sr, train-inpaint) share: the worker group, where checkpoints
live, and resuming a killed run.

Checkpoints go to ``RunConfig(storage_path=..., storage_filesystem=...)`` on the configured
fsspec storage (``checkpoints.path``, default ``<output>/checkpoints``; S3 or a shared folder on a
cluster, so that every worker can reach it). Ray Train restores a run from its storage folder
when a run of the same name is started again, and ``ray.train.get_checkpoint()`` then returns
the latest checkpoint: rerunning a killed job continues from its last finished epoch. A
checkpoint holds the job's model artifact (as written to ``output``), the optimiser state
(``train_state.pt``, read back with ``torch.load(weights_only=True)``) and ``progress.json``
(epoch and history). ``_run.json`` beside the checkpoints records what the run trains (the
config without the epoch count, workers and storage); a rerun with other settings is refused
rather than continued from a checkpoint that does not belong to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import posixpath
import threading
from collections.abc import Callable
from typing import Any

import pyarrow.fs as pafs

from jobs.config_ray import TrainCheckpointConfig, TrainWorkersConfig
from restore_core.errors import UserError
from restore_core.io.locations import Location

log = logging.getLogger("jobs.training")

IDENTITY_FILE = "_run.json"
#: train_loop_config key of the queue that carries the workers' progress lines to the driver.
PROGRESS_KEY = "_progress"
STATE_FILE = "train_state.pt"
PROGRESS_FILE = "progress.json"


@dataclasses.dataclass(frozen=True)
class CheckpointPlace:
    """Where one training run keeps its checkpoints."""

    url: str  # the run's folder as an fsspec URL (for logs and summaries): <checkpoints.path>/<name>
    name: str  # RunConfig.name
    storage_path: str  # RunConfig.storage_path: the path inside ``filesystem``
    filesystem: pafs.FileSystem
    resuming: bool  # an earlier run with the same settings left checkpoints there


def run_identity(public_cfg: dict[str, Any]) -> dict[str, Any]:
    """What decides a run's checkpoints: the config (as ``to_dict`` gives it, secrets redacted)
    without the epoch count (a rerun with more epochs continues the run), the workers, the
    storage and the output folder."""
    out = {k: v for k, v in public_cfg.items() if k not in ("ray", "workers", "checkpoints", "output")}
    if isinstance(out.get("train"), dict):
        out["train"] = {k: v for k, v in out["train"].items() if k != "epochs"}
    return out


def run_fingerprint(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checkpoint_place(
    name: str,
    ckpt: TrainCheckpointConfig,
    output: Location,
    identity: dict[str, Any],
) -> CheckpointPlace:
    """Prepare the run's checkpoint folder (``ckpt.location(output)``): clear it (``resume: false``),
    refuse one made with other settings, record this run's settings; fails with one line when it
    cannot be written."""
    if ckpt.keep < 1:
        raise UserError(f"checkpoints.keep must be >= 1, got {ckpt.keep}")
    where = ckpt.location(output)
    url = where.path
    fingerprint = run_fingerprint(identity)
    try:
        fs, root = where.filesystem()
        run_root = posixpath.join(root, name)
        if not ckpt.resume and fs.exists(run_root):
            log.info("checkpoints.resume is false: deleting the earlier checkpoints in %s/%s", url, name)
            fs.rm(run_root, recursive=True)
        ident_path = posixpath.join(run_root, IDENTITY_FILE)
        earlier = json.loads(fs.cat_file(ident_path)) if fs.exists(ident_path) else None
        if earlier is not None and earlier.get("fingerprint") != fingerprint:
            raise UserError(
                f"{url}/{name} holds checkpoints of a run with other settings; set checkpoints.resume=false to "
                "start afresh there, or another checkpoints.path"
            )
        resuming = earlier is not None and any(
            posixpath.basename(p).startswith("checkpoint_") for p in fs.ls(run_root, detail=False)
        )
        fs.makedirs(run_root, exist_ok=True)
        with fs.open(ident_path, "w") as f:
            json.dump({"fingerprint": fingerprint, "settings": identity}, f, indent=2, default=str)
    except UserError:
        raise
    except (OSError, ValueError) as exc:
        raise UserError(
            f"cannot use {url} for checkpoints ({type(exc).__name__}: {exc}); check checkpoints.path and "
            "its storage options"
        ) from None
    return CheckpointPlace(
        url=f"{url}/{name}",
        name=name,
        storage_path=root,
        filesystem=pafs.PyFileSystem(pafs.FSSpecHandler(fs)),
        resuming=resuming,
    )


def fit(
    train_loop: Callable[[dict[str, Any]], None],
    loop_config: dict[str, Any],
    datasets_: dict[str, Any],
    workers: TrainWorkersConfig,
    place: CheckpointPlace,
    keep: int,
) -> tuple[Any, str]:
    """Run ``train_loop`` on ``workers`` with Ray Train; (the latest checkpoint, its URL).

    Raises UserError when the run ends without any checkpoint."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    if workers.num_workers < 1:
        raise UserError(f"workers.num_workers must be >= 1, got {workers.num_workers}")
    if workers.cpus_per_worker <= 0 or (workers.use_gpu and workers.gpus_per_worker <= 0):
        raise UserError("workers.cpus_per_worker (and gpus_per_worker with use_gpu) must be > 0")
    resources: dict[str, float] = {"CPU": workers.cpus_per_worker}
    if workers.use_gpu:
        resources["GPU"] = workers.gpus_per_worker
    if place.resuming:
        log.info("resuming from the latest checkpoint in %s", place.url)
    else:
        log.info("checkpoints go to %s", place.url)
    # Workers' output stays in Ray's log files unless --verbose: their progress lines come to
    # the driver's log through a queue instead, as they happen.
    progress = Queue(actor_options={"num_cpus": 0})
    stop = threading.Event()
    relay = threading.Thread(target=_relay, args=(progress, stop), name="train-progress", daemon=True)
    relay.start()
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={**loop_config, PROGRESS_KEY: progress},
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers.num_workers, use_gpu=workers.use_gpu, resources_per_worker=resources
        ),
        datasets=datasets_,
        run_config=ray.train.RunConfig(
            name=place.name,
            storage_path=place.storage_path,
            storage_filesystem=place.filesystem,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep),
        ),
    )
    try:
        result = trainer.fit()
    finally:
        stop.set()
        relay.join()
        progress.shutdown()
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise UserError("training produced no checkpoint (no training data? check input.path)")
    where = f"{place.url}/{posixpath.basename(result.checkpoint.path.rstrip('/'))}"
    return result.checkpoint, where


def _relay(progress: Any, stop: threading.Event) -> None:
    """Driver thread: log the workers' progress lines until training ends and the queue is empty."""
    from ray.util.queue import Empty

    while True:
        try:
            log.info("%s", progress.get(timeout=0.5))
        except Empty:
            if stop.is_set():
                return
        except Exception:  # the queue's actor gone: nothing more will come
            return


def say(config: dict[str, Any], line: str) -> None:
    """On a Ray Train worker: a progress line for the driver's log (printed when no driver listens)."""
    progress = config.get(PROGRESS_KEY)
    if progress is None:
        print(line, flush=True)
        return
    try:
        progress.put(line, timeout=5)
    except Exception:  # never let a log line stop training
        print(line, flush=True)


def describe_workers(workers: TrainWorkersConfig) -> str:
    gpu = f", {workers.gpus_per_worker:g} GPU" if workers.use_gpu else ""
    return f"{workers.num_workers} x ({workers.cpus_per_worker:g} CPU{gpu})"


def is_validation_id(image_id: str, fraction: float) -> bool:
    """Deterministic train/validation split by a hash of the id (stable across runs and shards)."""
    h = int.from_bytes(hashlib.sha256(image_id.encode()).digest()[:4], "big")
    return h / 2**32 < fraction


# ----------------------------------------------------------------------------- worker side


def save_train_state(
    folder: str,
    optimizer: Any,
    scaler: Any,
    epoch: int,
    history: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write the optimiser (and grad scaler) state, ``extra`` (tensors and numbers the job needs
    to resume, e.g. the raw weights behind an averaged model) and the progress next to the
    model files."""
    import torch

    state = {
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "extra": extra or {},
    }
    torch.save(state, os.path.join(folder, STATE_FILE))
    with open(os.path.join(folder, PROGRESS_FILE), "w", encoding="utf-8") as f:
        json.dump({"epoch": epoch, "history": history}, f)


def report_epoch(
    config: dict[str, Any],
    line: str,
    metrics: dict[str, Any],
    write_model: Callable[[str], None],
    optimizer: Any,
    scaler: Any,
    history: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> None:
    """On every Ray Train worker after an epoch: report ``metrics``; rank 0 also sends ``line``
    to the driver's log (:func:`say`) and reports a checkpoint made of the model files
    (``write_model(folder)``), the optimiser state, ``extra`` and the progress."""
    import tempfile

    import ray.train

    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics)
        return
    say(config, line)
    with tempfile.TemporaryDirectory() as folder:
        write_model(folder)
        save_train_state(folder, optimizer, scaler, int(metrics["epoch"]), history, extra)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def resume_train_state(
    config: dict[str, Any], job: str, optimizer: Any, scaler: Any, load_weights: Callable[[str], None]
) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    """On a Ray Train worker: (last finished epoch, history, extra) of the checkpoint Ray Train
    restored, with the weights (``load_weights(folder)``) and optimiser state loaded; (0, [], {})
    on a new run."""
    import ray.train
    import torch

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, [], {}
    with checkpoint.as_directory() as folder:
        load_weights(folder)
        state = torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        with open(os.path.join(folder, PROGRESS_FILE), encoding="utf-8") as f:
            progress = json.load(f)
    epoch = int(progress["epoch"])
    if ray.train.get_context().get_world_rank() == 0:
        say(config, f"[{job}] resuming after epoch {epoch} from the checkpoint {checkpoint.path}")
    return epoch, list(progress["history"]), dict(state.get("extra") or {})
