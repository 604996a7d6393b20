"""imrestore's Python API: restore images, score their quality, run the jobs from Python.

In a notebook or a script, without the command line::

    import imrestore

    fixed = imrestore.restore(image, bases="artifacts/bases")  # an array or a PIL image
    metrics = imrestore.score(image)  # no-reference quality metrics and the flags they raise
    summary = imrestore.run_job(imrestore.job_config("restore", "default", ["input.path=..."]))

:func:`restore` and :func:`score` run in this process (no Ray) and do what the restore and
quality jobs do to each row. :func:`run_job` runs a whole job on Ray, as ``python -m jobs`` does;
Ray is imported only then, and stays up for the next job (``ray.shutdown()`` ends it).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from jobs.config_learn_bases import LearnBasesConfig
from jobs.config_quality import QualityJobConfig
from jobs.config_ray import RayConfig
from jobs.config_restore import RestoreJobConfig
from restore_core import __version__, codec, masks, metrics, sr
from restore_core.bases import Bases
from restore_core.config import (
    FitConfig,
    InputConfig,
    MaskConfig,
    NMFLearnConfig,
    OutputConfig,
    QualityConfig,
    RestoreConfig,
    SRConfig,
    load_config,
)
from restore_core.errors import UserError
from restore_core.inpaint import NMFInpainter, restore_image
from restore_core.io import artifacts, sr_models
from restore_core.io.locations import Location
from restore_core.pipeline import finish_image
from restore_core.quality import QualityScorer, evaluate_flags

if TYPE_CHECKING:
    from jobs.common import Summary

__all__ = [
    "Bases",
    "FitConfig",
    "InputConfig",
    "LearnBasesConfig",
    "MaskConfig",
    "NMFLearnConfig",
    "OutputConfig",
    "QualityConfig",
    "QualityJobConfig",
    "RayConfig",
    "RestoreConfig",
    "RestoreJobConfig",
    "SRConfig",
    "__version__",
    "job_config",
    "load_bases",
    "load_sr_model",
    "psnr",
    "restore",
    "run_job",
    "score",
    "ssim",
    "to_array",
]

METHODS = ("nmf", "reference", "sparse", "fill", "biharmonic", "median", "none")
psnr = metrics.psnr
ssim = metrics.ssim


def load_bases(url: str, storage_options: dict[str, Any] | None = None) -> Bases:
    """The bases of a learn-bases artifact folder (any fsspec URL), loaded and validated without pickle."""
    return artifacts.load_bases(Location(url, storage_options or {}))


def load_sr_model(url: str, device: str = "cpu", storage_options: dict[str, Any] | None = None) -> sr.SRModel:
    """The SR model of a train-sr artifact folder (any fsspec URL), loaded without pickle."""
    return sr_models.load_model(Location(url, storage_options or {}), device)


def to_array(image: np.ndarray | Image.Image) -> np.ndarray:
    """An image as the restorers take it: float32 in [0, 1], (H, W) or (H, W, C).

    Parameters
    ----------
    image : np.ndarray or PIL.Image.Image
        A PIL image (any mode: channels are kept as :func:`restore_core.codec.decode` keeps
        them); or an array: uint8 (scaled by 1/255), uint16 (by 1/65535), bool, or float with
        values in [0, 1].

    Returns
    -------
    np.ndarray
        float32, (H, W) or (H, W, C), values in [0, 1].
    """
    if isinstance(image, Image.Image):
        return codec.from_pil(image)[0]
    a = np.asarray(image)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 2, 3, 4)):
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535.0
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"expected uint8, uint16, bool or float pixels, got {a.dtype}")
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise ValueError("float pixels must be finite and in [0, 1]")
    return a.astype(np.float32)


def restore(
    image: np.ndarray | Image.Image,
    bases: Bases | str | None = None,
    *,
    method: str = "nmf",
    sr_model: sr.SRModel | str | None = None,
    mask: np.ndarray | None = None,
    fit: FitConfig | None = None,
    mask_rule: MaskConfig | None = None,
    device: str = "auto",
) -> np.ndarray | Image.Image:
    """Restore one image as the restore job restores each row: fill its dead pixels, then
    (with ``sr_model``) sharpen it with the SR network.

    Parameters
    ----------
    image : np.ndarray or PIL.Image.Image
        See :func:`to_array` for the accepted arrays.
    bases : Bases or str, optional
        NMF bases (:func:`load_bases`) or the URL of a learn-bases artifact folder. Needed by
        ``method`` ``nmf`` and ``reference``.
    method : {"nmf", "reference", "sparse", "fill", "biharmonic", "median", "none"}
        How dead pixels are filled (``fit.method`` of the restore job; ``sparse`` is what the
        job's ``auto`` uses without a refiner and needs no bases).
    sr_model : SRModel or str, optional
        A model (:func:`load_sr_model`) or the URL of a train-sr artifact folder; applied after
        the fill, at the same size.
    mask : np.ndarray, optional
        (H, W) bool, True where a pixel is dead. Default: detected by ``mask_rule`` (every
        channel 0, as the restore job does).
    fit : FitConfig, optional
        Solver settings (``fit`` of configs/restore.yaml); its ``method`` is replaced by ``method``.
    mask_rule : MaskConfig, optional
        Dead-pixel detection when no ``mask`` is given.
    device : {"auto", "cpu", "cuda"}

    Returns
    -------
    np.ndarray or PIL.Image.Image
        A PIL image when given one (same channels), else a float32 array in [0, 1] of the
        input's shape.

    Examples
    --------
    >>> import numpy as np, imrestore
    >>> img = np.full((16, 16), 0.5, np.float32); img[3, 4] = 0.0  # one dead pixel
    >>> float(imrestore.restore(img, method="median")[3, 4])
    0.5
    """
    if method not in METHODS:
        raise UserError(f"method {method!r}: choose one of {', '.join(METHODS)}")
    img = to_array(image)
    rule = mask_rule or MaskConfig()
    if mask is None:
        dead = masks.detect(img, rule.rule, rule.saturated_level, rule.ignore_zero_regions_larger_than)
    else:
        dead = np.asarray(mask, dtype=bool)
        if dead.shape != img.shape[:2]:
            raise ValueError(f"mask shape {dead.shape} differs from the image's {img.shape[:2]}")
    inpainter = None
    if method in ("nmf", "reference"):
        if bases is None:
            raise UserError(f"method {method!r} needs bases: pass bases= (a learn-bases folder or Bases)")
        loaded = load_bases(bases) if isinstance(bases, str) else bases
        inpainter = NMFInpainter(loaded, fit or FitConfig(method=method), device)  # type: ignore[arg-type]
    apply = None
    if sr_model is not None:
        model = load_sr_model(sr_model) if isinstance(sr_model, str) else sr_model
        apply = sr.apply_fn(model, SRConfig(enabled=True))
    bit_depth = 16 if isinstance(image, Image.Image) and image.mode.startswith("I") else 8
    filled = restore_image(masks.colour_channels(img), dead, method, inpainter)
    keeps = method != "reference" and (fit is None or fit.keep_observed)
    # a given mask: pixels outside it come back exactly, and fills may be black (no zero lift)
    out = finish_image(filled, img, dead, method, bit_depth, apply, mask_given=mask is not None and keeps)
    if isinstance(image, Image.Image):
        return codec.to_pil(out, bit_depth)
    return out


def score(image: np.ndarray | Image.Image, cfg: QualityConfig | None = None) -> dict[str, Any]:
    """No-reference quality metrics of one image, as the quality job computes them per row.

    Parameters
    ----------
    image : np.ndarray or PIL.Image.Image
        See :func:`to_array`.
    cfg : QualityConfig, optional
        Thresholds and flag rules (configs/quality.yaml); default: the job's defaults.

    Returns
    -------
    dict
        ``dead_fraction``, ``saturated_fraction``, ``sharpness``, ``blur_width``, ``brightness``,
        ``luma_p05``, ``luma_p99``, ``dark_fraction``, ``bright_fraction``, ``contrast``,
        ``relative_contrast``, ``entropy``, ``content_entropy``, ``color_fraction`` (floats; ranges
        in :mod:`restore_core.quality`), ``sha256`` (pixel hash) and ``dhash`` (64-bit perceptual
        hash, hex), and ``flags``: the names of the per-image flags the image raises (e.g.
        ``["dead_pixels"]``); flags judged against the whole run (duplicates, odd size and aspect
        ratio) need the quality job.
    """
    qcfg = cfg or QualityConfig()
    row: dict[str, Any] = dict(QualityScorer(qcfg).score_image(to_array(image)))
    numeric = {k: np.asarray([v], dtype=np.float64) for k, v in row.items() if isinstance(v, float)}
    row["flags"] = [name for name, hit in evaluate_flags(numeric, qcfg.flags).items() if hit[0]]
    return row


def job_config(command: str, config: str | None = "default", overrides: Sequence[str] = ()) -> Any:
    """The config object of a job, as ``python -m jobs COMMAND --config CONFIG --set ...`` builds it.

    Parameters
    ----------
    command : str
        ``restore``, ``learn-bases``, ``quality``, ``train-sr``, ``benchmark`` or ``demo``.
    config : str, optional
        A YAML file, a packaged config's name (``default``: the command's own), or None for the
        dataclass defaults.
    overrides : sequence of str
        ``key.sub=value`` strings, as ``--set`` takes them.

    Returns
    -------
    The job's frozen config dataclass (e.g. :class:`RestoreJobConfig`); change it with
    ``dataclasses.replace`` or build one directly.
    """
    from jobs import cli  # here, not at the top: jobs imports ray, which restore() and score() never need

    if command not in cli.COMMANDS:
        raise UserError(f"unknown command {command!r} (one of: {', '.join(cli.COMMANDS)})")
    module = importlib.import_module(f"jobs.{cli.COMMANDS[command].module}")
    return load_config(module.CONFIG, cli.resolve_config(command, config), overrides)


def run_job(cfg: Any, *, verbose: bool = False) -> Summary:
    """Run the job that ``cfg`` configures (a :class:`RestoreJobConfig` runs the restore job...) on
    Ray: an embedded one unless ``cfg.ray.address`` or ``$RAY_ADDRESS`` names a cluster.

    Parameters
    ----------
    cfg : RestoreJobConfig, LearnBasesConfig, QualityJobConfig, TrainSRConfig, ...
        The job's config (:func:`job_config`, or built directly).
    verbose : bool
        Show Ray's own output (worker lines, Ray's info logs) as ``--verbose`` does.

    Returns
    -------
    Summary
        ``values`` (counts, timings), ``outputs`` (where the results are), ``exit_code``;
        ``print(summary.render())`` shows what the command line prints.
    """
    from jobs import cli, ray_utils  # here, not at the top: jobs imports ray

    ray_utils.set_verbose(verbose)
    for cmd in cli.COMMANDS.values():
        module = importlib.import_module(f"jobs.{cmd.module}")
        if type(cfg) is module.CONFIG:
            summary: Summary = module.run(cfg)
            return summary
    raise UserError(f"no job takes a {type(cfg).__name__}")
