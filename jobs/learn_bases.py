"""Learn NMF bases from clean images and write the bases artifact.

Runs in-process on the local CPU/GPU (the data are sampled rows, bounded by ``nmf.n_samples``).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from jobs.common import Summary
from restore_core import codec, nmf, sampling
from restore_core.config import LearnBasesConfig
from restore_core.device import resolve_device
from restore_core.errors import ImageDecodeError, UserError
from restore_core.io import datasets
from restore_core.io.artifacts import Bases, BasesMeta, data_fingerprint, save_bases
from restore_core.pipeline import cell_bytes

CONFIG = LearnBasesConfig
log = logging.getLogger("jobs.learn_bases")


def build_rows(images: list[np.ndarray], cfg: LearnBasesConfig) -> np.ndarray:
    """Training rows from decoded images: resized whole images (global) or patches."""
    n = cfg.nmf
    channels = 3 if n.channels == "rgb" else 1
    rng = np.random.default_rng(n.seed)
    if n.mode == "global":
        rows = [sampling.global_row(img, n.image_size, channels) for img in images[: n.n_samples]]
        return np.asarray(rows, dtype=np.float32)
    per_image = max(1, int(np.ceil(n.n_samples / max(len(images), 1))))
    parts = [sampling.sample_patches(img, n.patch_size, channels, per_image, rng) for img in images]
    X = np.concatenate(parts) if parts else np.empty((0, n.patch_size**2 * channels), np.float32)
    if X.shape[0] > n.n_samples:
        X = X[rng.choice(X.shape[0], n.n_samples, replace=False)]
    return X


def meta_for(cfg: LearnBasesConfig, X: np.ndarray, result: nmf.NMFResult) -> BasesMeta:
    n = cfg.nmf
    channels = 3 if n.channels == "rgb" else 1
    return BasesMeta(
        mode=n.mode,
        k=n.k,
        n_pixels=X.shape[1],
        channels=channels,
        patch_size=n.patch_size if n.mode == "patch" else 0,
        image_shape=(n.image_size, n.image_size) if n.mode == "global" else (0, 0),
        solver=n.solver,
        l1=n.l1,
        loss=result.loss_history_[-1] if result.loss_history_ else float("nan"),
        n_samples=int(X.shape[0]),
        data_fingerprint=data_fingerprint(X),
        extra={"n_iter": result.n_iter_, "seconds": result.seconds_, "converged": result.converged_},
    )


def run(cfg: LearnBasesConfig) -> Summary:
    if not cfg.input.path:
        raise UserError("input.path is empty: point it at clean images (Parquet or a folder)")
    if not cfg.output:
        raise UserError("output is empty: set it to the folder where the bases will be written")
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    images, bad = [], 0
    limit = cfg.input.limit or (cfg.nmf.n_samples if cfg.nmf.mode == "global" else 0)
    for row in datasets.iter_rows(
        cfg.input.path, cfg.input.format, cfg.input.storage_options, cfg.input.id_column, cfg.input.image_column, limit
    ):
        try:
            img, _ = codec.decode(cell_bytes(row[cfg.input.image_column]), cfg.decode.max_pixels)
            images.append(img)
        except ImageDecodeError as exc:
            bad += 1
            log.warning("skipping %s: %s", row.get(cfg.input.id_column), exc)
    X = build_rows(images, cfg)
    if X.shape[0] < cfg.nmf.k:
        log.warning("only %d training rows for k=%d bases", X.shape[0], cfg.nmf.k)
    if X.shape[0] == 0:
        raise UserError(f"no usable training rows from {cfg.input.path} (images smaller than the patch?)")
    t_read = time.perf_counter() - t0
    n = cfg.nmf

    def progress(it: int, loss: float) -> None:
        if it == 1 or it % 10 == 0:
            log.info("epoch %d  loss %.6g", it, loss)

    result = nmf.learn_bases(
        X,
        n.k,
        l1=n.l1,
        solver=n.solver,
        max_iter=n.max_iter,
        tol=n.tol,
        batch_size=n.batch_size,
        seed=n.seed,
        device=device,
        progress=progress,
    )
    bases = Bases(H=result.H_.astype(np.float32), meta=meta_for(cfg, X, result))
    save_bases(bases, cfg.output, cfg.input.storage_options)
    return Summary(
        job="learn-bases",
        values={
            "images": len(images),
            "undecodable images skipped": bad,
            "training rows": X.shape[0],
            "bases": bases.meta.describe(),
            "final loss": bases.meta.loss,
            "epochs": result.n_iter_,
            "read seconds": t_read,
            "fit seconds": result.seconds_,
            "device": str(device),
        },
        outputs={"bases": cfg.output},
    )
