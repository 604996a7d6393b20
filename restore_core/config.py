"""Typed, frozen configuration objects and a strict loader.

Every job has one dataclass tree. ``load_config`` reads YAML with ``yaml.safe_load``,
applies ``--set a.b=c`` overrides, rejects unknown keys and wrong types, and names the
key at fault in one line (:class:`~restore_core.errors.ConfigError`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from restore_core.errors import ConfigError

T = TypeVar("T")


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
    limit: int = 0  # 0 = all rows
    storage_options: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    """Where results go."""

    path: str = ""
    overwrite: bool = False
    rows_per_shard: int = 0  # 0 = one output shard per input file
    storage_options: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    max_pixels: int = 64_000_000  # refuse larger images (decompression bombs)


@dataclasses.dataclass(frozen=True)
class MaskConfig:
    """How dead pixels are found when no mask column is given."""

    rule: Literal["zero", "saturated", "zero_or_saturated"] = "zero"
    saturated_level: float = 1.0  # a pixel whose every channel is >= this is saturated
    ignore_zero_regions_larger_than: int = 0  # 0 = off; connected dead areas larger are kept


@dataclasses.dataclass(frozen=True)
class NMFLearnConfig:
    mode: Literal["global", "patch"] = "patch"
    k: int = 256  # number of bases
    patch_size: int = 8  # patch mode: p x p patches
    image_size: int = 100  # global mode: images are resized to image_size x image_size
    channels: Literal["gray", "rgb"] = "gray"
    l1: float = 0.0  # L1 penalty on the weights (sparsity), per image, on the 0.5*SSE scale
    solver: Literal["hals", "mu"] = "hals"
    max_iter: int = 200
    tol: float = 1e-4
    batch_size: int = 0  # 0 = full batch; > 0 = online mini-batch updates
    n_samples: int = 20_000  # images (global) or patches (patch) sampled for training
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """How weights are fitted with the bases frozen, and how the image is filled."""

    # auto = learned when a refiner is given, else nmf when bases are given, else fill
    method: Literal["auto", "learned", "nmf", "seed", "fill", "biharmonic", "median", "none"] = "auto"
    stride: int = 2  # patch mode: distance between overlapping patches
    l1: float = 0.0
    max_iter: int = 300
    tol: float = 1e-3  # 1e-4 gains ~0.01 dB for 1.4x the time (docs/nmf.md)
    keep_observed: bool = True  # False = the write-up's full reconstruction
    masked: bool = True  # False = fit against every pixel, dead ones included (the write-up)
    prior: float = 0.05  # weight pulling dead pixels towards the prior fill in the fit; 0 = off
    prior_fill: Literal["smooth", "biharmonic"] = "biharmonic"  # the fill the prior pulls towards (docs/nmf.md)
    refine: int = 0  # patch mode: refits with the previous result as the prior's target
    seed_lr: float = 0.0  # method seed: learning rate; 0 = 1/L (the largest stable step)
    seed_iter: int = 500
    chunk_size: int = 65_536  # patches fitted per solver call (memory bound)


@dataclasses.dataclass(frozen=True)
class SRConfig:
    enabled: bool = False
    model: str = ""  # folder with model.safetensors + meta.json
    scale: float = 1.0  # > 1: enlarge by this factor, then apply the CNN
    tile: int = 512  # tile size for inference on large images
    tile_overlap: int = 16  # pixels of context around each tile (>= the net's receptive radius: no seams)
    color: Literal["y", "per_channel"] = "y"  # RGB: CNN on luminance only, or on each channel
    amp: bool = True  # mixed precision (float16 autocast) when running on CUDA
    batch_tiles: int = 16  # tiles per forward pass
    storage_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # for the model URL


@dataclasses.dataclass(frozen=True)
class RayConfig:
    address: str = ""  # "" = start Ray in-process (or join $RAY_ADDRESS); "auto" = connect to a running cluster
    num_cpus: int = 0  # in-process Ray only: CPUs it may use; 0 = every core of this machine
    num_actors: int = 0  # 0 = derive from the cluster's resources
    num_cpus_per_actor: float = 0.5
    num_gpus_per_actor: float = 0.0  # whole or fractional; 0 = CPU actors
    batch_size: int = 16  # rows per map_batches call


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

    scale: float = 2.8  # shrink factor; the small side is round(side / scale)
    filter: Literal["nearest", "bilinear", "bicubic", "area"] = "bilinear"
    align_corners: bool = True  # bilinear/bicubic grid convention (Chainer's resize_images: true)
    antialias: bool = False  # low-pass before shrinking (bilinear/bicubic only)


@dataclasses.dataclass(frozen=True)
class SRNetConfig:
    """The CNN: 3x3 conv + BatchNorm + ReLU per hidden width, then a 3x3 conv to 1 channel."""

    channels: list[int] = dataclasses.field(default_factory=lambda: [16, 32, 64])  # the write-up
    residual: bool = False  # True: predict the detail added to the input; False: sigmoid output


@dataclasses.dataclass(frozen=True)
class DigitsConfig:
    """Generated digit-like images, used when ``input.path`` is empty."""

    n_train: int = 60_000
    n_val: int = 10_000
    size: int = 28
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class SRTrainLoopConfig:
    epochs: int = 10
    batch_size: int = 64  # per worker
    lr: float = 1e-3  # Adam (Chainer's default alpha)
    amp: bool = True  # float16 autocast + grad scaling on CUDA; ignored on CPU
    seed: int = 0
    val_fraction: float = 0.1  # dataset input: share of images held out for validation PSNR
    patch_size: int = 48  # dataset input: training patch side (images smaller are padded)
    patches_per_image: int = 8  # dataset input
    cache_patches: bool = True  # dataset input: cut patches once, keep them in Ray's object store (spills to disk)


@dataclasses.dataclass(frozen=True)
class TrainWorkersConfig:
    """Ray Train's worker group (data-parallel: each worker trains on its shard of the data)."""

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 0.5  # < 1 leaves CPUs for Ray Data's tasks on small machines
    gpus_per_worker: float = 1.0  # with use_gpu


