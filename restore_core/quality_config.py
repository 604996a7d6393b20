"""The quality scoring's config: per-image flag rules, their defaults, and ``QualityConfig``.

``QualityConfig`` is what :mod:`restore_core.quality` and the report take; the quality job's
tree (``jobs/config_quality.py``) adds the job's own keys (where runs go, which flags fail a
run, when to use Ray) and its Ray section.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any, Literal

from restore_core.config_loader import from_dict, ranged
from restore_core.config_sections import DecodeConfig, InputConfig, MaskConfig
from restore_core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class FlagRule:
    """A per-image flag: an image carries it when ``<metric> <op> <value>`` holds (NaN never does).

    With ``--fail-on <flag>`` the run exits non-zero when more than ``max_share`` of the images
    carry the flag.
    """

    metric: str = ""  # a metric column of the quality shards (restore_core.quality.FLAG_METRICS)
    op: Literal[">", ">=", "<", "<="] = ">"
    value: float = ranged(0.0)  # any finite number
    max_share: float = ranged(0.0, 0.0, 1.0)  # share of images in [0, 1] above which --fail-on fails the run
    enabled: bool = True
    unless: list[str] = dataclasses.field(default_factory=list)  # not raised on images carrying these flags
    also: FlagRule | None = None  # a second condition (metric/op/value): the flag is raised when either holds
    require: FlagRule | None = None  # a condition (metric/op/value) that must hold too: the flag needs both

    def conditions(self) -> list[FlagRule]:
        """This rule's condition and its ``also`` condition, if any (the flag is their OR)."""
        return [self] if self.also is None else [self, *self.also.conditions()]

    def requirements(self) -> list[FlagRule]:
        """The conditions ANDed with this one: its ``require`` chain (not its ``also``)."""
        return [] if self.require is None else [self.require, *self.require.requirements()]

    def all_conditions(self) -> list[FlagRule]:
        """Every condition the rule reads, ``also`` and ``require`` ones included."""
        return [c for one in self.conditions() for c in (one, *one.requirements())]

    def describe(self) -> str:
        """The rule as people read it, e.g. ``blur_width > 1 and blur_deviation > 3 or detail_ratio < 0.95``."""
        return " or ".join(
            " and ".join(f"{c.metric} {c.op} {c.value:g}" for c in (one, *one.requirements()))
            for one in self.conditions()
        )


#: The built-in flags, named as cleanvision names its issue types where they match (dark, light,
#: blurry, low_information, grayscale, odd_aspect_ratio, odd_size, exact_duplicates,
#: near_duplicates), plus dead_pixels, saturated and decode_error. A ``flags`` mapping in the
#: config is merged over these key by key, so ``--set flags.blurry.value=1.2`` changes one
#: threshold and keeps the rest. Thresholds were chosen on the TUNE split of
#: benchmarks/quality_detection.py; see docs/nightly.md for what each metric means.
DEFAULT_FLAGS: dict[str, dict[str, Any]] = {
    "decode_error": {"metric": "decode_error", "op": ">", "value": 0.0, "max_share": 0.0},
    "dead_pixels": {"metric": "dead_fraction", "op": ">", "value": 0.0005, "max_share": 0.01},
    # Exposure first: crushed or washed-out contrast leaves too few levels to judge edges by.
    # Wide edges alone are not enough: photos soft by nature (fundus, a shallow depth of field)
    # have them too. Wide edges count when they are also far wider than the run's typical ones, or
    # when the pixel noise is gone as well (a blur removes it; a soft photo keeps its grain).
    "blurry": {
        "metric": "blur_width",
        "op": ">",
        "value": 1.0,
        "max_share": 0.05,
        "require": {"metric": "blur_deviation", "op": ">", "value": 2.0},
        "also": {
            "metric": "blur_width",
            "op": ">",
            "value": 1.0,
            "require": {"metric": "noise_level", "op": "<", "value": 0.22},
            "also": {"metric": "detail_ratio", "op": "<", "value": 0.95},  # against a reference, when given
        },
        "unless": ["dark", "light", "low_information"],
    },
    "saturated": {"metric": "saturated_fraction", "op": ">", "value": 0.1, "max_share": 0.05},
    # A frame with (almost) nothing in it is low_information; exposure, colour and likeness to other
    # images are judged on images with content.
    "dark": {"metric": "luma_p99", "op": "<", "value": 0.32, "max_share": 0.05, "unless": ["low_information"]},
    "light": {"metric": "luma_p05", "op": ">", "value": 0.6, "max_share": 0.05, "unless": ["low_information"]},
    "low_information": {"metric": "relative_contrast", "op": "<", "value": 0.06, "max_share": 0.05},
    "grayscale": {
        "metric": "color_fraction",
        "op": "<",
        "value": 0.01,
        "max_share": 0.05,
        "unless": ["low_information"],
    },
    "odd_size": {"metric": "size_deviation", "op": ">", "value": 3.0, "max_share": 0.05},
    "odd_aspect_ratio": {"metric": "aspect_deviation", "op": ">", "value": 3.0, "max_share": 0.05},
    "exact_duplicates": {"metric": "exact_duplicates", "op": ">", "value": 0.0, "max_share": 0.01},
    "near_duplicates": {
        "metric": "near_duplicates",
        "op": ">",
        "value": 0.0,
        "max_share": 0.05,
        "unless": ["low_information"],
    },
}

