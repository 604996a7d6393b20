"""Throughput of the default restore path on one device: images of 256x256 a second, stage by
stage (the biharmonic and harmonic fills, the sparse-transform fill, the refiner's forward pass,
the whole calibrated ``refine``, and ``fit.method: sparse``, the blend without a refiner), against
scikit-image's biharmonic on one CPU core.

The refiner is the one benchmarks/restore_quality.py trains for photo_gray (``--train-budget``
CPU-seconds on that set's damaged train images; cached in ``--cache``, so a run after that
benchmark reuses it). Its weights matter: the calibration decides, image by image, whether the
net's correction and each sparse fill are blended in at all, and the full-image passes run only
for the images that use them (the table's header says on how many). The images are gray 256x256
crops of scikit-image's *test* photos, by default with 50 % scattered dead pixels
(``--kind``, ``--rate``). On a GPU every
stage runs batched on the device, timed after ``torch.cuda.synchronize()``; on a CPU the same
code runs with one torch thread (per-core numbers, as in benchmarks/restore_quality.py).

Usage::

    PYTHONPATH=. python benchmarks/restore_gpu.py                  # cuda when present, else cpu
    PYTHONPATH=. python benchmarks/restore_gpu.py --batch 256 --repeats 5
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from benchmarks.restore_quality import GRAY_TEST, _crops, _gray, _photo, machine, train_default
from restore_core import baselines, masks
from restore_core.blend import blend_fill
from restore_core.device import keep_freed_memory
from restore_core.fill import both_fills
from restore_core.refiner import RefinerSpec, build_refiner, calibration, refine
from restore_core.sparse_fill import SparseSpec, hole_scale, schedule, sparse_fill, sparse_specs


def _timed(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int) -> dict[str, float]:
    """Best wall time of each of ``fns`` over ``repeats`` rounds after one warm-up, seconds. The
    rounds are interleaved (every function once a round), so a machine whose speed drifts (a
    shared one) slows them alike and the ratios between them hold."""
    best = dict.fromkeys(fns, float("inf"))
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for label, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best[label] = min(best[label], time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (cuda when present) | cpu | cuda")
    ap.add_argument("--batch", type=int, default=0, help="images a batch (0 = 256 on a GPU, 8 on a CPU)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds; each stage's best counts")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--sparse-iters", type=int, default=SparseSpec.iters)
    ap.add_argument("--kind", default="scattered", choices=masks.DAMAGE_KINDS)
    ap.add_argument("--rate", type=float, default=0.5)
    ap.add_argument(
        "--train-budget",
        type=float,
        default=600.0,
        help="CPU-seconds to train the refiner (as benchmarks/restore_quality.py; 0 = untrained)",
    )
    ap.add_argument(
        "--cache", default="bench_out", help="where trained refiners are kept (shared with restore_quality)"
    )
    ap.add_argument("--skimage-images", type=int, default=4, help="images for scikit-image's biharmonic (one core)")
    args = ap.parse_args(argv)
    name = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = torch.device("cpu" if name == "auto" else name)
    if device.type == "cpu":
        torch.set_num_threads(1)
    keep_freed_memory()  # as the restore actors do
    batch = args.batch or (256 if device.type == "cuda" else 8)
    rng = np.random.default_rng(0)
    photos = [_gray(_photo(p)) for p in GRAY_TEST]
    clean = _crops(photos, batch, args.size, rng)
    dead_np = np.stack([masks.damage_mask(im.shape, args.kind, args.rate, rng) for im in clean])
    x = torch.from_numpy(np.where(dead_np, 0.0, clean).astype(np.float32))[:, None].to(device)
    dead = torch.from_numpy(dead_np)[:, None].to(device)
    if args.train_budget > 0:  # a trained refiner: the calibration decides per image whether its net runs
        model, info = train_default(["photo_gray"], 600, RefinerSpec(), 100000, args.train_budget, 0, 1, args.cache)
        trained = f"trained on photo_gray's train split for {info['train cpu s']:.0f} CPU-s"
    else:
        model, trained = build_refiner(RefinerSpec()), "untrained (its net is never used)"
    model = model.to(device).eval()  # (train_default leaves torch at one thread)
    sparse = sparse_specs(args.sparse_iters)
    weights = calibration(model, x, dead, sparse=sparse)
    used = ", ".join(
        f"{name} on {int((weights[:, i] > 0).sum())}"
        for i, name in enumerate(
            ["the net", "the harmonic fill"] + [f"the {s.block}x{s.block} sparse fill" for s in sparse]
        )
    )
    filled = both_fills(x, dead)[1]
    stages: dict[str, Callable[[], object]] = {"fills (harmonic + biharmonic, CG)": lambda: both_fills(x, dead)}
    scales, rates = hole_scale(dead).tolist(), dead.flatten(1).float().mean(1).tolist()
    for spec in sparse:
        counts = sorted({schedule(spec, sc, r).iters for sc, r in zip(scales, rates, strict=True)})
        iters = "/".join(map(str, counts))
        label = f"sparse fill ({iters} iterations here, {spec.block}x{spec.block} blocks, step {spec.step})"
        stages[label] = lambda spec=spec: sparse_fill(x, dead, filled, spec)  # type: ignore[misc]
    stages |= {
        "refiner forward pass": lambda: model(filled, dead.to(x.dtype), None, filled),
        "default: refine, calibrated, with the sparse fills": lambda: refine(model, x, dead, sparse=sparse),
        "refine, calibrated, no sparse fill": lambda: refine(model, x, dead),
        "fit.method sparse (no refiner: the fills blended)": lambda: blend_fill(x, dead, sparse),
    }
    default_label = "default: refine, calibrated, with the sparse fills"
    print(
        f"# {machine()}; device {device}; batch {batch} gray {args.size}x{args.size}, {args.rate:.0%} {args.kind}",
        flush=True,
    )
    n = min(args.skimage_images, batch)

    def skimage_pass() -> None:
        for im, d in zip(clean[:n], dead_np[:n], strict=True):
            baselines.biharmonic(np.where(d, 0.0, im).astype(np.float32), d)

    sk_label = "scikit-image biharmonic, one CPU core"
    with torch.no_grad():  # scikit-image in the same rounds as the stages (on the CPU: nothing to sync)
        best = _timed({**stages, sk_label: skimage_pass}, device, args.repeats)
    sk = n / best.pop(sk_label)
    rows = [(label, batch / secs) for label, secs in best.items()]
    for label, ips in rows:
        print(f"  {label}: {ips:.1f} images/s", flush=True)
    default = dict(rows)[default_label]
    print()
    print(
        f"Machine: {machine()}. Device: {device}. Batch {batch} gray {args.size}x{args.size},"
        f" {args.rate:.0%} {args.kind}. Refiner {trained}; the calibration blends in {used} of the {batch}"
        " images (the full-image passes run only on those)."
    )
    print()
    print("| stage | images/s | vs scikit-image biharmonic (one core) |")
    print("|---|---|---|")
    for label, ips in rows:
        print(f"| {label} | {ips:.1f} | {ips / sk:.2f}x |")
    print(f"| {sk_label} | {sk:.2f} | 1.00x |")
    print()
    where = "target >= 1000 on one GPU" if device.type == "cuda" else "per core"
    print(f"Default path: {default:.1f} images/s ({where}).")


if __name__ == "__main__":
    main()
