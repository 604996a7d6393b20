"""imrestore (the Python API): restore and score in process, without Ray; job configs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import imrestore
from imrestore_data import synth
from restore_core import masks, metrics, sr
from restore_core.config import SRDegradeConfig
from restore_core.errors import UserError
from restore_core.io import sr_models


def _damaged(rgb: bool = False) -> tuple[np.ndarray, np.ndarray]:
    clean = synth.shapes(1, 32, seed=3)[0] * 0.8 + 0.1  # no truly black pixel
    if rgb:
        clean = np.stack([clean, clean[::-1], clean.T], axis=2)
    damaged, _ = masks.apply_dead_pixels(clean, 0.2, np.random.default_rng(0))
    return clean.astype(np.float32), damaged.astype(np.float32)


def test_restore_array_with_bases_fills_dead_pixels(bases):
    clean, damaged = _damaged()
    fixed = imrestore.restore(damaged, bases)
    assert isinstance(fixed, np.ndarray) and fixed.dtype == np.float32 and fixed.shape == clean.shape
    assert metrics.psnr(clean, fixed) > metrics.psnr(clean, damaged) + 10
    assert not masks.detect(fixed, "zero").any()
    same = imrestore.restore((damaged * 255).round().astype(np.uint8), bases)  # uint8 in: same result
    assert metrics.psnr(fixed, same) > 40


def test_restore_pil_image_gives_a_pil_image_back():
    clean, damaged = _damaged(rgb=True)
    pil = Image.fromarray((damaged * 255).round().astype(np.uint8))
    out = imrestore.restore(pil, method="biharmonic")
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == pil.size
    fixed = np.asarray(out, dtype=np.float32) / 255
    assert metrics.psnr(clean, fixed) > metrics.psnr(clean, damaged) + 10


def test_restore_with_given_mask_and_sr_model():
    clean, damaged = _damaged()
    mask = np.zeros(clean.shape, bool)
    mask[5, 5] = True  # only this pixel is called dead: the other zeros stay
    kept = imrestore.restore(damaged, method="median", mask=mask)
    changed = np.argwhere(kept != damaged)
    assert all(tuple(p) == (5, 5) for p in changed)
    model = sr_models.model_from_artifact(
        sr_models.model_artifact(sr.SRNet(channels=(4,), residual=False), SRDegradeConfig())
    )
    sharpened = imrestore.restore(damaged, method="median", sr_model=model)
    plain = imrestore.restore(damaged, method="median")
    assert sharpened.shape == plain.shape and np.isfinite(sharpened).all()
    assert not np.allclose(sharpened, plain)  # the net ran


def test_restore_refuses_what_cannot_work(bases):
    _, damaged = _damaged()
    with pytest.raises(UserError, match="needs bases"):
        imrestore.restore(damaged)
    with pytest.raises(UserError, match="choose one of"):
        imrestore.restore(damaged, bases, method="magic")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        imrestore.restore(damaged * 3, bases)


def test_score_flags_dead_pixels():
    clean, damaged = _damaged()
    bad, good = imrestore.score(damaged), imrestore.score(clean)
    assert bad["dead_fraction"] == pytest.approx(0.2, abs=0.03) and "dead_pixels" in bad["flags"]
    assert good["dead_fraction"] == 0 and "dead_pixels" not in good["flags"]


def test_restore_and_score_never_import_ray():
    code = (
        "import sys, numpy as np, imrestore\n"
        "img = np.full((8, 8), 0.5, np.float32); img[2, 2] = 0\n"
        "imrestore.restore(img, method='median'); imrestore.score(img)\n"
        "assert 'ray' not in sys.modules, 'imrestore imported ray'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=300)
    assert out.returncode == 0, out.stderr


def test_job_config_like_the_command_line():
    cfg = imrestore.job_config("restore", "default", ["fit.method=median"])
    assert isinstance(cfg, imrestore.RestoreConfig)
    assert cfg.bases == "" and cfg.fit.method == "median"
    with pytest.raises(UserError, match="unknown command"):
        imrestore.job_config("restor")
    with pytest.raises(UserError, match="no job takes"):
        imrestore.run_job(imrestore.FitConfig())


def test_restore_with_the_no_training_method_needs_no_bases():
    clean, damaged = _damaged(rgb=True)
    fixed = imrestore.restore(damaged, method="sparse")
    assert fixed.shape == clean.shape and fixed.dtype == np.float32
    bih = imrestore.restore(damaged, method="biharmonic")
    assert metrics.psnr(clean, fixed) > metrics.psnr(clean, bih)  # shapes: the sparse fill's strength
