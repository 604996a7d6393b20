"""Train the SR CNN with Ray Train (``TorchTrainer``) fed by Ray Data; write the model artifact.

Data: clean images from ``input.path`` (Parquet with id/image columns, or a folder of images, any
fsspec URL), cut into luminance patches; or, when ``input.path`` is empty, generated digit-like
images (``imrestore_data.digits``), which with ``configs/sr_seed.yaml`` reproduces the write-up
(28x28 gray via 10x10, MSE, Adam, batch 64, 10 epochs). Every epoch each worker trains on its
shard, the validation PSNR (model, degraded input, bicubic) is summed across workers, rank 0
logs one line and reports a checkpoint (safetensors + meta.json + optimiser state) to
``checkpoints.path`` (default ``<output>/checkpoints``, any fsspec URL); a killed run resumes from
its latest checkpoint when rerun (``jobs.training``). At the end the last checkpoint's model is
copied to ``output`` with ``history.json`` and ``training.png`` (loss/PSNR plot).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from imrestore_data.digits import digits
from jobs import ray_utils, training
from jobs.common import Summary, format_table
from jobs.config_train_sr import TrainSRConfig
from restore_core import codec, sr
from restore_core.codec import cell_bytes
from restore_core.config import SRDegradeConfig, check_ranges, from_dict, to_dict
from restore_core.errors import UserError
from restore_core.io import locations, sr_models
from restore_core.io.artifacts import load_sr_model, save_sr_model
from restore_core.io.locations import Location
from restore_core.io.shards import probe_writable

CONFIG = TrainSRConfig
log = logging.getLogger("jobs.train_sr")


# ----------------------------------------------------------------------------- data (Ray Data side)


class _MakeDigits:
    """Ray Data batch function: ``id`` column of image indices -> ``data`` (B, size, size)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = batch["id"]
        out = np.empty((len(ids), self.size, self.size), np.float32)
        for j, i in enumerate(ids):  # one image at a time: image i depends only on (seed, i)
            out[j] = digits(1, self.size, seed=self.seed, start=int(i))[0][0]
        return {"data": out}


class _MakePatches:
    """Ray Data batch function: encoded images -> luminance patches (``data`` (n, p, p))."""

    def __init__(self, cfg: dict[str, Any], val: bool) -> None:
        self.cfg = from_dict(TrainSRConfig, cfg)
        self.val = val

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        c, t = self.cfg, self.cfg.train
        ids = [str(i) for i in batch[c.input.id_column]]
        images = []
        for image_id, cell in zip(ids, batch[c.input.image_column], strict=True):
            if training.is_validation_id(image_id, t.val_fraction) != self.val:
                continue
            try:
                img, _ = codec.decode(cell_bytes(cell), c.decode.max_pixels)
            except Exception as exc:  # one bad image must not stop training
                logging.getLogger("jobs.train_sr").warning("skipping %s: %s", image_id, exc)
                continue
            images.append(img)
        # Seeded by the batch's ids: the same data gives the same patches on every run.
        seed = int.from_bytes(hashlib.sha256("|".join(ids).encode()).digest()[:4], "big") ^ t.seed
        patches = sr.sample_patches(images, t.patch_size, t.patches_per_image, np.random.default_rng(seed))
        return {"data": patches}


def build_datasets(cfg: TrainSRConfig) -> tuple[Any, Any]:
    """(train, val) Ray Datasets with one column ``data``: float32 (H, W) clean planes in [0, 1]."""
    import ray.data

    if not cfg.input.path:
        d = cfg.digits
        make = _MakeDigits(d.size, d.seed)
        # Validation digits use indices after the training ones: same generator, disjoint images.
        train = ray.data.range(d.n_train).map_batches(make, batch_size=512, batch_format="numpy")
        val = (
            ray.data.range(d.n_val)
            .map_batches(lambda b: {"id": b["id"] + d.n_train}, batch_format="numpy")
            .map_batches(make, batch_size=512, batch_format="numpy")
        )
        # Drawn once, not on every epoch's pass (a streaming split re-runs its pipeline per epoch).
        return train.materialize(), val.materialize()
    if not 0.0 < cfg.train.val_fraction < 1.0:
        raise UserError(f"train.val_fraction must be between 0 and 1 (exclusive), got {cfg.train.val_fraction}")
    images = ray_utils.read_dataset(cfg.input)
    raw = to_dict(cfg)
    raw["input"]["storage_options"] = dict(cfg.input.storage_options)  # workers need the real ones
    train = images.map_batches(_MakePatches, fn_constructor_kwargs={"cfg": raw, "val": False}, batch_format="numpy")
    val = images.map_batches(_MakePatches, fn_constructor_kwargs={"cfg": raw, "val": True}, batch_format="numpy")
    if cfg.train.cache_patches:
        # The patches are seeded by their images' ids, so every epoch would cut the same ones:
        # cut them once. Without this, each epoch re-reads and re-decodes the whole input (and
        # the validation pass does it again), which dominates on small and medium datasets.
        return train.materialize(), val.materialize()
    return train, val


