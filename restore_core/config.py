"""Typed, frozen configuration objects and a strict loader.

Every job has one dataclass tree. ``load_config`` reads YAML with a safe loader (no tags run),
applies ``--set a.b=c`` overrides, rejects unknown keys, wrong types, NaN/Inf and numbers
outside their declared range, and names the key at fault in one line
(:class:`~restore_core.errors.ConfigError`).

Every number has its range declared next to it with :func:`ranged` (in the spirit of
scikit-learn's ``_parameter_constraints``); :func:`from_dict` checks them all, in one place,
before any job starts Ray. Values users write naturally are read as they mean them: ``1e-4``
is a number (YAML 1.1 would read a string) and ``2024-06-30`` stays the text it is (YAML 1.1
would read a date).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from restore_core.errors import ConfigError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Range:
    """The closed or open interval a number (or each number of a list) must lie in."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: low itself is refused
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def __str__(self) -> str:
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        left = "(" if self.low is None or self.low_open else "["
        right = ")" if self.high is None or self.high_open else "]"
        return f"{left}{lo}, {hi}{right}"


def ranged(
    default: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Any:
    """A dataclass field holding a number that must lie in a range."""
    return dataclasses.field(default=default, metadata=each_in(low, high, low_open=low_open, high_open=high_open))


def each_in(
    low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False
) -> dict[str, Range]:
    """Field metadata: the number, or each number of a list, must lie in this range."""
    return {"range": Range(low, high, low_open, high_open)}


def field_range(field: dataclasses.Field[Any]) -> Range | None:
    """The declared range of a config field, or None."""
    rng = field.metadata.get("range")
    return rng if isinstance(rng, Range) else None


# ----------------------------------------------------------------------------- sections


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """Where images come from."""

    path: str = ""  # fsspec URL: local folder, s3://bucket/prefix, gs://..., memory://...
    format: Literal["parquet", "images"] = "parquet"
    id_column: str = "id"
    image_column: str = "image"
    reference_column: str = "reference"  # optional clean image, for full-reference metrics
    mask_column: str = "mask"  # optional PNG, non-zero = dead; wins over detection
    limit: int = ranged(0, 0)  # 0 = all rows
    storage_options: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    """Where results go."""

    path: str = ""
    overwrite: bool = False
    rows_per_shard: int = ranged(0, 0)  # 0 = one output shard per input file
    storage_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    format: Literal["parquet", "images"] = "parquet"  # images: files in the input's tree under <path>/images/
    image_format: Literal["keep", "png", "jpeg", "webp", "tiff"] = "keep"  # keep = the input's (PNG if other)
    quality: int = ranged(0, 0, 100)  # jpeg/webp 1-100; 0 = the input JPEG's own (90 if none), webp lossless


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    max_pixels: int = ranged(64_000_000, 1)  # refuse larger images (decompression bombs)


@dataclasses.dataclass(frozen=True)
class MaskConfig:
    """How dead pixels are found when no mask column is given."""

    rule: Literal["zero", "saturated", "zero_or_saturated"] = "zero"
    saturated_level: float = ranged(1.0, 0.0, 1.0, low_open=True)  # a pixel whose every channel is >= this is saturated
    ignore_zero_regions_larger_than: int = ranged(0, 0)  # 0 = off; connected dead areas larger are kept


@dataclasses.dataclass(frozen=True)
class NMFLearnConfig:
    mode: Literal["global", "patch"] = "patch"
    k: int = ranged(256, 1)  # number of bases
    patch_size: int = ranged(8, 1, 256)  # patch mode: p x p patches
    image_size: int = ranged(100, 1, 4096)  # global mode: images are resized to image_size x image_size
    channels: Literal["gray", "rgb"] = "gray"
    l1: float = ranged(0.0, 0.0)  # L1 penalty on the weights (sparsity), per image, on the 0.5*SSE scale
    solver: Literal["hals", "mu"] = "hals"
    max_iter: int = ranged(200, 1)  # epochs at most
    tol: float = ranged(1e-4, 0.0)
    batch_size: int = ranged(0, 0)  # 0 = full batch; > 0 = online mini-batch updates
    n_samples: int = ranged(20_000, 1)  # images (global) or patches (patch) sampled for training
    seed: int = ranged(0, 0)


#: ``fit.method`` values; ``seed`` is the old name of ``reference`` (accepted with a warning).
FitMethod = Literal["auto", "learned", "nmf", "reference", "seed", "fill", "biharmonic", "median", "none"]


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """How weights are fitted with the bases frozen, and how the image is filled."""

    #: Earlier key names, still accepted (a warning names the new one).
    RENAMED: ClassVar[dict[str, str]] = {"seed_lr": "reference_lr", "seed_iter": "reference_iter"}

    # auto = learned when a refiner is given, else nmf when bases are given, else fill
    method: FitMethod = "auto"  # reference = the write-up's method; seed = its old name (deprecated)
    stride: int = ranged(2, 1)  # patch mode: distance between overlapping patches
    l1: float = ranged(0.0, 0.0)
    max_iter: int = ranged(300, 1)
    tol: float = ranged(1e-3, 0.0)  # 1e-4 gains ~0.01 dB for 1.4x the time (docs/nmf.md)
    keep_observed: bool = True  # False = the write-up's full reconstruction
    masked: bool = True  # False = fit against every pixel, dead ones included (the write-up)
    prior: float = ranged(0.05, 0.0)  # weight pulling dead pixels towards the prior fill in the fit; 0 = off
    prior_fill: Literal["smooth", "biharmonic"] = "biharmonic"  # the fill the prior pulls towards (docs/nmf.md)
    min_observed_fraction: float = ranged(0.0, 0.0, 1.0)  # rows observing a smaller share, or none, are errors
    refine: int = ranged(0, 0)  # patch mode: refits with the previous result as the prior's target
    hole_prior: float = ranged(0.1, 0.0, low_open=True)  # patch mode: smooth fill's weight where patches saw little
    reference_lr: float = ranged(0.0, 0.0)  # method reference: learning rate; 0 = 1/L (the largest stable step)
    reference_iter: int = ranged(500, 1)  # method reference: gradient steps
    chunk_size: int = ranged(65_536, 1)  # patches fitted per solver call (memory bound)

    def __post_init__(self) -> None:
        if self.method == "seed":
            _warn_renamed("fit.method seed", "fit.method reference")
            object.__setattr__(self, "method", "reference")


@dataclasses.dataclass(frozen=True)
class SRConfig:
    enabled: bool = False
    model: str = ""  # folder with model.safetensors + meta.json
    scale: float = ranged(1.0, 0.0, 16.0, low_open=True)  # > 1: enlarge by this factor, then apply the CNN
    tile: int = ranged(512, 1)  # tile size for inference on large images
    tile_overlap: int = ranged(16, 0)  # pixels of context around each tile (>= the net's receptive radius: no seams)
    color: Literal["y", "per_channel"] = "y"  # RGB: CNN on luminance only, or on each channel
    amp: bool = True  # mixed precision (float16 autocast) when running on CUDA
    batch_tiles: int = ranged(16, 1)  # tiles per forward pass
    storage_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # for the model URL


@dataclasses.dataclass(frozen=True)
class RayConfig:
    address: str = ""  # "" = start Ray in-process (or join $RAY_ADDRESS); "auto" = connect to a running cluster
    num_cpus: int = ranged(0, 0)  # in-process Ray only: CPUs it may use; 0 = every core of this machine
    num_actors: int = ranged(0, 0)  # 0 = derive from the cluster's resources
    num_cpus_per_actor: float = ranged(0.5, 0.0, low_open=True)
    num_gpus_per_actor: float = ranged(0.0, 0.0)  # whole or fractional; 0 = CPU actors
    batch_size: int = ranged(16, 1)  # rows per map_batches call


@dataclasses.dataclass(frozen=True)
class LearnBasesConfig:
    input: InputConfig = dataclasses.field(default_factory=InputConfig)
    output: str = ""  # bases artifact folder (fsspec URL)
    nmf: NMFLearnConfig = dataclasses.field(default_factory=NMFLearnConfig)
    decode: DecodeConfig = dataclasses.field(default_factory=DecodeConfig)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)


