"""The train-inpaint job's config tree."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from jobs.config_ray import TrainJobConfig
from restore_core.config_loader import ranged
from restore_core.config_sections import InputConfig, MaskConfig
from restore_core.io.locations import Location


@dataclasses.dataclass(frozen=True)
class InpaintTrainLoopConfig:
    """The refiner's self-supervised training: random crops of the (damaged) images, extra pixels
    hidden by random masks, loss on the hidden pixels that were observed."""

    epochs: int = ranged(20, 1)
    batch_size: int = ranged(32, 1)  # crops per step, per worker
    lr: float = ranged(1e-3, 0.0, 1.0, low_open=True)  # Adam step size
    patch_size: int = ranged(64, 8, 1024)  # crop side; smaller images are padded (the padding is unobserved)
    crops_per_image: int = ranged(8, 1)  # crops cut once from each image; the hidden pixels differ every step
    val_fraction: float = ranged(0.1, 0.0, 1.0, high_open=True)  # share of images (by id hash) held out; 0 = none
    ema_decay: float = ranged(0.995, 0.0, 1.0, high_open=True)  # the refiner: this moving average of the weights
    seed: int = ranged(0, 0)


@dataclasses.dataclass(frozen=True)
class TrainInpaintConfig(TrainJobConfig):
    input: InputConfig = dataclasses.field(default_factory=InputConfig)  # the damaged dataset itself
    output: str = ""  # refiner artifact folder (fsspec URL): model.safetensors + meta.json
    bases: str = ""  # learn-bases artifact whose NMF reconstruction the refiner takes as an input; "" = none
    channels: Literal["gray", "rgb"] = "gray"  # gray: one net for every channel; rgb: colour images as such
    net: dict[str, Any] = dataclasses.field(default_factory=dict)  # RefinerSpec fields but channels; {} = defaults
    masks: MaskConfig = dataclasses.field(default_factory=MaskConfig)  # dead pixels when no mask column
    train: InpaintTrainLoopConfig = dataclasses.field(default_factory=InpaintTrainLoopConfig)

    @property
    def bases_location(self) -> Location:
        """``bases``, read with the input's storage options."""
        return self.input.location.at(self.bases)
