"""The quality job's config tree: the core's :class:`QualityConfig` and how the job runs on Ray."""

from __future__ import annotations

import dataclasses

from jobs.config_ray import RayConfig
from restore_core.quality_config import QualityConfig


@dataclasses.dataclass(frozen=True)
class QualityJobConfig(QualityConfig):
    """What quality scoring takes (:class:`~restore_core.config.QualityConfig`) and the job's Ray settings."""

    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