@dataclasses.dataclass(frozen=True)
class RestoreConfig:
    input: InputConfig = dataclasses.field(default_factory=InputConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)
    bases: str = ""  # bases artifact folder
    refiner: str = ""  # train-inpaint artifact folder (storage options: the input's); "" = none
    fit: FitConfig = dataclasses.field(default_factory=FitConfig)
    masks: MaskConfig = dataclasses.field(default_factory=MaskConfig)
    decode: DecodeConfig = dataclasses.field(default_factory=DecodeConfig)
    sr: SRConfig = dataclasses.field(default_factory=SRConfig)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
    only_flagged: str = ""  # a quality run folder (<quality output>/run=<date>); "" = restore every row
    only_flagged_flags: list[str] = dataclasses.field(default_factory=lambda: ["dead_pixels"])  # flags to restore


@dataclasses.dataclass(frozen=True)
class SRDegradeConfig:
    """How training inputs are made: shrink by ``scale`` then enlarge back (the write-up: 28->10->28)."""

    scale: float = ranged(2.8, 1.0, 64.0, low_open=True)  # shrink factor; the small side is round(side / scale)
    filter: Literal["nearest", "bilinear", "bicubic", "area"] = "bilinear"
    align_corners: bool = True  # bilinear/bicubic grid convention (Chainer's resize_images: true)
    antialias: bool = False  # low-pass before shrinking (bilinear/bicubic only)


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
class TrainWorkersConfig:
    """Ray Train's worker group (data-parallel: each worker trains on its shard of the data)."""

    num_workers: int = ranged(2, 1)
    use_gpu: bool = False
    cpus_per_worker: float = ranged(0.5, 0.0, low_open=True)  # < 1 leaves CPUs for Ray Data's tasks on small machines
    gpus_per_worker: float = ranged(1.0, 0.0)  # with use_gpu


