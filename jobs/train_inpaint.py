"""Train the inpainting refiner on the user's own (damaged) dataset with Ray Train; write the
refiner artifact (``model.safetensors`` + ``meta.json``).

Self-supervised: no clean copy of the data is needed. Ray Data reads the dataset (Parquet or an
image folder, any fsspec URL, the same ``input`` section as ``restore``), finds each image's
observed pixels (the ``mask`` column when present, else detection by ``masks.rule``, as the
restore job does) and cuts ``train.crops_per_image`` random crops of ``train.patch_size``. Every
step, ``restore_core.refiner.training_loss`` hides more of the observed pixels with random masks
and scores the refiner on them. Workers train data-parallel (``TorchTrainer``, DDP); after each
epoch rank 0 logs one line (train loss; on held-out images, the PSNR of hidden pixels for the
refiner and for the cheap fill it starts from) and reports a checkpoint to
``checkpoints.path`` (default ``<output>/checkpoints``); a killed run resumes from it when rerun.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import posixpath
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from jobs import training
from jobs.common import Summary, format_table
from jobs.config_train_inpaint import TrainInpaintConfig
from jobs.train_inpaint_data import make_crops, random_crops, to_samples  # noqa: F401 (the job's names)
from restore_core.config import check_ranges, from_dict, to_dict
from restore_core.errors import UserError
from restore_core.io import datasets
from restore_core.io.artifacts import load_bases
from restore_core.io.locations import Location
from restore_core.io.refiners import build_from_artifact, load_refiner, refiner_artifact, save_refiner
from restore_core.refiner import RefinerSpec, build_refiner

CONFIG = TrainInpaintConfig
log = logging.getLogger("jobs.train_inpaint")
JOB = "train-inpaint"


# ----------------------------------------------------------------------------- training (worker side)


def train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: DDP training over its shard, validation summed over all."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    cfg = from_dict(TrainInpaintConfig, config["cfg"])
    t = cfg.train
    spec = RefinerSpec(**config["spec"])
    bases = _worker_bases(config["bases"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(t.seed)  # same initial weights on every worker (DDP also broadcasts them)
    device = ray.train.torch.get_device()
    base = build_refiner(spec)
    model = ray.train.torch.prepare_model(base)
    # The refiner's functions read model.spec; the DDP wrapper (several workers) does not
    # forward plain attributes to the module it wraps.
    model.spec = spec  # type: ignore[assignment]
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr)
    # The refiner written out is an exponential moving average of the trained weights (it
    # smooths Adam's step-to-step noise, as restore_core.refiner.train_refiner does); the
    # checkpoint holds both, the raw ones in the train state.
    averaged = build_refiner(spec).to(device)
    averaged.load_state_dict(base.state_dict())

    def load_weights(folder: str) -> None:
        averaged.load_state_dict(build_from_artifact(load_refiner(Location(folder))).state_dict())

    start, history, extra = training.resume_train_state(config, JOB, optimizer, None, load_weights)
    if "raw_weights" in extra:
        base.load_state_dict(extra["raw_weights"])
    ema_steps = int(extra.get("ema_steps", 0))
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if config["has_val"] else None

    def to_batch(batch: dict[str, Any]) -> tuple[Any, Any]:
        return batch["image"].to(device).float(), batch["observed"].to(device) > 0

    # Cosine decay of the step size to 5 % of train.lr over the whole run (as train_refiner
    # does), a function of the epoch and step only, so a resumed run follows the same schedule.
    steps_per_epoch = max(1, math.ceil(config["train_crops"] / world / t.batch_size))

    for epoch in range(start + 1, t.epochs + 1):
        t0 = time.perf_counter()
        # Hidden pixels differ every epoch, on every worker, and again after a resume.
        gen = torch.Generator(device=device).manual_seed(t.seed * 1_000_003 + epoch * 1009 + rank)
        model.train()
        batches = train_shard.iter_torch_batches(
            batch_size=t.batch_size, local_shuffle_buffer_size=max(4 * t.batch_size, 256)
        )
        set_lr = functools.partial(_set_lr, optimizer, t.lr, t.epochs, steps_per_epoch, epoch)
        loss_sum, n_train, ema_steps = _train_epoch(
            model, base, averaged, optimizer, batches, gen, bases, t.ema_decay, ema_steps, set_lr, to_batch
        )
        train_seconds = time.perf_counter() - t0
        # Validation: the same hidden pixels every epoch (a fixed generator), refiner vs the fill.
        sse_model, sse_fill, n_hidden = 0.0, 0.0, 0.0
        if val_shard is not None:
            val_gen = torch.Generator(device=device).manual_seed(t.seed + 7 + rank)
            val_batches = val_shard.iter_torch_batches(batch_size=t.batch_size)
            sse_model, sse_fill, n_hidden = _validate(averaged, spec, val_batches, val_gen, bases, device, to_batch)
        sums = _all_sum([loss_sum, float(n_train), sse_model, sse_fill, n_hidden], device, world)
        metrics = _epoch_metrics(epoch, sums, time.perf_counter() - t0, train_seconds)
        history.append(metrics)
        line = _epoch_line(metrics, t.epochs)

        def write_model(folder: str, epoch: int = epoch) -> None:
            meta = {**config["meta"], "training": {**config["meta"]["training"], "epoch": epoch}}
            save_refiner(refiner_artifact(averaged, spec, **meta), Location(folder))

        raw = {"raw_weights": {k: v.detach().cpu() for k, v in base.state_dict().items()}, "ema_steps": ema_steps}
        training.report_epoch(config, line, metrics, write_model, optimizer, None, history, raw)


def _worker_bases(bases: Any) -> Any:
    """The bases on a worker: fetched from the object store when a reference, made writable."""
    import ray

    if isinstance(bases, ray.ObjectRef):
        bases = ray.get(bases)
    if bases is not None:
        bases = dataclasses.replace(bases, H=np.array(bases.H))  # objects from the store are read-only
    return bases


def _all_sum(values: list[float], device: Any, world: int) -> list[float]:
    """``values`` summed over all workers."""
    import torch
    import torch.distributed as dist

    x = torch.tensor(values, dtype=torch.float64, device=device)
    if world > 1 and dist.is_initialized():
        dist.all_reduce(x)
    return x.tolist()


def _set_lr(optimizer: Any, lr: float, epochs: int, steps_per_epoch: int, epoch: int, step: int) -> None:
    """Cosine decay of the step size to 5 % of ``lr`` over the whole run (as train_refiner does),
    a function of the epoch and step only, so a resumed run follows the same schedule."""
    share = min(1.0, ((epoch - 1) + step / steps_per_epoch) / epochs)
    for group in optimizer.param_groups:
        group["lr"] = lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * share)))


def _train_epoch(
    model: Any,
    base: Any,
    averaged: Any,
    optimizer: Any,
    batches: Any,
    gen: Any,
    bases: Any,
    ema_decay: float,
    ema_steps: int,
    set_lr: Callable[[int], None],
    to_batch: Callable[[dict[str, Any]], tuple[Any, Any]],
) -> tuple[float, int, int]:
    """One epoch of DDP steps on a worker's batches, the averaged weights following each step:
    (sum of the crops' losses, number of crops, EMA steps so far)."""
    import torch

    from restore_core import refiner as rf

    loss_sum, n_train = 0.0, 0
    for step, batch in enumerate(batches):
        set_lr(step)
        images, observed = to_batch(batch)
        loss = rf.training_loss(model, images, observed, gen, bases=bases)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema_steps += 1
        with torch.no_grad():
            decay = min(ema_decay, (1.0 + ema_steps) / (10.0 + ema_steps))
            for pa, pm in zip(averaged.parameters(), base.parameters(), strict=True):
                pa.lerp_(pm, 1.0 - decay)
        loss_sum += float(loss.detach()) * images.shape[0]
        n_train += int(images.shape[0])
    return loss_sum, n_train, ema_steps


def _validate(
    averaged: Any,
    spec: RefinerSpec,
    batches: Any,
    val_gen: Any,
    bases: Any,
    device: Any,
    to_batch: Callable[[dict[str, Any]], tuple[Any, Any]],
) -> tuple[float, float, float]:
    """Squared errors on hidden pixels of a worker's validation batches, of the refiner and of
    the cheap fill it starts from, and the number of hidden pixels."""
    import torch

    from restore_core import refiner as rf
    from restore_core.fill import harmonic_fill

    sse_model, sse_fill, n_hidden = 0.0, 0.0, 0.0
    with torch.no_grad():
        for batch in batches:
            images, observed = to_batch(batch)
            hide = rf.random_training_mask(observed.shape, val_gen, device) & observed
            dead = ~observed | hide
            weight = hide.expand_as(images).float()
            pred = rf.refine(averaged, images, dead, bases=bases, calibrate=False)  # the net itself
            fill = harmonic_fill(images, dead, iters=spec.fill_iters, order=spec.fill_order)
            sse_model += float((((pred - images) ** 2) * weight).sum())
            sse_fill += float((((fill - images) ** 2) * weight).sum())
            n_hidden += float(weight.sum())
    return sse_model, sse_fill, n_hidden


def _epoch_metrics(epoch: int, sums: list[float], epoch_seconds: float, train_seconds: float) -> dict[str, Any]:
    """An epoch's history entry from the sums over all workers."""
    return {
        "epoch": epoch,
        "train_loss": sums[0] / max(sums[1], 1.0),
        "train_crops": sums[1],
        "val_psnr_hidden": _psnr(sums[2], sums[4]),
        "val_psnr_hidden_fill": _psnr(sums[3], sums[4]),
        "val_hidden_pixels": sums[4],
        "epoch_seconds": epoch_seconds,
        "train_seconds": train_seconds,
    }


def _epoch_line(metrics: dict[str, Any], epochs: int) -> str:
    """The line rank 0 logs after an epoch."""
    return (
        f"[{JOB}] epoch {metrics['epoch']}/{epochs}  train loss {metrics['train_loss']:.6f}  "
        f"val hidden-pixel PSNR {metrics['val_psnr_hidden']:.2f} dB "
        f"(its fill alone {metrics['val_psnr_hidden_fill']:.2f})  {int(metrics['train_crops'])} crops  "
        f"{metrics['epoch_seconds']:.1f} s"
    )


def _psnr(sse: float, n: float) -> float:
    if n <= 0:
        return float("nan")
    mse = sse / n
    return float("inf") if mse <= 0 else 10.0 * math.log10(1.0 / mse)


# ----------------------------------------------------------------------------- driver


def check_config(cfg: TrainInpaintConfig) -> None:
    """Refuse settings that cannot work, with one line naming the key."""
    check_ranges(cfg)  # the loader checks these too; a config built in code gets the same checks
    if not cfg.input.path:
        raise UserError("input.path is empty: point it at the (damaged) images to learn from")
    if not cfg.output:
        raise UserError("output is empty: set it to the folder where the refiner will be written")
    if cfg.workers.use_gpu and cfg.workers.gpus_per_worker <= 0:
        raise UserError(f"workers.gpus_per_worker must be > 0 with use_gpu, got {cfg.workers.gpus_per_worker}")
    known = {f.name for f in dataclasses.fields(RefinerSpec)} - {"channels"}
    unknown = sorted(set(cfg.net) - known)
    if unknown:
        hint = "; set channels (gray | rgb), not net.channels" if unknown[0] == "channels" else ""
        raise UserError(f"unknown key net.{unknown[0]} (known: {', '.join(sorted(known))}){hint}")


def make_spec(cfg: TrainInpaintConfig) -> RefinerSpec:
    """The refiner's spec from ``channels`` and ``net`` (``use_bases`` follows ``bases`` unless
    set); a bad value is one line naming it."""
    net = dict(cfg.net)
    net.setdefault("use_bases", bool(cfg.bases))
    if net["use_bases"] and not cfg.bases:
        raise UserError("net.use_bases is true but bases is empty: set bases to a learn-bases artifact folder")
    try:
        spec = RefinerSpec(channels=3 if cfg.channels == "rgb" else 1, **net)
        build_refiner(spec)
    except (TypeError, ValueError) as exc:
        raise UserError(f"net: {exc}") from None
    return spec


def data_fingerprint(cfg: TrainInpaintConfig) -> str:
    """A short hash of the input's file listing (paths and sizes)."""
    fs, _ = cfg.input.location.filesystem()
    files = datasets.list_files(cfg.input.location, cfg.input.format)
    h = hashlib.sha256()
    for path in files:
        h.update(f"{path}:{fs.size(path)};".encode())
    return h.hexdigest()[:16]


def _load_checked_bases(cfg: TrainInpaintConfig, spec: RefinerSpec) -> Any:
    """The bases the refiner takes as an input (None without ``use_bases``), checked to fit it."""
    channels = spec.channels
    bases = load_bases(cfg.bases_location) if spec.use_bases else None
    if bases is not None and (bases.meta.mode != "patch" or bases.meta.channels != channels):
        raise UserError(
            f"bases {cfg.bases} are {bases.meta.describe()}: the refiner needs patch-mode bases with "
            f"{channels} channel(s) (learn-bases nmf.mode patch, nmf.channels {cfg.channels})"
        )
    return bases


def _cut_crops(cfg: TrainInpaintConfig, images: Any, channels: int) -> tuple[dict[str, Any], dict[str, int]]:
    """The training (and validation) crops, materialised, and their counts."""
    parts: dict[str, Any] = {}
    for name, val in (("train", False), ("val", True)):
        if val and cfg.train.val_fraction == 0:
            continue
        crops = images.map_batches(
            make_crops, fn_kwargs={"cfg": cfg, "channels": channels, "val": val}, batch_format="numpy"
        )
        # Cut once: every epoch reads the crops from the object store instead of re-decoding.
        parts[name] = crops.materialize()
    counts = {name: ds.count() for name, ds in parts.items()}
    if counts["train"] == 0:
        raise UserError(f"no training crops from {cfg.input.path}: no decodable image with observed pixels")
    if counts.get("val") == 0:
        parts.pop("val")  # too few images for a held-out share; train on the rest
    return parts, counts


def _write_refiner(cfg: TrainInpaintConfig, checkpoint: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The last checkpoint's refiner written to ``output`` with its training history (also as
    ``history.json``): (the history, what :func:`save_refiner` returned)."""
    with checkpoint.as_directory() as folder:
        artifact = load_refiner(Location(folder))
        with open(posixpath.join(folder, training.PROGRESS_FILE), encoding="utf-8") as f:
            history = json.load(f)["history"]
    artifact = dataclasses.replace(
        artifact,
        meta={**artifact.meta, "training": {**artifact.meta.get("training", {}), "history": history}},
    )
    written = save_refiner(artifact, cfg.output_location)
    fs, root = cfg.output_location.filesystem()
    with fs.open(posixpath.join(root, "history.json"), "w") as f:
        json.dump(history, f, indent=2)
    return history, written


def run(cfg: TrainInpaintConfig) -> Summary:
    check_config(cfg)
    import ray
    import ray.data

    from jobs import ray_utils

    t0 = time.perf_counter()
    spec = make_spec(cfg)
    channels = spec.channels
    bases = _load_checked_bases(cfg, spec)
    public = to_dict(cfg)
    place = training.checkpoint_place(JOB, cfg.checkpoints, cfg.output_location, training.run_identity(public))
    datasets.list_files(cfg.input.location, cfg.input.format)  # a wrong path: one line now
    ray_utils.init_ray(cfg.ray)
    ray.data.DataContext.get_current().enable_operator_progress_bars = False
    images: Any = ray_utils.read_dataset(cfg.input)  # Any: Ray's stubs reject map_batches' fn_kwargs style
    parts, counts = _cut_crops(cfg, images, channels)
    log.info(
        "%d training crops, %d validation crops of %dx%d, %d channel(s)",
        counts["train"],
        counts.get("val", 0),
        cfg.train.patch_size,
        cfg.train.patch_size,
        channels,
    )
    meta = {
        "data_fingerprint": data_fingerprint(cfg),
        "bases_fingerprint": bases.fingerprint() if bases is not None else "",
        "training": {"config": public, "input": cfg.input.path, "crops": counts},
    }
    raw = to_dict(cfg)
    raw["input"]["storage_options"] = dict(cfg.input.storage_options)  # workers need the real ones
    loop_config = {
        "cfg": raw,
        "spec": dataclasses.asdict(spec),
        "bases": ray.put(bases) if bases is not None else None,
        "has_val": "val" in parts,
        "train_crops": counts["train"],
        "meta": meta,
    }
    checkpoint, checkpoint_url = training.fit(train_loop, loop_config, parts, cfg.workers, place, cfg.checkpoints.keep)
    history, written = _write_refiner(cfg, checkpoint)
    log.info("refiner written to %s (from the checkpoint %s)", cfg.output, checkpoint_url)
    return _summary(cfg, spec, counts, history, written, checkpoint_url, t0)


def _summary(
    cfg: TrainInpaintConfig,
    spec: RefinerSpec,
    counts: dict[str, int],
    history: list[dict[str, Any]],
    written: dict[str, Any],
    checkpoint_url: str,
    t0: float,
) -> Summary:
    """The job's summary: its data, refiner and last epoch's validation, and the epochs' table."""
    channels = spec.channels
    last = history[-1] if history else {}
    rows = [
        [h["epoch"], h["train_loss"], h["val_psnr_hidden"], h["val_psnr_hidden_fill"], h["epoch_seconds"]]
        for h in history
    ]
    table = format_table(["epoch", "train loss", "val PSNR hidden px", "fill alone", "seconds"], rows)
    return Summary(
        job=JOB,
        values={
            "data": cfg.input.path,
            "crops": f"{counts['train']} train, {counts.get('val', 0)} val, {cfg.train.patch_size}px, "
            f"{channels} plane(s) each",
            "refiner": f"{spec}",
            "bases": cfg.bases or "none",
            "workers": training.describe_workers(cfg.workers),
            "val PSNR hidden px (dB)": last.get("val_psnr_hidden", float("nan")),
            "fill alone PSNR (dB)": last.get("val_psnr_hidden_fill", float("nan")),
            "content hash": written["fingerprint"],
            "seconds": time.perf_counter() - t0,
        },
        outputs={"refiner": cfg.output, "checkpoint": checkpoint_url},
        table=table,
    )
