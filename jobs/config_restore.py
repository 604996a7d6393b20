"""The restore job's config tree: the core's :class:`RestoreConfig` and how the job runs on Ray."""

from __future__ import annotations

import dataclasses

from jobs.config_ray import RayConfig
from restore_core.config_sections import RestoreConfig


@dataclasses.dataclass(frozen=True)
class RestoreJobConfig(RestoreConfig):
    """What restoring takes (:class:`~restore_core.config.RestoreConfig`) and the job's Ray settings."""

    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