@dataclasses.dataclass(frozen=True)
class TrainCheckpointConfig:
    """Where Ray Train keeps the run's checkpoints (``RunConfig.storage_path``); a killed run
    resumes from the latest one when rerun with the same settings."""

    path: str = ""  # fsspec URL (s3://..., a shared folder on a cluster); "" = <output>/checkpoints
    storage_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # {} = the input's; never logged
    keep: int = ranged(2, 1)  # checkpoints kept (the latest); older ones are deleted
    resume: bool = True  # false = delete earlier checkpoints at path and start afresh


@dataclasses.dataclass(frozen=True)
class TrainSRConfig:
    input: InputConfig = dataclasses.field(default_factory=InputConfig)  # path "" = generated digits
    output: str = ""  # model artifact folder (fsspec URL)
    digits: DigitsConfig = dataclasses.field(default_factory=DigitsConfig)
    net: SRNetConfig = dataclasses.field(default_factory=SRNetConfig)
    degrade: SRDegradeConfig = dataclasses.field(default_factory=SRDegradeConfig)
    train: SRTrainLoopConfig = dataclasses.field(default_factory=SRTrainLoopConfig)
    workers: TrainWorkersConfig = dataclasses.field(default_factory=TrainWorkersConfig)
    checkpoints: TrainCheckpointConfig = dataclasses.field(default_factory=TrainCheckpointConfig)
    decode: DecodeConfig = dataclasses.field(default_factory=DecodeConfig)
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)


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
class TrainInpaintConfig:
    input: InputConfig = dataclasses.field(default_factory=InputConfig)  # the damaged dataset itself
    output: str = ""  # refiner artifact folder (fsspec URL): model.safetensors + meta.json
    bases: str = ""  # learn-bases artifact whose NMF reconstruction the refiner takes as an input; "" = none
    channels: Literal["gray", "rgb"] = "gray"  # gray: one net for every channel; rgb: colour images as such
    net: dict[str, Any] = dataclasses.field(default_factory=dict)  # RefinerSpec fields but channels; {} = defaults
    masks: MaskConfig = dataclasses.field(default_factory=MaskConfig)  # dead pixels when no mask column
    train: InpaintTrainLoopConfig = dataclasses.field(default_factory=InpaintTrainLoopConfig)
    workers: TrainWorkersConfig = dataclasses.field(default_factory=TrainWorkersConfig)
    checkpoints: TrainCheckpointConfig = dataclasses.field(default_factory=TrainCheckpointConfig)
    decode: DecodeConfig = dataclasses.field(default_factory=DecodeConfig)
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)


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
            _warn_renamed("methods: seed", "reference")
            object.__setattr__(self, "methods", ["reference" if m == "seed" else m for m in self.methods])


