"""The core's configuration, in one import: the sections the algorithms take and the loader.

- :mod:`restore_core.config_loader`: the strict loader (YAML, ``--set`` overrides, unknown keys,
  types and the ranges declared next to the fields, each mistake in one line).
- :mod:`restore_core.config_sections`: input, output, decode, masks, NMF, fit, SR and
  ``RestoreConfig`` (what a :class:`~restore_core.pipeline.Restorer` needs).
- :mod:`restore_core.quality_config`: flag rules and ``QualityConfig`` (what quality scoring needs).

Each job's own tree (its Ray section, training, the demo, the benchmark) lives with the job, in
``jobs/config_<job>.py``.
"""

from __future__ import annotations

from restore_core.config_loader import (
    Range,
    apply_overrides,
    check_range,
    check_ranges,
    each_in,
    field_range,
    from_dict,
    load_config,
    parse_override,
    ranged,
    to_dict,
    warn_renamed,
    yaml_load,
)
from restore_core.config_sections import (
    DecodeConfig,
    FitConfig,
    FitMethod,
    InputConfig,
    MaskConfig,
    NMFLearnConfig,
    OutputConfig,
    RestoreConfig,
    SRConfig,
    SRDegradeConfig,
)
from restore_core.errors import ConfigError
from restore_core.quality_config import (
    DEFAULT_FLAGS,
    FLAG_ALIASES,
    FlagRule,
    QualityConfig,
    QualityReportConfig,
)

__all__ = [
    "DEFAULT_FLAGS",
    "FLAG_ALIASES",
    "ConfigError",
    "DecodeConfig",
    "FitConfig",
    "FitMethod",
    "FlagRule",
    "InputConfig",
    "MaskConfig",
    "NMFLearnConfig",
    "OutputConfig",
    "QualityConfig",
    "QualityReportConfig",
    "Range",
    "RestoreConfig",
    "SRConfig",
    "SRDegradeConfig",
    "apply_overrides",
    "check_range",
    "check_ranges",
    "each_in",
    "field_range",
    "from_dict",
    "load_config",
    "parse_override",
    "ranged",
    "to_dict",
    "warn_renamed",
    "yaml_load",
]
