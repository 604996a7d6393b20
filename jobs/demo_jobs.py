"""The demo's data and the config of each job it runs (small settings, the local Ray)."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from imrestore_data import demo_data
from jobs.config_demo import DemoConfig
from jobs.config_learn_bases import LearnBasesConfig
from jobs.config_quality import QualityJobConfig
from jobs.config_restore import RestoreJobConfig
from jobs.config_train_inpaint import TrainInpaintConfig
from jobs.config_train_sr import TrainSRConfig
from jobs.ray_utils import init_ray
from restore_core import sr
from restore_core.config import InputConfig, NMFLearnConfig, OutputConfig, SRConfig, SRDegradeConfig, from_dict
from restore_core.io.locations import Location

#: The quality step's one fixed run date: the demo's quality folder holds one run, replaced on a rerun.
QUALITY_RUN_DATE = "2000-01-01"


def _blur(cfg: DemoConfig) -> Callable[[np.ndarray], np.ndarray]:
    """The test set's blur: the SR model's own degrade (same filter and scale as its training),
    else a bilinear shrink-and-enlarge."""
    dcfg = SRDegradeConfig(scale=cfg.data.blur_scale)

    def blur(img: np.ndarray) -> np.ndarray:
        planes = img[None] if img.ndim == 2 else np.moveaxis(img, 2, 0)  # (C, H, W)
        out = sr.degrade_np(np.ascontiguousarray(planes, np.float32), dcfg)
        return out[0] if img.ndim == 2 else np.moveaxis(out, 0, 2)

    return blur


def make_data(cfg: DemoConfig, root: str) -> None:
    """Write the clean training set and the damaged test set (with references)."""
    d = cfg.data
    train, train_kinds = demo_data.generate(d.n_train, d.size, rgb=d.rgb, seed=d.seed)
    test_clean, test_kinds = demo_data.generate(d.n_test, d.size, rgb=d.rgb, seed=d.seed + 10_000)
    rng = np.random.default_rng(d.seed + 20_000)
    blur = _blur(cfg)
    damaged = [demo_data.damage(img, d.dead_rate, rng, blur)[0] for img in test_clean]
    train_damaged = [demo_data.damage(img, d.dead_rate, rng, blur)[0] for img in train]
    demo_data.write_shards(
        demo_data.to_table([f"train-{i:05d}" for i in range(d.n_train)], train, train_kinds),
        Location(os.path.join(root, "train")),
        d.shards,
    )
    demo_data.write_shards(
        demo_data.to_table([f"train-{i:05d}" for i in range(d.n_train)], train_damaged, train_kinds),
        Location(os.path.join(root, "train_damaged")),
        d.shards,
    )
    demo_data.write_shards(
        demo_data.to_table([f"test-{i:05d}" for i in range(d.n_test)], damaged, test_kinds, test_clean),
        Location(os.path.join(root, "test")),
        d.shards,
    )
    with open(os.path.join(root, "_SUCCESS"), "w", encoding="utf-8") as f:
        json.dump(dataclasses.asdict(d), f)


def learn_bases_cfg(cfg: DemoConfig, train: str, out: str) -> LearnBasesConfig:
    n = cfg.nmf
    nmf = NMFLearnConfig(
        mode="patch", k=n.k, patch_size=n.patch_size, channels=n.channels, n_samples=n.n_samples, max_iter=n.max_iter
    )
    return LearnBasesConfig(input=InputConfig(path=train), output=out, nmf=nmf, device=cfg.device, ray=cfg.ray)


def _training_cfg(kind: type, cfg: DemoConfig, images: str, out: str, **sections: Any) -> Any:
    """A training job's config: ``images`` in, ``out`` out, the demo's Ray, and ``sections``."""
    return from_dict(kind, {"input": {"path": images}, "output": out, **sections, "ray": dataclasses.asdict(cfg.ray)})


def train_sr_cfg(cfg: DemoConfig, train: str, out: str) -> TrainSRConfig:
    """train-sr's config: the demo's images and blur, a few epochs on the local Ray."""
    s = cfg.sr
    return _training_cfg(
        TrainSRConfig,
        cfg,
        train,
        out,
        net={"channels": list(s.channels), "residual": s.residual},
        degrade={"scale": cfg.data.blur_scale},
        train={
            "epochs": s.epochs,
            "patch_size": min(s.patch_size, cfg.data.size),
            "patches_per_image": s.patches_per_image,
        },
        workers={"num_workers": s.num_workers},
    )


def train_inpaint_cfg(cfg: DemoConfig, train_damaged: str, out: str) -> TrainInpaintConfig:
    """train-inpaint's config: the damaged training images, a few epochs on the local Ray."""
    p = cfg.inpaint
    return _training_cfg(
        TrainInpaintConfig,
        cfg,
        train_damaged,
        out,
        channels="gray",
        net={"width": p.width, "levels": p.levels},
        train={
            "epochs": p.epochs,
            "patch_size": min(p.patch_size, cfg.data.size),
            "crops_per_image": p.crops_per_image,
        },
        workers={"num_workers": p.num_workers},
        checkpoints={"resume": False},  # the demo's step cache decides what is reused
    )


def restore_cfg(
    cfg: DemoConfig, test: str, out: str, method: str, bases: str, sr_model: str, refiner: str = ""
) -> RestoreJobConfig:
    fit = dataclasses.replace(RestoreJobConfig().fit, method=method)  # type: ignore[arg-type]
    sr = SRConfig(enabled=bool(sr_model), model=sr_model)
    return RestoreJobConfig(
        input=InputConfig(path=test),
        output=OutputConfig(path=out, overwrite=True),
        bases=bases if method in ("nmf", "reference") else "",
        refiner=refiner if method == "learned" else "",
        fit=fit,
        sr=sr,
        device=cfg.device,
        ray=small_pool(cfg),
    )


def small_pool(cfg: DemoConfig) -> Any:
    """Unless asked otherwise, one single-thread actor per core, at most one per shard: the
    demo's test set is a few dozen images in a few shards, and an actor's start (a process
    importing torch) is only worth it when it gets a shard of its own."""
    if cfg.ray.num_actors:
        return cfg.ray
    actors = max(1, min(cfg.data.shards, os.cpu_count() or 1))
    return dataclasses.replace(cfg.ray, num_actors=actors, num_cpus_per_actor=1.0)


def quality_cfg(cfg: DemoConfig, test: str, out: str) -> QualityJobConfig:
    return from_dict(
        QualityJobConfig,
        {
            "input": {"path": test},
            "output": out,
            "run_date": QUALITY_RUN_DATE,
            "ray": dataclasses.asdict(small_pool(cfg)),
        },
    )


def start_ray(cfg: DemoConfig) -> bool:
    """Start the embedded Ray once for every step; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if not cfg.ray.address and not cfg.ray.num_cpus and not os.environ.get("RAY_ADDRESS"):
        # Logical CPUs, not cores: train-sr runs its workers and the Ray Data actors that cut
        # training patches at the same time; with 2 logical CPUs (a 2-core laptop or CI) they
        # wait on each other for ever. Oversubscribing a small machine only slows it down.
        cfg = dataclasses.replace(cfg, ray=dataclasses.replace(cfg.ray, num_cpus=max(4, os.cpu_count() or 1)))
    init_ray(cfg.ray)
    return True
