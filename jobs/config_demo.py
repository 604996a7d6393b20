"""The demo's config tree: its generated data and the small settings of each step."""

from __future__ import annotations

import dataclasses
from typing import Literal

from jobs.config_ray import RayConfig
from restore_core.config_loader import each_in, ranged


@dataclasses.dataclass(frozen=True)
class DemoDataConfig:
    """The demo's generated dataset: faces, textures, digits and shapes."""

    n_train: int = ranged(192, 1)  # clean images (bases and SR training; a damaged copy trains the refiner)
    n_test: int = ranged(32, 1)  # damaged images to restore (ground truth in the 'reference' column)
    size: int = ranged(64, 4, 4096)  # side of the square images
    rgb: bool = True  # RGB images; false = gray
    shards: int = ranged(4, 1)  # Parquet files per set
    dead_rate: float = ranged(0.15, 0.0, 1.0, high_open=True)  # share of test pixels set to 0 (dead)
    blur_scale: float = ranged(2.0, 1.0, 64.0)  # test blur: shrink by this factor then enlarge back (the SR degrade)
    seed: int = ranged(0, 0)


@dataclasses.dataclass(frozen=True)
class DemoNMFConfig:
    """The demo's bases (learn-bases' nmf section, smaller)."""

    k: int = ranged(64, 1)  # number of bases
    patch_size: int = ranged(8, 1, 256)  # patch side p
    channels: Literal["gray", "rgb"] = "gray"  # gray bases restore RGB images channel by channel
    n_samples: int = ranged(6000, 1)  # patches sampled for training
    max_iter: int = ranged(60, 1)  # epochs at most


@dataclasses.dataclass(frozen=True)
class DemoSRConfig:
    """The demo's brief SR training (the full settings are train-sr's)."""

    enabled: bool = True  # false = no SR model, no nmf+sr row
    epochs: int = ranged(3, 1)
    channels: list[int] = dataclasses.field(
        default_factory=lambda: [16, 32, 64], metadata=each_in(1, 4096)
    )  # CNN widths
    residual: bool = True  # predict the detail on top of the blurred input
    patch_size: int = ranged(32, 4, 4096)  # training patch side
    patches_per_image: int = ranged(8, 1)
    num_workers: int = ranged(1, 1)  # Ray Train workers (1: on a laptop a second one only adds start-up)


@dataclasses.dataclass(frozen=True)
class DemoInpaintConfig:
    """The demo's brief refiner training (train-inpaint's settings, smaller)."""

    enabled: bool = True  # false = no refiner, no learned row
    epochs: int = ranged(6, 1)
    width: int = ranged(16, 4)  # refiner width (features at full resolution)
    levels: int = ranged(2, 0, 5)  # refiner U-Net levels
    patch_size: int = ranged(32, 8, 1024)  # training crop side
    crops_per_image: int = ranged(4, 1)  # crops per image plane
    num_workers: int = ranged(1, 1)  # Ray Train workers


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    output: str = "demo_out"  # everything the demo makes: data/, bases/, sr_model/, restored/, quality/, report/
    data: DemoDataConfig = dataclasses.field(default_factory=DemoDataConfig)
    nmf: DemoNMFConfig = dataclasses.field(default_factory=DemoNMFConfig)
    sr: DemoSRConfig = dataclasses.field(default_factory=DemoSRConfig)
    inpaint: DemoInpaintConfig = dataclasses.field(default_factory=DemoInpaintConfig)
    methods: list[str] = dataclasses.field(
        default_factory=lambda: ["learned", "sparse", "nmf", "biharmonic", "median"]  # fit.method
    )
    force: bool = False  # true = redo every step; false = reuse what a previous run made
    device: Literal["auto", "cpu", "cuda"] = "auto"
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