@dataclasses.dataclass(frozen=True)
class TrainCheckpointConfig:
    """Where Ray Train keeps the run's checkpoints (``RunConfig.storage_path``); a killed run
    resumes from the latest one when rerun with the same settings."""

    path: str = ""  # fsspec URL (s3://..., a shared folder on a cluster); "" = <output>/checkpoints
    storage_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # {} = the input's; never logged
    keep: int = 2  # checkpoints kept (the latest); older ones are deleted
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

    epochs: int = 20
    batch_size: int = 32  # crops per step, per worker
    lr: float = 1e-3  # Adam step size
    patch_size: int = 64  # crop side; smaller images are padded (the padding counts as unobserved)
    crops_per_image: int = 8  # crops cut from each training image (once; the hidden pixels differ every step)
    val_fraction: float = 0.1  # share of images (by id hash) kept for validation; 0 = none
    seed: int = 0


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
    rates: list[float] = dataclasses.field(default_factory=lambda: [0.3, 0.5, 0.7])
    methods: list[str] = dataclasses.field(default_factory=lambda: ["seed", "nmf", "biharmonic", "median"])
    k_values: list[int] = dataclasses.field(default_factory=list)  # PSNR-vs-k study; [] = off
    weight_histogram: bool = True
    n_images: int = 16
    seed: int = 0
    fit: FitConfig = dataclasses.field(default_factory=FitConfig)
    nmf: NMFLearnConfig = dataclasses.field(default_factory=NMFLearnConfig)  # for the k study
    decode: DecodeConfig = dataclasses.field(default_factory=DecodeConfig)
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclasses.dataclass(frozen=True)
class DemoDataConfig:
    """The demo's generated dataset: faces, textures, digits and shapes."""

    n_train: int = 192  # clean images (bases and SR training; a damaged copy trains the refiner)
    n_test: int = 32  # damaged images to restore (ground truth in the 'reference' column)
    size: int = 64  # side of the square images
    rgb: bool = True  # RGB images; false = gray
    shards: int = 4  # Parquet files per set
    dead_rate: float = 0.15  # share of test pixels set to 0 (dead)
    blur_scale: float = 2.0  # test blur: shrink by this factor then enlarge back (the SR degrade)
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class DemoNMFConfig:
    """The demo's bases (learn-bases' nmf section, smaller)."""

    k: int = 64  # number of bases
    patch_size: int = 8  # patch side p
    channels: Literal["gray", "rgb"] = "gray"  # gray bases restore RGB images channel by channel
    n_samples: int = 6000  # patches sampled for training
    max_iter: int = 60  # epochs at most


@dataclasses.dataclass(frozen=True)
class DemoSRConfig:
    """The demo's brief SR training (the full settings are train-sr's)."""

    enabled: bool = True  # false = no SR model, no nmf+sr row
    epochs: int = 3
    channels: list[int] = dataclasses.field(default_factory=lambda: [16, 32, 64])  # CNN widths
    residual: bool = True  # predict the detail on top of the blurred input
    patch_size: int = 32  # training patch side
    patches_per_image: int = 8
    num_workers: int = 1  # Ray Train workers (1: on a laptop a second one only adds start-up)


