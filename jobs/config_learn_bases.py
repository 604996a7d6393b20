"""The learn-bases job's config tree."""

from __future__ import annotations

import dataclasses
from typing import Literal

from jobs.config_ray import RayConfig
from restore_core.config_sections import DecodeConfig, InputConfig, NMFLearnConfig
from restore_core.io.locations import Location


@dataclasses.dataclass(frozen=True)
class LearnBasesConfig:
    input: InputConfig = dataclasses.field(default_factory=InputConfig)
    output: str = ""  # bases artifact folder (fsspec URL)
    nmf: NMFLearnConfig = dataclasses.field(default_factory=NMFLearnConfig)
    decode: DecodeConfig = dataclasses.field(default_factory=DecodeConfig)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)

    @property
    def output_location(self) -> Location:
        """``output``, written with the input's storage options."""
        return self.input.location.at(self.output)
