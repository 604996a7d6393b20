"""The core's config sections: the parameters the algorithms and the storage layer take.

Each section is a strict frozen dataclass whose numbers carry their declared range
(:func:`~restore_core.config_loader.ranged`); :mod:`restore_core.config_loader` reads and checks
them. ``RestoreConfig`` is what a :class:`~restore_core.pipeline.Restorer` needs; the restore
job's tree (``jobs/config_restore.py``) extends it with its Ray section.

A path and the storage options it is opened with are separate YAML keys; each section gives
them together as a :class:`~restore_core.io.locations.Location` property (``input.location``,
``output.location``, ``sr.model_location``, ``bases_location``...). Properties are not fields:
``to_dict`` and the resume fingerprints see the YAML keys only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

from restore_core.config_loader import ranged, warn_renamed
from restore_core.io.locations import Location


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

    @property
    def location(self) -> Location:
        """``path`` with ``storage_options``."""
        return Location(self.path, self.storage_options)


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

    @property
    def location(self) -> Location:
        """``path`` with ``storage_options``."""
        return Location(self.path, self.storage_options)


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
FitMethod = Literal["auto", "learned", "sparse", "nmf", "reference", "seed", "fill", "biharmonic", "median", "none"]


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """How weights are fitted with the bases frozen, and how the image is filled."""

    #: Earlier key names, still accepted (a warning names the new one).
    RENAMED: ClassVar[dict[str, str]] = {"seed_lr": "reference_lr", "seed_iter": "reference_iter"}

    # auto = learned when a refiner is given, else sparse (no training: fills blended per image)
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
    sparse_iters: int = ranged(50, 0)  # learned, sparse: sparse-transform fill iterations blended in; 0 = off

    def __post_init__(self) -> None:
        if self.method == "seed":
            warn_renamed("fit.method seed", "fit.method reference")
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

    @property
    def model_location(self) -> Location:
        """``model`` with ``storage_options``."""
        return Location(self.model, self.storage_options)


@dataclasses.dataclass(frozen=True)
class RestoreConfig:
    """What restoring a dataset takes (the restore job's tree, ``jobs/config_restore.py``, adds the
    refiner artifact, the quality run that picks the rows, and Ray)."""

    input: InputConfig = dataclasses.field(default_factory=InputConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)
    bases: str = ""  # bases artifact folder
    fit: FitConfig = dataclasses.field(default_factory=FitConfig)
    masks: MaskConfig = dataclasses.field(default_factory=MaskConfig)
    decode: DecodeConfig = dataclasses.field(default_factory=DecodeConfig)
    sr: SRConfig = dataclasses.field(default_factory=SRConfig)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    # The artifacts are read with the input's storage options.
    @property
    def bases_location(self) -> Location:
        return self.input.location.at(self.bases)


@dataclasses.dataclass(frozen=True)
class SRDegradeConfig:
    """How training inputs are made: shrink by ``scale`` then enlarge back (the write-up: 28->10->28)."""

    scale: float = ranged(2.8, 1.0, 64.0, low_open=True)  # shrink factor; the small side is round(side / scale)
    filter: Literal["nearest", "bilinear", "bicubic", "area"] = "bilinear"
    align_corners: bool = True  # bilinear/bicubic grid convention (Chainer's resize_images: true)
    antialias: bool = False  # low-pass before shrinking (bilinear/bicubic only)