@dataclasses.dataclass(frozen=True)
class DemoInpaintConfig:
    """The demo's brief refiner training (train-inpaint's settings, smaller)."""

    enabled: bool = True  # false = no refiner, no learned row
    epochs: int = 6
    width: int = 16  # refiner width (features at full resolution)
    levels: int = 2  # refiner U-Net levels
    patch_size: int = 32  # training crop side
    crops_per_image: int = 4  # crops per image plane
    num_workers: int = 1  # Ray Train workers


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
    value: float = 0.0
    max_share: float = 0.0  # share of images in [0, 1] above which --fail-on fails the run
    enabled: bool = True


#: The built-in flags. A ``flags`` mapping in the config is merged over these key by key, so
#: ``--set flags.blurry.value=0.001`` changes one threshold and keeps the rest.
DEFAULT_FLAGS: dict[str, dict[str, Any]] = {
    "decode_error": {"metric": "decode_error", "op": ">", "value": 0.0, "max_share": 0.0},
    "dead_pixels": {"metric": "dead_fraction", "op": ">", "value": 0.01, "max_share": 0.01},
    "blurry": {"metric": "sharpness", "op": "<", "value": 0.0003, "max_share": 0.05},
    "saturated": {"metric": "saturated_fraction", "op": ">", "value": 0.05, "max_share": 0.05},
    "underexposed": {"metric": "dark_fraction", "op": ">", "value": 0.5, "max_share": 0.05},
    "overexposed": {"metric": "bright_fraction", "op": ">", "value": 0.5, "max_share": 0.05},
    "low_contrast": {"metric": "contrast", "op": "<", "value": 0.02, "max_share": 0.05},
    "exact_duplicate": {"metric": "exact_duplicates", "op": ">", "value": 0.0, "max_share": 0.01},
    "near_duplicate": {"metric": "near_duplicates", "op": ">", "value": 0.0, "max_share": 0.05},
}


@dataclasses.dataclass(frozen=True)
class QualityReportConfig:
    history_runs: int = 14  # flag-rate plot: this many latest runs (the current one included)
    worst_per_flag: int = 8  # images shown per flag in the report's grid
    thumbnail_size: int = 96  # longest side of the thumbnails kept for flagged images; 0 = none
    max_duplicate_groups: int = 50  # duplicate groups listed in the report


@dataclasses.dataclass(frozen=True)
class QualityConfig:
    input: InputConfig = dataclasses.field(default_factory=InputConfig)
    output: str = ""  # root folder (fsspec URL); a run goes to <output>/run=<run_date>/
    output_storage_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # never logged
    run_date: str = ""  # YYYY-MM-DD; "" = today (UTC). A rerun for the same date replaces that run
    masks: MaskConfig = dataclasses.field(default_factory=MaskConfig)  # dead-pixel detection
    decode: DecodeConfig = dataclasses.field(default_factory=DecodeConfig)
    dark_level: float = 0.05  # exposure: luminance <= this counts as near black
    bright_level: float = 0.95  # exposure: luminance >= this counts as near white
    near_duplicate_distance: int = 4  # dHash Hamming distance (of 64 bits) for near duplicates
    flags: dict[str, FlagRule] = dataclasses.field(default_factory=dict)  # merged over DEFAULT_FLAGS
    fail_on: list[str] = dataclasses.field(default_factory=list)  # flags that fail the run past max_share
    report: QualityReportConfig = dataclasses.field(default_factory=QualityReportConfig)
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        # The loader hands the flags over as plain mappings: merge them over the defaults and
        # validate each rule, naming the key at fault.
        given = dict(self.flags or {})
        merged: dict[str, FlagRule] = {}
        for name in [*DEFAULT_FLAGS, *(k for k in given if k not in DEFAULT_FLAGS)]:
            base = dict(DEFAULT_FLAGS.get(name, {}))
            value: Any = given.get(name, {})
            if isinstance(value, FlagRule):
                value = dataclasses.asdict(value)
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key 'flags.{name}' must be a mapping, got {value!r}")
            rule = from_dict(FlagRule, {**base, **value}, prefix=f"flags.{name}.")
            if not rule.metric:
                raise ConfigError(f"config key 'flags.{name}.metric' is missing: name a metric column")
            if not 0.0 <= rule.max_share <= 1.0:
                raise ConfigError(f"config key 'flags.{name}.max_share' must lie in [0, 1], got {rule.max_share}")
            merged[name] = rule
        object.__setattr__(self, "flags", merged)
        unknown = [f for f in self.fail_on if f not in merged]
        if unknown:
            raise ConfigError(f"fail_on names unknown flag {unknown[0]!r} (flags: {', '.join(merged)})")


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
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
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
                section = dataclasses.replace(default, **{k: getattr(section, k) for k in value})
            kwargs[name] = section
        else:
            kwargs[name] = _coerce(value, tp, prefix + name)
    return cls(**kwargs)


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


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=3"`` -> (["a", "b"], 3). The value is parsed as YAML (safe)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set expects key=value, got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
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
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
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
