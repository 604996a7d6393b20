"""Learn NMF bases from clean images and write the bases artifact, on Ray.

Ray Data reads the images (any fsspec URL, Parquet or a folder) and samples training rows in
parallel tasks: whole resized images (global mode) or random patches (patch mode), about
``nmf.n_samples`` in all, so a dataset larger than memory works: only the samples reach the
driver. The bases are learned once, in a GPU task when the cluster has a GPU (and ``device`` is
not ``cpu``), else in the driver. The number of samples is recorded in meta.json.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import zlib
from typing import Any

import numpy as np

from jobs import ray_utils
from jobs.common import Summary
from jobs.config_learn_bases import LearnBasesConfig
from restore_core import codec, nmf, sampling
from restore_core.bases import Bases, BasesMeta, data_fingerprint
from restore_core.codec import cell_bytes
from restore_core.config import NMFLearnConfig, check_ranges
from restore_core.device import resolve_device
from restore_core.errors import ImageDecodeError, UserError
from restore_core.io import locations
from restore_core.io.artifacts import save_bases
from restore_core.io.shards import probe_writable

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


def sample_rows(batch: dict[str, np.ndarray], cfg: LearnBasesConfig, per_image: int) -> dict[str, np.ndarray]:
    """Ray Data stage: a batch of encoded images in, training rows out (one output row a sample).

    Each image's patches come from a generator seeded by (``nmf.seed``, the image id), so the
    samples do not depend on how Ray batches the images. Undecodable images give no row.
    """
    n = cfg.nmf
    channels = 3 if n.channels == "rgb" else 1
    ids_out: list[str] = []
    pos_out: list[int] = []
    rows: list[np.ndarray] = []
    for id_, cell in zip(batch[cfg.input.id_column], batch[cfg.input.image_column], strict=True):
        try:
            img, _ = codec.decode(cell_bytes(cell), cfg.decode.max_pixels)
        except ImageDecodeError as exc:
            log.warning("skipping %s: %s", id_, exc)
            continue
        if n.mode == "global":
            X = sampling.global_row(img, n.image_size, channels)[None]
        else:
            rng = np.random.default_rng([n.seed, zlib.crc32(str(id_).encode())])
            X = sampling.sample_patches(img, n.patch_size, channels, per_image, rng)
        ids_out += [str(id_)] * X.shape[0]
        pos_out += list(range(X.shape[0]))
        rows += list(X)
    width = n.image_size**2 * channels if n.mode == "global" else n.patch_size**2 * channels
    return {
        "id": np.asarray(ids_out, dtype=object),
        "pos": np.asarray(pos_out, dtype=np.int64),
        "x": np.asarray(rows, dtype=np.float32).reshape(len(rows), width),
    }


def check_training_rows(X: np.ndarray, k: int, where: str) -> None:
    """Refuse, before training, rows that cannot give bases: fewer rows than bases, or no signal
    (every value the same: all-black or constant images, which would save k copies of nothing)."""
    if X.shape[0] < k:
        raise UserError(f"only {X.shape[0]} training rows from {where} for nmf.k={k} bases; lower nmf.k or add images")
    lo, hi = float(X.min()), float(X.max())
    if hi - lo <= 1e-6:
        raise UserError(
            f"the training images from {where} hold no signal: every sampled pixel is {hi:.3g} (all black or one "
            "flat colour?); learn bases from real, clean images"
        )


def learn(X: np.ndarray, n: NMFLearnConfig, device: str, log_epochs: bool = True) -> nmf.NMFResult:
    """Bases of ``X`` (rows) with ``n``'s settings; every 10th epoch's loss logged when ``log_epochs``."""

    def progress(it: int, loss: float) -> None:
        if it == 1 or it % 10 == 0:
            log.info("epoch %d  loss %.6g", it, loss)

    return nmf.learn_bases(
        X,
        n.k,
        l1=n.l1,
        solver=n.solver,
        max_iter=n.max_iter,
        tol=n.tol,
        batch_size=n.batch_size,
        seed=n.seed,
        device=device,
        progress=progress if log_epochs else None,
    )


def run(cfg: LearnBasesConfig) -> Summary:
    _preflight(cfg)
    t0 = time.perf_counter()
    ray_utils.init_ray(cfg.ray)
    X, n_images, used_images = _training_rows(cfg)
    t_read = time.perf_counter() - t0
    result, where = _learn_on_cluster(X, cfg)
    meta = meta_for(cfg, X, result)
    meta = dataclasses.replace(
        meta, extra={**meta.extra, "n_samples_requested": cfg.nmf.n_samples, "images": used_images, "learned_on": where}
    )
    bases = Bases(H=result.H_.astype(np.float32), meta=meta)
    save_bases(bases, cfg.output_location)
    values: dict[str, Any] = {
        "images": n_images,
        "undecodable images skipped": n_images - used_images,
        "training rows": X.shape[0],
        "bases": bases.meta.describe(),
        "final loss": bases.meta.loss,
        "epochs": result.n_iter_,
        "read + sample seconds": t_read,
        "fit seconds": result.seconds_,
        "learned on": where,
    }
    return Summary(job="learn-bases", values=values, outputs={"bases": cfg.output})


def _preflight(cfg: LearnBasesConfig) -> None:
    """Every check that needs no Ray: paths set, ranges, k against n_samples, input and output
    apart, the output writable."""
    if not cfg.input.path:
        raise UserError("input.path is empty: point it at clean images (Parquet or a folder)")
    if not cfg.output:
        raise UserError("output is empty: set it to the folder where the bases will be written")
    check_ranges(cfg)  # configs built in code skip the loader's checks: nmf.max_iter 0, k 0, ...
    if cfg.nmf.k > cfg.nmf.n_samples:
        raise UserError(
            f"nmf.k={cfg.nmf.k} is more bases than the nmf.n_samples={cfg.nmf.n_samples} training rows can give; "
            "lower nmf.k or raise nmf.n_samples"
        )
    # bases.npy and meta.json inside a folder of Parquet files are never read back as training data
    nest = cfg.input.format == "parquet"
    locations.check_apart([("input.path", cfg.input.path)], [("output", cfg.output)], output_may_nest=nest)
    probe_writable(cfg.output_location, key="output")  # before any work, not after it


def _training_rows(cfg: LearnBasesConfig) -> tuple[np.ndarray, int, int]:
    """The training rows sampled from the input with Ray Data (reproducible order), the number
    of images read and the number that gave rows."""
    input_cfg = cfg.input
    if cfg.nmf.mode == "global" and not input_cfg.limit:
        # one row an image: reading more images than samples is wasted work
        input_cfg = dataclasses.replace(input_cfg, limit=cfg.nmf.n_samples)
    ds: Any = ray_utils.read_dataset(input_cfg)  # Any: Ray's stubs reject map_batches' fn_kwargs style
    n_images = ds.count()
    if n_images == 0:
        raise UserError(f"no images in {cfg.input.path}")
    per_image = max(1, int(np.ceil(cfg.nmf.n_samples / n_images))) if cfg.nmf.mode == "patch" else 1
    samples = ds.map_batches(
        sample_rows,
        fn_kwargs={"cfg": cfg, "per_image": per_image},
        batch_size=cfg.ray.batch_size,
        batch_format="numpy",
        num_cpus=cfg.ray.num_cpus_per_actor,
    )
    ids: list[str] = []
    pos: list[np.ndarray] = []
    parts: list[np.ndarray] = []
    for batch in samples.iter_batches(batch_format="numpy", batch_size=None):
        ids += [str(i) for i in batch["id"]]
        pos.append(np.asarray(batch["pos"]))
        parts.append(np.asarray(batch["x"], dtype=np.float32))
    if not parts or sum(p.shape[0] for p in parts) == 0:
        raise UserError(
            f"no usable training rows from {cfg.input.path} (images undecodable or smaller than the patch?)"
        )
    X = np.concatenate(parts)
    # Ray returns batches in any order: sort by (image id, sample index) so the artifact is reproducible.
    order = np.lexsort((np.concatenate(pos), np.asarray(ids, dtype=object).astype(str)))
    X = X[order]
    rng = np.random.default_rng(cfg.nmf.seed)
    if X.shape[0] > cfg.nmf.n_samples:
        X = X[np.sort(rng.choice(X.shape[0], cfg.nmf.n_samples, replace=False))]
    check_training_rows(X, cfg.nmf.k, cfg.input.path)
    return X, n_images, len(set(ids))


def _learn_on_cluster(X: np.ndarray, cfg: LearnBasesConfig) -> tuple[nmf.NMFResult, str]:
    """Learn on a GPU task when the cluster has a GPU (and ``device`` allows), else in the driver;
    the result and where it ran."""
    import ray

    _, gpus = ray_utils.cluster_resources()
    if gpus >= 1 and cfg.device != "cpu":
        # One learning task on a GPU node; X travels once through the object store.
        learn_remote = ray.remote(num_gpus=1, num_cpus=1)(learn)
        return ray.get(learn_remote.remote(ray.put(X), cfg.nmf, "cuda")), "GPU task"
    if cfg.device == "cuda":
        raise UserError("device: cuda but the Ray cluster has no GPU; set device: auto or cpu")
    return learn(X, cfg.nmf, str(resolve_device(cfg.device))), f"driver ({resolve_device(cfg.device)})"
