"""The benchmark job's config tree."""

from __future__ import annotations

import dataclasses
from typing import Literal

from restore_core.config_loader import each_in, ranged, warn_renamed
from restore_core.config_sections import DecodeConfig, FitConfig, InputConfig, NMFLearnConfig


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    input: InputConfig = dataclasses.field(default_factory=InputConfig)
    bases: str = ""
    output: str = "bench_out"
    rates: list[float] = dataclasses.field(
        default_factory=lambda: [0.3, 0.5, 0.7], metadata=each_in(0.0, 1.0, high_open=True)
    )
    methods: list[str] = dataclasses.field(default_factory=lambda: ["reference", "nmf", "biharmonic", "median"])
    k_values: list[int] = dataclasses.field(default_factory=list, metadata=each_in(1))  # PSNR-vs-k study; [] = off
    weight_histogram: bool = True
    n_images: int = ranged(16, 1)
    seed: int = ranged(0, 0)
    fit: FitConfig = dataclasses.field(default_factory=FitConfig)
    nmf: NMFLearnConfig = dataclasses.field(default_factory=NMFLearnConfig)  # for the k study
    decode: DecodeConfig = dataclasses.field(default_factory=DecodeConfig)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        if "seed" in self.methods:
            warn_renamed("methods: seed", "reference")
            object.__setattr__(self, "methods", ["reference" if m == "seed" else m for m in self.methods])