@dataclasses.dataclass(frozen=True)
class DemoDataConfig:
    """The demo's generated dataset: faces, textures, digits and shapes."""

    n_train: int = ranged(192, 1)  # clean images (bases and SR training; a damaged copy trains the refiner)
    n_test: int = ranged(32, 1)  # damaged images to restore (ground truth in the 'reference' column)
    size: int = ranged(64, 4, 4096)  # side of the square images
    rgb: bool = True  # RGB images; false = gray
    shards: int = ranged(4, 1)  # Parquet files per set
    dead_rate: float = ranged(0.15, 0.0, 1.0, high_open=True)  # share of test pixels set to 0 (dead)
    blur_scale: float = ranged(2.0, 1.0, 64.0)  # test blur: shrink by this factor then enlarge back (the SR degrade)
    seed: int = ranged(0, 0)


@dataclasses.dataclass(frozen=True)
class DemoNMFConfig:
    """The demo's bases (learn-bases' nmf section, smaller)."""

    k: int = ranged(64, 1)  # number of bases
    patch_size: int = ranged(8, 1, 256)  # patch side p
    channels: Literal["gray", "rgb"] = "gray"  # gray bases restore RGB images channel by channel
    n_samples: int = ranged(6000, 1)  # patches sampled for training
    max_iter: int = ranged(60, 1)  # epochs at most


@dataclasses.dataclass(frozen=True)
class DemoSRConfig:
    """The demo's brief SR training (the full settings are train-sr's)."""

    enabled: bool = True  # false = no SR model, no nmf+sr row
    epochs: int = ranged(3, 1)
    channels: list[int] = dataclasses.field(
        default_factory=lambda: [16, 32, 64], metadata=each_in(1, 4096)
    )  # CNN widths
    residual: bool = True  # predict the detail on top of the blurred input
    patch_size: int = ranged(32, 4, 4096)  # training patch side
    patches_per_image: int = ranged(8, 1)
    num_workers: int = ranged(1, 1)  # Ray Train workers (1: on a laptop a second one only adds start-up)


@dataclasses.dataclass(frozen=True)
class DemoInpaintConfig:
    """The demo's brief refiner training (train-inpaint's settings, smaller)."""

    enabled: bool = True  # false = no refiner, no learned row
    epochs: int = ranged(6, 1)
    width: int = ranged(16, 4)  # refiner width (features at full resolution)
    levels: int = ranged(2, 0, 5)  # refiner U-Net levels
    patch_size: int = ranged(32, 8, 1024)  # training crop side
    crops_per_image: int = ranged(4, 1)  # crops per image plane
    num_workers: int = ranged(1, 1)  # Ray Train workers


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    output: str = "demo_out"  # everything the demo makes: data/, bases/, sr_model/, restored/, quality/, report/
    data: DemoDataConfig = dataclasses.field(default_factory=DemoDataConfig)
    nmf: DemoNMFConfig = dataclasses.field(default_factory=DemoNMFConfig)
    sr: DemoSRConfig = dataclasses.field(default_factory=DemoSRConfig)
    inpaint: DemoInpaintConfig = dataclasses.field(default_factory=DemoInpaintConfig)
    methods: list[str] = dataclasses.field(
        default_factory=lambda: ["learned", "nmf", "biharmonic", "median"]  # fit.method
    )
    force: bool = False  # true = redo every step; false = reuse what a previous run made
    device: Literal["auto", "cpu", "cuda"] = "auto"
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)


