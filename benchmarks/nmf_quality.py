"""Restoration quality of NMF patch inpainting against the write-up's method and baselines.

Clean images are crops of scikit-image's bundled photos (``imrestore_data.synth.photo_crops``;
``lfw_subset`` is never used). Patch bases are learned here from crops of other seeds, the
test crops are damaged with random dead pixels at each rate (seeded), and every method
restores them. Prints one table: PSNR over all pixels, over dead pixels only, SSIM, images/s.

Usage::

    python benchmarks/nmf_quality.py                      # the defaults of FitConfig
    python benchmarks/nmf_quality.py --prior-fill smooth --refine 0 --prior 0.05
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
import warnings

import numpy as np
import torch

from imrestore_data import synth
from restore_core import masks, metrics, nmf, sampling
from restore_core.bases import Bases, BasesMeta
from restore_core.config import FitConfig
from restore_core.inpaint import NMFInpainter, restore_image


def learn_patch_bases(p: int, k: int, n_patches: int, l1: float, max_iter: int, seed: int) -> Bases:
    """Gray p x p patch bases learned (HALS) from photo crops that are not test images.

    Cached under ``bench_out/`` (git-ignored) so that sweeps over fit settings learn once.
    """
    cache = os.path.join("bench_out", f"nmf_quality_bases_p{p}_k{k}_n{n_patches}_l1{l1:g}_it{max_iter}_s{seed}.npy")
    if os.path.exists(cache):
        H = np.load(cache, allow_pickle=False)
        return Bases(H, BasesMeta(mode="patch", k=k, n_pixels=p * p, channels=1, patch_size=p))
    train = synth.photo_crops(200, 96, seed=seed + 7)
    rng = np.random.default_rng(seed)
    per = max(1, n_patches // len(train))
    X = np.concatenate([sampling.sample_patches(im, p, 1, per, rng) for im in train])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nmf.ConvergenceWarning)
        res = nmf.learn_bases(X, k, l1=l1, solver="hals", max_iter=max_iter, tol=1e-5, seed=seed)
    os.makedirs("bench_out", exist_ok=True)
    np.save(cache, res.H_)
    return Bases(res.H_, BasesMeta(mode="patch", k=k, n_pixels=p * p, channels=1, patch_size=p))


def evaluate(
    images: np.ndarray, rates: list[float], methods: dict[str, NMFInpainter | None], seed: int
) -> list[list[object]]:
    """Rows (method, rate, PSNR all, PSNR dead, SSIM, images/s), means over images."""
    rows: list[list[object]] = []
    for rate in rates:
        rng = np.random.default_rng(seed + int(rate * 1000))
        pairs = [masks.apply_dead_pixels(im, rate, rng) for im in images]
        for name, inp in methods.items():
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", nmf.ConvergenceWarning)
                if inp is not None:
                    out = inp.restore_batch([d for d, _ in pairs], [m for _, m in pairs])
                else:
                    out = [restore_image(d, m, name) for d, m in pairs]
            secs = time.perf_counter() - t0
            p_all = np.mean([metrics.psnr(c, r) for c, r in zip(images, out, strict=True)])
            p_dead = np.mean([metrics.psnr(c, r, m) for c, r, (_, m) in zip(images, out, pairs, strict=True)])
            s = np.mean([metrics.ssim(c, r) for c, r in zip(images, out, strict=True)])
            rows.append([name, rate, float(p_all), float(p_dead), float(s), len(images) / secs])
    return rows


def main(argv: list[str] | None = None) -> None:
    d = FitConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-images", type=int, default=12)
    ap.add_argument("--size", type=int, default=64, help="side of the gray test crops")
    ap.add_argument("--rates", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--learn-l1", type=float, default=0.0)
    ap.add_argument("--learn-iter", type=int, default=100)
    ap.add_argument("--n-patches", type=int, default=20_000)
    ap.add_argument("--stride", type=int, default=d.stride)
    ap.add_argument("--l1", type=float, default=d.l1)
    ap.add_argument("--prior", type=float, default=d.prior)
    ap.add_argument("--prior-fill", default=d.prior_fill, choices=["smooth", "biharmonic"])
    ap.add_argument("--refine", type=int, default=d.refine)
    ap.add_argument("--max-iter", type=int, default=d.max_iter)
    ap.add_argument("--tol", type=float, default=d.tol)
    ap.add_argument("--methods", nargs="+", default=["nmf", "reference", "biharmonic", "median"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids oversubscription on a shared box)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    bases = learn_patch_bases(args.patch, args.k, args.n_patches, args.learn_l1, args.learn_iter, args.seed)
    learn_s = time.perf_counter() - t0
    fit = dataclasses.replace(
        d,
        stride=args.stride,
        l1=args.l1,
        prior=args.prior,
        prior_fill=args.prior_fill,
        refine=args.refine,
        max_iter=args.max_iter,
        tol=args.tol,
    )
    methods: dict[str, NMFInpainter | None] = {}
    for m in args.methods:
        if m == "nmf":
            methods[m] = NMFInpainter(bases, fit, "cpu")
        elif m == "reference":
            # The write-up's method: unmasked plain gradient descent, full reconstruction.
            methods[m] = NMFInpainter(bases, dataclasses.replace(fit, method="reference", masked=False), "cpu")
        else:
            methods[m] = None
    images = synth.photo_crops(args.n_images, args.size, seed=args.seed + 1000)
    rows = evaluate(images, args.rates, methods, args.seed)
    print(
        f"# {args.n_images} gray {args.size}x{args.size} photo crops; bases {args.patch}x{args.patch} k={args.k} "
        f"(learned in {learn_s:.0f}s); fit stride={fit.stride} l1={fit.l1} prior={fit.prior} "
        f"prior_fill={fit.prior_fill} refine={fit.refine}"
    )
    print(f"{'method':<11}{'rate':>5}{'PSNR':>8}{'dead':>8}{'SSIM':>8}{'img/s':>9}")
    for name, rate, pa, pd, s, ips in rows:
        print(f"{name:<11}{rate:>5.1f}{pa:>8.2f}{pd:>8.2f}{s:>8.4f}{ips:>9.2f}")


if __name__ == "__main__":
    main()
