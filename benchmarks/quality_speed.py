"""Images/s per core of the quality step against the restore step, on the same images.

Both steps run in this process on one core (torch and BLAS limited to one thread), on encoded
PNG rows exactly as a Ray actor receives them: ``restore_core.quality.QualityScorer`` (every
no-reference metric, hashes, flags, thumbnails of flagged rows) against
``restore_core.pipeline.Restorer`` (decode, dead-pixel mask, NMF patch fill, encode). Images
are photo crops from scikit-image's bundled photos with 5% random dead pixels. Prints a table
and the per-image cost the nightly-run arithmetic in docs/nightly.md uses.

Usage::

    PYTHONPATH=. python benchmarks/quality_speed.py              # 256x256 gray, 64 images
    PYTHONPATH=. python benchmarks/quality_speed.py --size 128 --n 128 --rgb
"""

# ruff: noqa: E402  (thread limits must be set before numpy/torch are imported)
from __future__ import annotations

import argparse
import os
import time
import warnings

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")  # one core, as one Ray actor of num_cpus=1 would use

import numpy as np
import torch

from imrestore_data import synth
from restore_core import codec, masks, nmf, sampling
from restore_core.bases import Bases, BasesMeta
from restore_core.config import QualityConfig, RestoreConfig, from_dict
from restore_core.pipeline import Restorer
from restore_core.quality import QualityScorer

#: Bundled photos of at least 512 pixels a side, so 256-pixel crops fit at every scale.
LARGE_PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "motorcycle_left", "brick", "grass", "gravel")


def make_rows(n: int, size: int, rgb: bool, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    imgs = synth.photo_crops(n, size, rgb=rgb, names=LARGE_PHOTOS, seed=seed)
    blobs = np.empty(n, dtype=object)
    for i, img in enumerate(imgs):
        damaged, _ = masks.apply_dead_pixels(img, 0.05, rng)
        blobs[i] = codec.encode_png(damaged)
    return {"id": np.array([f"img{i}" for i in range(n)], dtype=object), "image": blobs}


def learn_bases(k: int, patch: int) -> Bases:
    rng = np.random.default_rng(0)
    clean = synth.photo_crops(32, 64, seed=99)
    X = np.concatenate([sampling.sample_patches(im, patch, 1, 200, rng) for im in clean])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nmf.ConvergenceWarning)
        res = nmf.learn_bases(X, k, max_iter=50, seed=0)
    return Bases(res.H_, BasesMeta(mode="patch", k=k, n_pixels=patch * patch, channels=1, patch_size=patch))


def time_step(step, rows: dict[str, np.ndarray], batch: int, repeats: int) -> float:
    """Best-of-``repeats`` seconds per image over the rows, in batches of ``batch``."""
    n = len(rows["id"])
    step({k: v[:batch] for k, v in rows.items()})  # warm-up: imports, caches
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for s in range(0, n, batch):
            out = step({k: v[s : s + batch] for k, v in rows.items()})
            assert (np.asarray(out["status"]) == "ok").all(), out.get("error")
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--rgb", action="store_true")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--restore-n", type=int, default=16, help="images for the (slow) restore timing")
    ap.add_argument("--k", type=int, default=64, help="bases for the restore step")
    args = ap.parse_args()
    torch.set_num_threads(1)

    rows = make_rows(args.n, args.size, args.rgb, seed=1)
    scorer = QualityScorer(QualityConfig())
    q = time_step(scorer, rows, args.batch, args.repeats)

    bases = learn_bases(args.k, 8)
    restorer = Restorer(bases, None, from_dict(RestoreConfig, {"device": "cpu", "fit": {"method": "nmf"}}))
    few = {k: v[: args.restore_n] for k, v in rows.items()}
    r = time_step(restorer, few, min(args.batch, args.restore_n), 1)
    median = Restorer(None, None, from_dict(RestoreConfig, {"fit": {"method": "median"}}))
    m = time_step(median, few, min(args.batch, args.restore_n), 1)

    shape = f"{args.size}x{args.size}{'x3' if args.rgb else ''}"
    print(f"one core, {shape} PNG rows, 5% dead pixels, cpu={os.cpu_count()} (shared machine: see notes)")
    print(f"{'step':<34}{'ms/image':>10}{'images/s/core':>15}{'vs quality':>12}")
    for name, sec in (
        ("quality (all metrics, hashes)", q),
        (f"restore nmf (k={args.k}, 8x8 patches)", r),
        ("restore median (classical)", m),
    ):
        print(f"{name:<34}{1000 * sec:>10.2f}{1 / sec:>15.1f}{sec / q:>11.1f}x")
    per_million_core_h = q * 1e6 / 3600
    print(
        f"quality: {per_million_core_h:.1f} core-hours per 1M images; on 15 busy cores of a 16-CPU node "
        f"{per_million_core_h / 15 * 60:.0f} min"
    )


if __name__ == "__main__":
    main()