# ----------------------------------------------------------------------------- quality


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
    thumbnail_size: int = ranged(96, 0, 4096)  # longest side of the thumbnails kept for flagged images; 0 = none
    max_duplicate_groups: int = ranged(50, 0)  # duplicate groups listed in the report


@dataclasses.dataclass(frozen=True)
class QualityConfig:
    input: InputConfig = dataclasses.field(default_factory=InputConfig)
    output: str = ""  # root folder (fsspec URL); a run goes to <output>/run=<run_date>/
    output_storage_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # never logged
    run_date: str = ""  # YYYY-MM-DD; "" = today (UTC). A rerun for the same date replaces that run
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
    fail_on: list[str] = dataclasses.field(default_factory=list)  # flags that fail the run past max_share
    warn_on: list[str] = dataclasses.field(default_factory=list)  # flags that only warn (exit 3) past max_share
    calibrate: str = ""  # a known-good run folder: print suggested thresholds from it instead of scoring
    full: bool = False  # true = score every image; false = reuse the last finished run's rows of unchanged files
    cluster_aggregation_rows: int = ranged(10**6, 0)  # rows from which the run-wide step runs on Ray (0 = always)
    local_score_max_rows: int = ranged(1000, 0)  # at most this many rows to score: in the driver, no Ray (0 = never)
    report: QualityReportConfig = dataclasses.field(default_factory=QualityReportConfig)
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)

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
            if not 0.0 <= rule.max_share <= 1.0:
                raise ConfigError(f"config key 'flags.{name}.max_share' must lie in [0, 1], got {rule.max_share}")
            merged[name] = rule
        object.__setattr__(self, "flags", merged)
        for name, rule in merged.items():
            bad = [u for u in rule.unless if u not in merged or u == name]
            if bad:
                raise ConfigError(f"config key 'flags.{name}.unless' names {bad[0]!r}, not another flag")
        for key in ("fail_on", "warn_on"):
            names = []
            for f in getattr(self, key):
                if f in FLAG_ALIASES and f not in merged:
                    _warn_alias(f"{key} {f}", FLAG_ALIASES[f])
                    f = FLAG_ALIASES[f]
                names.append(f)
            object.__setattr__(self, key, names)
            unknown = [f for f in names if f not in merged]
            if unknown:
                raise ConfigError(f"{key} names unknown flag {unknown[0]!r} (flags: {', '.join(merged)})")


def _warn_alias(key: str, new: str) -> None:
    logging.getLogger("restore_core.config").warning("%s is a deprecated flag name: use %s", key, new)


def _warn_renamed(old: str, new: str) -> None:
    logging.getLogger("restore_core.config").warning("%s is a deprecated name: use %s", old, new)


# ----------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against ``tp`` and return it (ints widen to floats, lists to lists)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return from_dict(typing.cast(type, tp), value, prefix=f"{key}.")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"config key '{key}' must be one of {_type_name(tp)}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            if arg is type(None) and value is None:
                return None
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")
    if origin in (list, Sequence):
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        (item_tp,) = get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()) and float(value).is_integer():
            value = float(value)  # "64e6" as YAML 1.1 reads it
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # 64e6, 2.0: a whole number written as a float
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            value = float(value)  # 1e-4, 1E+3: numbers in YAML 1.2, strings to a YAML 1.1 reader
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"config key '{key}' is {value}, must be a finite number")
        return float(value)
    if tp is str:
        if isinstance(value, datetime.date):
            return value.isoformat()  # a date read by a YAML 1.1 loader: the text the user wrote
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return value
    raise ConfigError(f"config key '{key}' has an unsupported type {_type_name(tp)}")


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build the dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<top>'}' must be a mapping")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(typing.cast(Any, cls))}
    data = _renamed_keys(cls, data, prefix)
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' (known keys here: {', '.join(sorted(names))})")
    fields = {f.name: f for f in dataclasses.fields(typing.cast(Any, cls))}
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
            # Start from the parent's default for this section (its default_factory may differ
            # from the section class's own defaults), then apply the given keys.
            default = _field_default(fields[name])
            section: Any = from_dict(typing.cast(type, tp), value, prefix=f"{prefix}{name}.")
            if default is not None:
                renamed: dict[str, str] = getattr(tp, "RENAMED", {})
                given = [renamed.get(str(k), str(k)) for k in value]  # renamed keys under their new names
                section = dataclasses.replace(default, **{k: getattr(section, k) for k in given})
            kwargs[name] = section
        else:
            kwargs[name] = _coerce(value, tp, prefix + name)
        check_range(fields[name], kwargs[name], prefix + name)
    return cls(**kwargs)


