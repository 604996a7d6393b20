"""The quality job's config tree: the core's :class:`QualityConfig`, the job's own keys (where its
runs go, which flags fail or warn, incremental and calibration runs, when to use Ray) and Ray."""

from __future__ import annotations

import dataclasses
from typing import Any

from jobs.config_ray import RayConfig
from restore_core.config_loader import ranged
from restore_core.io.locations import Location
from restore_core.quality_config import QualityConfig, flag_names


@dataclasses.dataclass(frozen=True)
class QualityJobConfig(QualityConfig):
    """What quality scoring takes (:class:`~restore_core.config.QualityConfig`), the job's own keys
    and its Ray settings."""

    output: str = ""  # root folder (fsspec URL); a run goes to <output>/run=<run_date>/
    output_storage_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # never logged
    run_date: str = ""  # YYYY-MM-DD; "" = today (UTC). A rerun for the same date replaces that run
    fail_on: list[str] = dataclasses.field(default_factory=list)  # flags that fail the run past max_share
    warn_on: list[str] = dataclasses.field(default_factory=list)  # flags that only warn (exit 3) past max_share
    calibrate: str = ""  # a known-good run folder: print suggested thresholds from it instead of scoring
    full: bool = False  # true = score every image; false = reuse the last finished run's rows of unchanged files
    cluster_aggregation_rows: int = ranged(10**6, 0)  # rows from which the run-wide step runs on Ray (0 = always)
    local_score_max_rows: int = ranged(1000, 0)  # at most this many rows to score: in the driver, no Ray (0 = never)
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)

    @property
    def output_location(self) -> Location:
        """``output`` with ``output_storage_options``."""
        return Location(self.output, self.output_storage_options)

    @property
    def calibrate_location(self) -> Location:
        """``calibrate``, a run folder under the output: read with ``output_storage_options``."""
        return Location(self.calibrate, self.output_storage_options)

    def __post_init__(self) -> None:
        super().__post_init__()  # merges the flags over the defaults: fail_on and warn_on name those
        for key in ("fail_on", "warn_on"):
            object.__setattr__(self, key, flag_names(key, getattr(self, key), self.flags))
