"""The restore job's config tree: the core's :class:`RestoreConfig`, the artifacts and the quality
run the job loads for it (the refiner, the flagged rows), and how the job runs on Ray."""

from __future__ import annotations

import dataclasses

from jobs.config_ray import RayConfig
from restore_core.config_sections import RestoreConfig
from restore_core.io.locations import Location


@dataclasses.dataclass(frozen=True)
class RestoreJobConfig(RestoreConfig):
    """What restoring takes (:class:`~restore_core.config.RestoreConfig`), what the job loads for it
    (a :class:`~restore_core.pipeline.Restorer` gets the refiner and the flagged ids as arguments)
    and the job's Ray settings."""

    refiner: str = ""  # train-inpaint artifact folder (storage options: the input's); "" = none
    only_flagged: str = ""  # a quality run folder (<quality output>/run=<date>); "" = restore every row
    only_flagged_flags: list[str] = dataclasses.field(default_factory=lambda: ["dead_pixels"])  # flags to restore
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)

    # The refiner and the quality run are read with the input's storage options.
    @property
    def refiner_location(self) -> Location:
        return self.input.location.at(self.refiner)

    @property
    def only_flagged_location(self) -> Location:
        return self.input.location.at(self.only_flagged)