def _renamed_keys(cls: type, data: Mapping[str, Any], prefix: str) -> Mapping[str, Any]:
    """``data`` with the keys ``cls.RENAMED`` lists under their new names (a warning each)."""
    renamed: dict[str, str] = getattr(cls, "RENAMED", {})
    if not renamed.keys() & data.keys():
        return data
    out = dict(data)
    for old, new in renamed.items():
        if old in out:
            if new in out:
                raise ConfigError(f"config key '{prefix}{old}' is the old name of '{prefix}{new}': give one of them")
            _warn_renamed(f"config key '{prefix}{old}'", f"'{prefix}{new}'")
            out[new] = out.pop(old)
    return out


def check_range(field: dataclasses.Field[Any], value: Any, key: str) -> None:
    """A ConfigError naming ``key``, its value and its range when ``value`` (or an item of it) is outside."""
    rng = field_range(field)
    if rng is None:
        return
    items = value if isinstance(value, list) else [value]
    for i, v in enumerate(items):
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue  # the type check has spoken
        if v not in rng:
            where = f"{key}[{i}]" if isinstance(value, list) else key
            kind = "an integer" if isinstance(v, int) else "a number"
            raise ConfigError(f"config key '{where}' is {v!r}, must be {kind} in {rng}")


def check_ranges(cfg: Any, prefix: str = "") -> None:
    """Check every declared range of a config object tree (for configs built in code, not loaded)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_ranges(value, f"{prefix}{f.name}.")
        elif isinstance(value, dict):
            for k, v in value.items():
                if dataclasses.is_dataclass(v) and not isinstance(v, type):
                    check_ranges(v, f"{prefix}{f.name}.{k}.")
        else:
            check_range(f, value, prefix + f.name)


def _field_default(field: dataclasses.Field[Any]) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    if field.default is not dataclasses.MISSING:
        return field.default
    return None


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain data (for manifests); storage options are redacted."""
    out = dataclasses.asdict(cfg)
    _redact(out)
    return out


_SECRET_WORDS = ("key", "secret", "token", "password", "credential", "session")


def _redact(node: Any) -> None:
    if isinstance(node, dict):
        for k, v in list(node.items()):
            if k == "storage_options" and isinstance(v, dict):
                node[k] = {sk: "***" for sk in v}
            elif any(w in str(k).lower() for w in _SECRET_WORDS) and isinstance(v, str) and v:
                node[k] = "***"
            else:
                _redact(v)
    elif isinstance(node, list):
        for v in node:
            _redact(v)


#: YAML 1.2's float syntax: ``1e-4`` and ``1E+3`` without a dot are floats (YAML 1.1, and so
#: PyYAML, reads them as strings).
_FLOAT_RE = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no tags run) that reads what users write naturally: ``1e-4`` as a
    float, and ``2024-06-30`` as the string it is (no implicit dates or timestamps)."""


_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)$"),
    list("-+0123456789"),
)


def yaml_load(text: str) -> Any:
    """Parse config YAML safely (see :class:`_ConfigLoader`)."""
    return yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader subclass: no tags run


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=3"`` -> (["a", "b"], 3). The value is parsed as YAML (safe)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set expects key=value, got {item!r}")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item}: '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Read a YAML file (optional), apply overrides, validate into ``cls``."""
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p} (pass an existing YAML file to --config)")
        try:
            loaded = yaml_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"config file {p} is not valid YAML{where}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of keys at the top level")
        data = loaded
    data = apply_overrides(data, overrides)
    return from_dict(cls, data)