# ----------------------------------------------------------------------------- training (worker side)


def train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: DDP training over its shard, validation summed over all."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    cfg = from_dict(TrainSRConfig, config["cfg"])
    t = cfg.train
    ctx = ray.train.get_context()
    world = ctx.get_world_size()
    torch.manual_seed(t.seed)  # same initial weights on every worker (DDP also broadcasts them)
    device = ray.train.torch.get_device()
    base = sr.SRNet(cfg.net.channels, cfg.net.residual)
    net = ray.train.torch.prepare_model(base)
    state = sr.make_train_state(net, cfg.degrade, device, lr=t.lr, amp=t.amp)
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")

    def load_weights(folder: str) -> None:
        base.load_state_dict(sr_models.load_model(Location(folder)).net.state_dict())

    start, history, _ = training.resume_train_state(config, "train-sr", state.optimizer, state.scaler, load_weights)

    def all_sum(values: list[float]) -> list[float]:
        x = torch.tensor(values, dtype=torch.float64, device=device)
        if world > 1 and dist.is_initialized():
            dist.all_reduce(x)
        return x.tolist()

    for epoch in range(start + 1, t.epochs + 1):
        t0 = time.perf_counter()
        loss_sum, n_train = 0.0, 0
        for batch in train_shard.iter_torch_batches(
            batch_size=t.batch_size, dtypes=torch.float32, local_shuffle_buffer_size=max(4 * t.batch_size, 256)
        ):
            x = batch["data"][:, None]  # (B, 1, H, W)
            loss_sum += sr.train_step(state, x) * x.shape[0]
            n_train += int(x.shape[0])
        train_seconds = time.perf_counter() - t0
        metrics = _epoch_metrics(cfg, base, val_shard, device, all_sum, (loss_sum, n_train))
        metrics.update(epoch=epoch, epoch_seconds=time.perf_counter() - t0, train_seconds=train_seconds)
        history.append(metrics)
        line = (
            f"[train-sr] epoch {epoch}/{t.epochs}  train loss {metrics['train_loss']:.5f}  "
            f"val loss {metrics['val_loss']:.5f}  val PSNR {metrics['val_psnr']:.2f} dB "
            f"(bicubic {metrics['val_psnr_bicubic']:.2f}, input {metrics['val_psnr_input']:.2f})  "
            f"{metrics['epoch_seconds']:.1f} s"
        )

        def write_model(folder: str, epoch: int = epoch, metrics: dict[str, Any] = metrics) -> None:
            sr_models.save_model(
                base,
                cfg.degrade,
                Location(folder),
                epoch=epoch,
                val_psnr=metrics["val_psnr"],
                val_psnr_bicubic=metrics["val_psnr_bicubic"],
                val_psnr_input=metrics["val_psnr_input"],
                history=history,
                train_config=config["cfg_public"],
            )

        training.report_epoch(config, line, metrics, write_model, state.optimizer, state.scaler, history)


def _epoch_metrics(
    cfg: TrainSRConfig,
    net: Any,
    val_shard: Any,
    device: Any,
    all_sum: Callable[[list[float]], list[float]],
    train: tuple[float, int],
) -> dict[str, Any]:
    """An epoch's numbers summed over all workers: train loss (from this worker's ``(loss sum,
    images)``) and the validation loss and PSNRs (model, bicubic, input) over the val shards, in
    the history's key order; ``epoch`` and the seconds are placeholders the caller sets."""
    import torch

    sums = {"n": 0.0, "loss": 0.0, "psnr": 0.0, "psnr_input": 0.0, "psnr_bicubic": 0.0}
    for batch in val_shard.iter_torch_batches(batch_size=256, dtypes=torch.float32):
        for k, v in sr.evaluate_batch(net, batch["data"][:, None], cfg.degrade, device, cfg.train.amp).items():
            sums[k] += v
    keys = list(sums)
    totals = dict(zip(keys, all_sum([sums[k] for k in keys]), strict=True))
    train_totals = all_sum([train[0], float(train[1])])
    n_val = max(totals["n"], 1.0)
    return {
        "epoch": 0,
        "train_loss": train_totals[0] / max(train_totals[1], 1.0),
        "val_loss": totals["loss"] / n_val,
        "val_psnr": totals["psnr"] / n_val,
        "val_psnr_input": totals["psnr_input"] / n_val,
        "val_psnr_bicubic": totals["psnr_bicubic"] / n_val,
        "train_images": train_totals[1],
        "val_images": totals["n"],
        "epoch_seconds": 0.0,
        "train_seconds": 0.0,
    }