#: Earlier flag names, still accepted in configs and --fail-on (a warning names the new one).
FLAG_ALIASES: dict[str, str] = {
    "underexposed": "dark",
    "overexposed": "light",
    "low_contrast": "low_information",
    "exact_duplicate": "exact_duplicates",
    "near_duplicate": "near_duplicates",
}


@dataclasses.dataclass(frozen=True)
class QualityReportConfig:
    history_runs: int = ranged(14, 1)  # flag-rate plot: this many latest runs (the current one included)
    worst_per_flag: int = ranged(8, 0)  # images shown per flag in the report's grid
    thumbnail_size: int = ranged(96, 0, 4096)  # longest side of the thumbnails (JPEG) kept for flagged images; 0 = none
    max_duplicate_groups: int = ranged(50, 0)  # duplicate groups listed in the report


@dataclasses.dataclass(frozen=True)
class QualityConfig:
    input: InputConfig = dataclasses.field(default_factory=InputConfig)
    masks: MaskConfig = dataclasses.field(default_factory=MaskConfig)  # dead-pixel candidates
    dead_rule: Literal["isolated", "all"] = "isolated"  # isolated: only candidates amid live neighbours are dead
    dead_min_contrast: float = ranged(0.06, 0.0, 1.0)  # isolated: least gap to the live neighbours' median
    decode: DecodeConfig = dataclasses.field(default_factory=DecodeConfig)
    working_size: int = ranged(128, 16)  # shorter side of the working copy the resolution-free scores use
    dark_level: float = ranged(0.05, 0.0, 1.0)  # exposure: luminance <= this counts as near black
    bright_level: float = ranged(0.95, 0.0, 1.0)  # exposure: luminance >= this counts as near white
    near_duplicate_distance: int = ranged(4, 0, 64)  # pHash Hamming distance (of 64 bits) for near duplicates
    near_duplicate_min_bits: int = ranged(8, 0, 32)  # hashes with fewer ones (or zeros) are too plain to compare
    odd_spread_floor: float = ranged(0.08, 0.0, low_open=True)  # odd size/aspect: least spread (log units)
    blur_spread_floor: float = ranged(0.15, 0.0, low_open=True)  # blur_deviation: least spread (log units)
    flags: dict[str, FlagRule] = dataclasses.field(default_factory=dict)  # merged over DEFAULT_FLAGS
    report: QualityReportConfig = dataclasses.field(default_factory=QualityReportConfig)

    def __post_init__(self) -> None:
        # The loader hands the flags over as plain mappings: merge them over the defaults and
        # validate each rule, naming the key at fault.
        given: dict[str, Any] = {}
        for name, entry in dict(self.flags or {}).items():
            new = FLAG_ALIASES.get(name, name)
            if new != name:
                if new in (self.flags or {}):
                    raise ConfigError(f"config key 'flags.{name}' is the old name of 'flags.{new}': give one of them")
                _warn_alias(f"flags.{name}", new)
            given[new] = entry
        merged: dict[str, FlagRule] = {}
        for name in [*DEFAULT_FLAGS, *(k for k in given if k not in DEFAULT_FLAGS)]:
            base = dict(DEFAULT_FLAGS.get(name, {}))
            value: Any = given.get(name, {})
            if isinstance(value, FlagRule):
                value = dataclasses.asdict(value)
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key 'flags.{name}' must be a mapping, got {value!r}")
            both = {**base, **value}
            for sub in ("also", "require"):
                if isinstance(base.get(sub), Mapping) and isinstance(value.get(sub), Mapping):
                    both[sub] = {**base[sub], **value[sub]}  # merged key by key, like the rule
            rule = from_dict(FlagRule, both, prefix=f"flags.{name}.")
            if not all(c.metric for c in rule.all_conditions()):
                raise ConfigError(f"config key 'flags.{name}.metric' is missing: name a metric column")
            merged[name] = rule
        object.__setattr__(self, "flags", merged)
        for name, rule in merged.items():
            bad = [u for u in rule.unless if u not in merged or u == name]
            if bad:
                raise ConfigError(f"config key 'flags.{name}.unless' names {bad[0]!r}, not another flag")


def flag_names(key: str, names: list[str], flags: Mapping[str, FlagRule]) -> list[str]:
    """``names`` (the flags a config key such as ``fail_on`` lists) with old names replaced by
    their new ones; a :class:`ConfigError` naming ``key`` when one is not among ``flags``."""
    out = []
    for f in names:
        if f in FLAG_ALIASES and f not in flags:
            _warn_alias(f"{key} {f}", FLAG_ALIASES[f])
            f = FLAG_ALIASES[f]
        out.append(f)
    unknown = [f for f in out if f not in flags]
    if unknown:
        raise ConfigError(f"{key} names unknown flag {unknown[0]!r} (flags: {', '.join(flags)})")
    return out


def _warn_alias(key: str, new: str) -> None:
    logging.getLogger("restore_core.config").warning("%s is a deprecated flag name: use %s", key, new)
