"""The train-sr job's config tree."""

from __future__ import annotations

import dataclasses

from jobs.config_ray import TrainJobConfig
from restore_core.config_loader import each_in, ranged
from restore_core.config_sections import InputConfig, SRDegradeConfig


@dataclasses.dataclass(frozen=True)
class SRNetConfig:
    """The CNN: 3x3 conv + BatchNorm + ReLU per hidden width, then a 3x3 conv to 1 channel."""

    channels: list[int] = dataclasses.field(
        default_factory=lambda: [16, 32, 64], metadata=each_in(1, 4096)
    )  # the write-up
    residual: bool = False  # True: predict the detail added to the input; False: sigmoid output


@dataclasses.dataclass(frozen=True)
class DigitsConfig:
    """Generated digit-like images, used when ``input.path`` is empty."""

    n_train: int = ranged(60_000, 1)
    n_val: int = ranged(10_000, 1)
    size: int = ranged(28, 4, 4096)
    seed: int = ranged(0, 0)


@dataclasses.dataclass(frozen=True)
class SRTrainLoopConfig:
    epochs: int = ranged(10, 1)
    batch_size: int = ranged(64, 1)  # per worker
    lr: float = ranged(1e-3, 0.0, low_open=True)  # Adam (Chainer's default alpha)
    amp: bool = True  # float16 autocast + grad scaling on CUDA; ignored on CPU
    seed: int = ranged(0, 0)
    val_fraction: float = ranged(0.1, 0.0, 1.0, high_open=True)  # dataset input: share held out for validation PSNR
    patch_size: int = ranged(48, 4, 4096)  # dataset input: training patch side (images smaller are padded)
    patches_per_image: int = ranged(8, 1)  # dataset input
    cache_patches: bool = True  # dataset input: cut patches once, keep them in Ray's object store (spills to disk)


@dataclasses.dataclass(frozen=True)
class TrainSRConfig(TrainJobConfig):
    input: InputConfig = dataclasses.field(default_factory=InputConfig)  # path "" = generated digits
    output: str = ""  # model artifact folder (fsspec URL)
    digits: DigitsConfig = dataclasses.field(default_factory=DigitsConfig)
    net: SRNetConfig = dataclasses.field(default_factory=SRNetConfig)
    degrade: SRDegradeConfig = dataclasses.field(default_factory=SRDegradeConfig)
    train: SRTrainLoopConfig = dataclasses.field(default_factory=SRTrainLoopConfig)