# ----------------------------------------------------------------------------- driver


def plot_history(history: list[dict[str, float]], path: str) -> None:
    """Loss (train, validation) and validation PSNR (model, bicubic, input) per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("MSE")
    ax1.set_yscale("log")
    ax1.legend()
    ax2.plot(epochs, [h["val_psnr"] for h in history], "o-", label="model")
    ax2.plot(epochs, [h["val_psnr_bicubic"] for h in history], "--", label="bicubic")
    ax2.plot(epochs, [h["val_psnr_input"] for h in history], ":", label="degraded input")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation PSNR (dB)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _check(cfg: TrainSRConfig) -> None:
    if not cfg.output:
        raise UserError("output is empty: set it to the folder where the SR model will be written")
    check_ranges(cfg)  # the loader checks these too; a config built in code gets the same checks
    if not cfg.net.channels:
        raise UserError("net.channels is empty: give the CNN's hidden widths, e.g. [16, 32, 64]")
    nest = cfg.input.format == "parquet"  # model.safetensors and a PNG plot are never read as Parquet
    locations.check_apart([("input.path", cfg.input.path)], [("output", cfg.output)], output_may_nest=nest)
    probe_writable(cfg.output_location, key="output")  # before any training


def run(cfg: TrainSRConfig) -> Summary:
    _check(cfg)
    import ray.data

    t0 = time.perf_counter()
    place = training.checkpoint_place(
        "train-sr", cfg.checkpoints, cfg.output_location, training.run_identity(to_dict(cfg))
    )
    ray_utils.init_ray(cfg.ray)
    # Per-operator bars flood logs; the per-epoch lines from rank 0 show progress instead.
    ray.data.DataContext.get_current().enable_operator_progress_bars = False
    train_ds, val_ds = build_datasets(cfg)
    w = cfg.workers
    raw = to_dict(cfg)
    raw["input"]["storage_options"] = dict(cfg.input.storage_options)
    checkpoint, checkpoint_url = training.fit(
        train_loop,
        {"cfg": raw, "cfg_public": to_dict(cfg)},
        {"train": train_ds, "val": val_ds},
        w,
        place,
        cfg.checkpoints.keep,
    )
    with checkpoint.as_directory() as ckpt_dir:
        artifact = load_sr_model(Location(ckpt_dir))
    meta = save_sr_model(artifact, cfg.output_location)
    log.info("SR model written to %s (from the checkpoint %s)", cfg.output, checkpoint_url)
    history = meta.get("history", [])
    fs, root = cfg.output_location.filesystem()
    with fs.open(posixpath.join(root, "history.json"), "w") as f:
        json.dump(history, f, indent=2)
    with tempfile.TemporaryDirectory() as tmp:
        png = os.path.join(tmp, "training.png")
        plot_history(history, png)
        fs.put_file(png, posixpath.join(root, "training.png"))
    last = history[-1] if history else {}
    rows = [
        [h["epoch"], h["train_loss"], h["val_loss"], h["val_psnr"], h["val_psnr_bicubic"], h["epoch_seconds"]]
        for h in history
    ]
    table = format_table(["epoch", "train loss", "val loss", "val PSNR", "bicubic PSNR", "seconds"], rows)
    return Summary(
        job="train-sr",
        values={
            "data": cfg.input.path or f"generated digits ({cfg.digits.n_train} train, {cfg.digits.n_val} val)",
            "model": f"channels {list(cfg.net.channels)}, residual {cfg.net.residual}, "
            f"{meta.get('param_count')} parameters",
            "degrade": _describe_degrade(cfg.degrade),
            "workers": training.describe_workers(w),
            "val PSNR (dB)": last.get("val_psnr", float("nan")),
            "bicubic PSNR (dB)": last.get("val_psnr_bicubic", float("nan")),
            "gain over bicubic (dB)": last.get("val_psnr", float("nan")) - last.get("val_psnr_bicubic", float("nan")),
            "seconds": time.perf_counter() - t0,
        },
        outputs={
            "model": cfg.output,
            "plot": posixpath.join(cfg.output, "training.png"),
            "checkpoint": checkpoint_url,
        },
        table=table,
    )


def _describe_degrade(d: SRDegradeConfig) -> str:
    return (
        f"shrink by {d.scale} and enlarge back, {d.filter} (align_corners={d.align_corners}, antialias={d.antialias})"
    )
