"""Restoration quality and speed: the default (learned refiner) against nmf, biharmonic, OpenCV
Telea, the torch fill and the write-up's method, on image sets split into train and test.

Sets (every image float32 in [0, 1]; train and test never share a source photo, seed or pixel):

- ``photo_gray``: gray 64x64 crops of scikit-image photos; train and test from different photos.
- ``photo_rgb``: RGB 64x64 crops; train and test from different photos.
- ``texture``: gray 64x64 crops of brick, grass and gravel; train from the top half of each
  photo, test from the bottom half.
- ``faces``: the project's procedural RGB faces (``demo_data.face``), 64x64, other seeds.
- ``digits``: the project's rendered digits (``imrestore_data.digits``), 32x32, disjoint indices.
- ``shapes``: procedural RGB shapes (``synth.shapes``), 64x64, other seeds.

(``lfw_subset`` and scikit-learn's sample images and digits are never used.)

The default is the refiner calibrated on each test image (``refine``: a probe with the image's own
dead mask, shifted, on its observed pixels; no clean copy); ``raw`` is the same net uncalibrated.
The refiner is trained self-supervised on the *damaged* train images only (each damaged with a
random kind of mask at 5-50 %; no clean copy is seen), one gray model per set on that set's train
split (as a user trains on their own dataset; ``--pooled``: one for all sets), colour images
channel by channel, each within a CPU-time budget. The NMF bases (gray 8x8, k = 64)
are learned from the clean train images (as ``learn-bases`` is used today). Test images are
damaged with each mask kind (scattered pixels, lines, blocks) at each rate, seeded; every
method sees the same damaged images and the true mask. PSNR (dB) and SSIM are over all pixels
against the clean image. images/s is per core (one torch / BLAS / OpenCV thread).

Usage::

    PYTHONPATH=. python benchmarks/restore_quality.py         # full run: table to stdout and docs/restore.md
    PYTHONPATH=. python benchmarks/restore_quality.py --quick # a fast check: fewer images, short training
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from benchmarks.doc_blocks import replace_block
from imrestore_data import demo_data, synth
from imrestore_data.digits import digits
from restore_core import baselines, masks, metrics, nmf, sampling
from restore_core.bases import Bases, BasesMeta
from restore_core.blend import blend_fill
from restore_core.config import FitConfig
from restore_core.device import keep_freed_memory
from restore_core.fill import harmonic_fill
from restore_core.inpaint import NMFInpainter
from restore_core.refiner import RefinerSpec, build_refiner, refine, train_refiner
from restore_core.sparse_fill import SparseSpec, sparse_specs

RGB_TRAIN = ("astronaut", "rocket", "motorcycle_left", "motorcycle_right", "immunohistochemistry", "hubble_deep_field")
RGB_TEST = ("chelsea", "coffee")
GRAY_TRAIN = ("astronaut", "rocket", "motorcycle_left", "immunohistochemistry", "moon", "page", "cell", "clock")
GRAY_TEST = ("camera", "coffee", "coins", "text")
TEXTURES = ("brick", "grass", "gravel")
KINDS = masks.DAMAGE_KINDS
Restore = Callable[[list[np.ndarray], list[np.ndarray]], list[np.ndarray]]


# ----------------------------------------------------------------------------- image sets


def _photo(name: str) -> np.ndarray:
    import skimage.data

    if name == "clock":
        return np.asarray(skimage.data.clock(), np.float32) / 255.0
    return synth.load_photo(name)


def _crops(photos: list[np.ndarray], n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random size x size crops at a random scale (0.5-1) from ``photos``."""
    from skimage.transform import rescale

    out = []
    for _ in range(n):
        p = photos[int(rng.integers(len(photos)))]
        s = max(float(rng.uniform(0.5, 1.0)), (size + 0.5) / min(p.shape[:2]))
        if abs(s - 1) > 1e-3:
            p = rescale(p, s, anti_aliasing=s < 1, channel_axis=-1 if p.ndim == 3 else None).astype(np.float32)
        y = int(rng.integers(0, p.shape[0] - size + 1))
        x = int(rng.integers(0, p.shape[1] - size + 1))
        out.append(np.clip(p[y : y + size, x : x + size], 0.0, 1.0))
    return np.stack(out).astype(np.float32)


def _gray(p: np.ndarray) -> np.ndarray:
    return metrics.luminance(p) if p.ndim == 3 else p


def image_set(name: str, split: str, n: int, seed: int) -> np.ndarray:
    """(n, H, W) gray or (n, H, W, 3) RGB float32 images of set ``name``, split train or test."""
    train = split == "train"
    rng = np.random.default_rng([seed, int(train), sum(map(ord, name))])
    if name == "photo_gray":
        photos = [_gray(_photo(p)) for p in (GRAY_TRAIN if train else GRAY_TEST)]
        return _crops(photos, n, 64, rng)
    if name == "photo_rgb":
        return _crops([_photo(p) for p in (RGB_TRAIN if train else RGB_TEST)], n, 64, rng)
    if name == "texture":
        photos = []
        for p in TEXTURES:
            img = _photo(p)
            half = img.shape[0] // 2
            photos.append(img[:half] if train else img[half:])
        return _crops(photos, n, 64, rng)
    if name == "faces":
        return np.stack([demo_data.face(64, rng) for _ in range(n)])
    if name == "digits":
        return digits(n, 32, seed=seed, start=0 if train else 1_000_000)[0]
    if name == "shapes":
        return synth.shapes(n, 64, rgb=True, seed=int(rng.integers(2**31)))
    raise ValueError(f"unknown set {name!r}")


SETS = ("photo_gray", "photo_rgb", "texture", "faces", "digits", "shapes")


# ----------------------------------------------------------------------------- methods


def _planes(images: list[np.ndarray]) -> list[np.ndarray]:
    return [im if im.ndim == 2 else im[:, :, c] for im in images for c in range(1 if im.ndim == 2 else im.shape[2])]


def torch_batched(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Restore:
    """A batched torch restorer over same-shape numpy images (H, W[, C])."""

    def run(images: list[np.ndarray], dead: list[np.ndarray]) -> list[np.ndarray]:
        x = np.stack(images)
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
        out = fn(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.stack(dead))[:, None]).numpy()
        return [o[0] if im.ndim == 2 else o.transpose(1, 2, 0) for o, im in zip(out, images, strict=True)]

    return run


def telea(images: list[np.ndarray], dead: list[np.ndarray]) -> list[np.ndarray]:
    import cv2

    out = []
    for im, d in zip(images, dead, strict=True):
        u8 = np.rint(im * 255).astype(np.uint8)
        r = cv2.inpaint(u8, d.astype(np.uint8), 3, cv2.INPAINT_TELEA).astype(np.float32) / 255.0
        r = r.reshape(im.shape)
        r[~d] = im[~d]
        out.append(r)
    return out


def per_image(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Restore:
    return lambda images, dead: [fn(im, d) for im, d in zip(images, dead, strict=True)]


def learn_bases(sets: list[str], n_per_set: int, seed: int, epochs: int, n_patches: int = 30_000) -> Bases:
    """Gray 8x8 patch bases, k = 64, learned (HALS) from clean train images of every set."""
    rng = np.random.default_rng(seed)
    planes = [p for s in sets for p in _planes(list(image_set(s, "train", n_per_set, seed)))]
    per = max(1, n_patches // len(planes))
    X = np.concatenate([sampling.sample_patches(p, 8, 1, per, rng) for p in planes])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nmf.ConvergenceWarning)
        res = nmf.learn_bases(X, 64, solver="hals", max_iter=epochs, tol=1e-5, seed=seed)
    return Bases(res.H_, BasesMeta(mode="patch", k=64, n_pixels=64, channels=1, patch_size=8))


def train_default(
    sets: list[str],
    n_per_set: int,
    spec: RefinerSpec,
    steps: int,
    budget_s: float,
    seed: int,
    threads: int,
    cache: str,
    max_wall_s: float = 0.0,
    crop: int = 32,
    lr: float = 1e-3,
    bases: Bases | None = None,
) -> tuple[torch.nn.Module, dict[str, float]]:
    """The refiner, trained self-supervised on damaged train images (cached under bench_out/)."""
    from safetensors.torch import load_file, save_file

    arch = "-".join(map(str, dataclasses.astuple(spec)))
    train = f"n{n_per_set}_s{steps}_b{int(budget_s)}_w{int(max_wall_s)}_c{crop}_lr{lr:g}"
    key = f"refiner_{'-'.join(sets)}_{train}_{arch}_seed{seed}"
    path = os.path.join(cache, key + ".safetensors")
    info_path = os.path.join(cache, key + ".json")
    if os.path.exists(path) and os.path.exists(info_path):  # trained before: weights and how
        model = build_refiner(spec)
        model.load_state_dict(load_file(path))
        with open(info_path) as f:
            return model.eval(), {k: float(v) for k, v in json.load(f).items()}
    rng = np.random.default_rng([seed, 99])
    damaged, observed = [], []
    for s in sets:
        for im in _planes(list(image_set(s, "train", n_per_set, seed))):
            if im.shape != (64, 64):  # digits are 32x32: tile 2x2 so every crop is 64x64
                im = np.tile(im, (64 // im.shape[0], 64 // im.shape[1]))
            kind = KINDS[int(rng.integers(len(KINDS)))]
            d = masks.damage_mask(im.shape, kind, float(rng.uniform(0.05, 0.5)), rng)
            damaged.append(np.where(d, 0.0, im).astype(np.float32))
            observed.append(~d)
    info = {"train images": float(len(damaged))}
    torch.set_num_threads(threads)
    t0, c0 = time.perf_counter(), time.process_time()
    log_every = max(1, steps // 20)

    def progress(step: int, loss: float) -> None:
        if step % log_every == 0:
            print(f"  train step {step}/{steps} loss {loss:.5f} {time.perf_counter() - t0:.0f}s", flush=True)

    model = train_refiner(
        np.stack(damaged),
        np.stack(observed),
        spec,
        steps=steps,
        batch_size=16,
        seed=seed,
        progress=progress,
        time_budget_s=budget_s,
        budget_clock="cpu",
        max_wall_s=max_wall_s,
        crop=crop,
        lr=lr,
        bases=bases,
    )
    info["train s"] = time.perf_counter() - t0
    info["train cpu s"] = time.process_time() - c0
    info["train steps"] = float(getattr(model, "steps_done", steps))
    os.makedirs(cache, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)  # weights are channels-last
    with open(info_path, "w") as f:
        json.dump(info, f)
    torch.set_num_threads(1)
    return model, info


def refiner_for(
    name: str,
    args: argparse.Namespace,
    spec: RefinerSpec,
    models: dict[str, tuple[torch.nn.Module, dict[str, float]]],
    bases: Bases | None = None,
) -> torch.nn.Module:
    """Set ``name``'s refiner, trained on that set's damaged train images only (as a user trains
    on their own dataset) within ``--train-budget`` CPU-seconds, when first needed; ``--pooled``:
    one refiner for all sets (the budget then covers all of them)."""
    if name not in models:
        group = list(args.sets) if args.pooled else [name]
        print(f"# the refiner for {', '.join(group)}", flush=True)
        trained = train_default(
            group,
            args.n_train,
            spec,
            args.steps,
            args.train_budget,
            args.seed,
            args.train_threads,
            args.cache,
            args.train_wall,
            args.crop,
            args.lr,
            bases,
        )
        models.update({s: trained for s in group})
    return models[name][0]


# ----------------------------------------------------------------------------- evaluation


@dataclasses.dataclass
class Row:
    set: str
    kind: str
    rate: float
    method: str
    psnr: float
    ssim: float
    ips: float
    n: int
    left_out: int = 0  # images biharmonic restored exactly, left out of the means


def evaluate(
    name: str,
    images: np.ndarray,
    kinds: tuple[str, ...],
    rates: list[float],
    methods: dict[str, Restore],
    seed: int,
    limits: dict[str, int],
) -> list[Row]:
    """Every method on every (kind, rate) cell. Images that biharmonic restores exactly (PSNR inf:
    the mask hit only flat background) are left out of every method's mean in that cell; a cell
    where all are is marked exact (PSNR inf)."""
    rows = []
    for kind in kinds:
        for rate in rates:
            rng = np.random.default_rng([seed, KINDS.index(kind), int(rate * 100), sum(map(ord, name))])
            dead = [masks.damage_mask(im.shape[:2], kind, rate, rng) for im in images]
            damaged = [
                np.where(d if im.ndim == 2 else d[..., None], 0.0, im).astype(np.float32)
                for im, d in zip(images, dead, strict=True)
            ]
            scores: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
            for method, fn in methods.items():
                n = min(len(images), limits.get(method, len(images)))
                if n == 0 or (method == "reference" and (kind, rate) != ("scattered", 0.5)):
                    continue
                if n < len(images):  # a subset: biharmonic on the same images, for the comparison
                    sub = [baselines.biharmonic(im, d) for im, d in zip(damaged[:n], dead[:n], strict=True)]
                    scores[f"biharmonic on {method}'s {n}"] = (*_scores(images[:n], sub), float("nan"))
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out = fn(damaged[:n], dead[:n])
                secs = time.perf_counter() - t0
                scores[method] = (*_scores(images[:n], out), n / secs)
            exact = np.isinf(scores["biharmonic"][0]) if "biharmonic" in scores else np.zeros(len(images), bool)
            for method, (p, ss, ips) in scores.items():
                keep = ~exact[: len(p)]
                mp = float(np.mean(p[keep])) if keep.any() else float("inf")
                ms = float(np.mean(ss[keep])) if keep.any() else 1.0
                rows.append(Row(name, kind, rate, method, mp, ms, ips, int(keep.sum()), int((~keep).sum())))
    return rows


def _scores(clean: np.ndarray, out: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-image PSNR and SSIM against the clean images."""
    p = np.array([metrics.psnr(c, o) for c, o in zip(clean, out, strict=True)], dtype=np.float64)
    s = np.array([metrics.ssim(c, o) for c, o in zip(clean, out, strict=True)], dtype=np.float64)
    return p, s


def throughput_256(methods: dict[str, Restore], n: int, seed: int) -> dict[str, float]:
    """images/s at 256x256 gray, 50 % scattered dead pixels, one thread."""
    rng = np.random.default_rng(seed)
    images = list(_crops([_gray(_photo(p)) for p in GRAY_TEST], n, 256, rng))
    dead = [masks.damage_mask((256, 256), "scattered", 0.5, rng) for _ in images]
    damaged = [np.where(d, 0.0, im).astype(np.float32) for im, d in zip(images, dead, strict=True)]
    out = {}
    for name, fn in methods.items():
        fn(damaged[:1], dead[:1])  # warm-up
        t0 = time.perf_counter()
        fn(damaged, dead)
        out[name] = n / (time.perf_counter() - t0)
    return out


def refiner_flops(model: torch.nn.Module, h: int, w: int) -> float:
    """Multiply-adds x 2 of one forward pass at h x w (convolutions only)."""
    total = 0.0

    def hook(mod: torch.nn.Module, _inp: object, out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(mod, torch.nn.Conv2d)
        k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
        total += 2.0 * k * out.numel()

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        spec = model.spec  # type: ignore[attr-defined]
        z = torch.zeros(1, spec.channels, h, w)
        model(
            z,
            torch.zeros(1, 1, h, w),
            z if spec.use_bases else None,
            z if spec.both_fills and spec.fill_order == 2 else None,
        )
    for hk in hooks:
        hk.remove()
    return total


# ----------------------------------------------------------------------------- report


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} (1 thread for restoring), no GPU; "
        f"load average {load:.1f} at the end (shared machine: other processes compete for the cores)"
    )


def _cell(r: Row) -> str:
    return "exact" if math.isinf(r.psnr) and r.psnr > 0 and r.n == 0 else f"{r.psnr:.2f} / {r.ssim:.3f}"


def table(rows: list[Row], methods: list[str]) -> list[str]:
    """One line per (set, kind, rate): PSNR / SSIM per method and the default's margin."""
    head = "| set | mask | rate | " + " | ".join(methods) + " | default - biharmonic |"
    lines = [head, "|" + "---|" * (len(methods) + 4)]
    for (s, k, rate), by in _cells(rows).items():
        vals = [_cell(by[m]) if m in by else "" for m in methods]
        d, b = by.get("default"), by.get("biharmonic")
        margin = ""
        if d and b and b.n == 0:
            margin = "exact (every method; left out of the margins)"
        elif d and b:
            margin = f"{d.psnr - b.psnr:+.2f} dB / {d.ssim - b.ssim:+.4f}"
            margin += f" ({b.n} images: {b.left_out} exact left out)" if b.left_out else ""
        lines.append(f"| {s} | {k} | {int(rate * 100)}% | " + " | ".join(vals) + f" | {margin} |")
    return lines


def _cells(rows: list[Row]) -> dict[tuple[str, str, float], dict[str, Row]]:
    cells: dict[tuple[str, str, float], dict[str, Row]] = {}
    for r in rows:
        cells.setdefault((r.set, r.kind, r.rate), {})[r.method] = r
    return cells


def margins(rows: list[Row], target: float = 1.0) -> list[str]:
    """Per set: mean / worst / best PSNR margin of the default over biharmonic (exact cells left
    out), how many cells reach ``target`` dB and 0 dB, and how many have a lower SSIM."""
    per: dict[str, list[tuple[float, float]]] = {}
    for (s, _k, _r), by in _cells(rows).items():
        d, b = by.get("default"), by.get("biharmonic")
        if d and b and b.n > 0:
            per.setdefault(s, []).append((d.psnr - b.psnr, d.ssim - b.ssim))
    lines = [
        f"| set | mean / worst / best margin (dB) | cells >= +{target:g} dB | cells >= 0 dB | SSIM lower |",
        "|---|---|---|---|---|",
    ]
    for s, m in per.items():
        dp = np.array([x[0] for x in m])
        lines.append(
            f"| {s} | {dp.mean():+.2f} / {dp.min():+.2f} / {dp.max():+.2f} | {int((dp >= target).sum())} of {len(m)} "
            f"| {int((dp >= 0).sum())} of {len(m)} | {sum(x[1] < 0 for x in m)} |"
        )
    return lines


def write_doc(path: str, block: str) -> None:
    replace_block(path, "restore_quality", block, heading="# Restoration quality")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a fast check: 3 sets, 4 test images, short training")
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    ap.add_argument("--n-test", type=int, default=12, help="test images per set")
    ap.add_argument("--n-train", type=int, default=600, help="train images per set (gray planes for RGB sets x3)")
    ap.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7])
    ap.add_argument("--steps", type=int, default=4000, help="refiner training steps at most")
    ap.add_argument(
        "--train-budget",
        type=float,
        default=1200.0,
        help="refiner training budget per set, CPU-seconds (1200 = 10 min on 2 cores)",
    )
    ap.add_argument("--pooled", action="store_true", help="one refiner for all sets (default: one per set)")
    ap.add_argument(
        "--train-wall", type=float, default=0.0, help="also stop training after this many seconds (0 = off)"
    )
    ap.add_argument(
        "--train-threads",
        type=int,
        default=1,
        help="torch threads for training (2 threads on a loaded 2-core box ran ~20x slower)",
    )
    ap.add_argument("--crop", type=int, default=32, help="side of the random training crops")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--use-bases", action="store_true", help="the refiner also gets the NMF reconstruction")
    ap.add_argument("--width", type=int, default=RefinerSpec.width)
    ap.add_argument("--levels", type=int, default=RefinerSpec.levels)
    ap.add_argument(
        "--sparse-iters",
        type=int,
        default=SparseSpec.iters,
        help="iterations of the sparse-transform fill the default blends in (0 = off)",
    )
    ap.add_argument("--nmf-images", type=int, default=6, help="test images per cell for nmf (slow)")
    ap.add_argument(
        "--reference-images", type=int, default=1, help="test images for the write-up's method (scattered 50 %% only)"
    )
    ap.add_argument("--reference-sets", nargs="+", default=["photo_gray"], help="sets the write-up's method runs on")
    ap.add_argument("--n-256", type=int, default=4, help="images for the 256x256 throughput row")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--doc", default="docs/restore.md", help="where the table goes ('' = print only)")
    ap.add_argument("--cache", default="bench_out")
    args = ap.parse_args(argv)
    if args.quick:
        args.sets = ["photo_gray", "texture", "faces"] if args.sets == list(SETS) else args.sets
        args.n_test, args.n_train, args.steps, args.train_budget = 4, 50, 100, 40.0
        args.nmf_images, args.reference_images, args.n_256, args.rates = 2, 0, 1, [0.3, 0.7]
        args.doc = ""
    torch.set_num_threads(1)
    keep_freed_memory()  # as the restore actors do
    cv_threads = None
    try:
        import cv2

        cv2.setNumThreads(1)
        cv_threads = 1
    except ImportError:
        print("# opencv-python-headless is not installed (pip install -e '.[bench]'): no telea column")

    spec = RefinerSpec(channels=1, width=args.width, levels=args.levels, use_bases=args.use_bases)
    t0 = time.perf_counter()
    models: dict[str, tuple[torch.nn.Module, dict[str, float]]] = {}
    current: dict[str, torch.nn.Module] = {}  # the set being evaluated's refiner
    shared: dict[str, Bases] = {}  # the NMF bases, when the refiner takes them (--use-bases)
    sparse = sparse_specs(args.sparse_iters)
    methods: dict[str, Restore] = {
        "default": torch_batched(lambda x, d: refine(current["model"], x, d, shared.get("bases"), sparse=sparse)),
        "raw": torch_batched(lambda x, d: refine(current["model"], x, d, shared.get("bases"), calibrate=False)),
        "fill": torch_batched(lambda x, d: harmonic_fill(x, d, order=2)),
        "biharmonic": per_image(baselines.biharmonic),
    }
    if sparse:
        methods["sparse"] = torch_batched(lambda x, d: blend_fill(x, d, sparse))
    if args.nmf_images or args.reference_images or args.use_bases:  # the bases take minutes to learn: when used
        bases = learn_bases(args.sets, 40, args.seed, 20 if args.quick else 60, 5000 if args.quick else 30_000)
        if args.use_bases:
            shared["bases"] = bases
        if args.nmf_images:
            methods["nmf"] = NMFInpainter(bases, FitConfig(method="nmf"), "cpu").restore_batch
        if args.reference_images:
            methods["reference"] = NMFInpainter(bases, FitConfig(method="reference", masked=False), "cpu").restore_batch
    if cv_threads:
        methods["telea"] = telea
    limits = {"nmf": args.nmf_images, "reference": args.reference_images}
    rows: list[Row] = []
    for s in args.sets:
        current["model"] = refiner_for(s, args, spec, models, shared.get("bases"))
        images = image_set(s, "test", args.n_test, args.seed)
        print(f"# {s}: {len(images)} test images {images.shape[1:]}", flush=True)
        lim = dict(limits, reference=limits["reference"] if s in args.reference_sets else 0)
        rows += evaluate(s, images, KINDS, args.rates, methods, args.seed, lim)
    current["model"] = models[args.sets[0]][0]  # 256x256 gray photos: the first set's refiner
    speed = throughput_256(
        {k: v for k, v in methods.items() if k in ("default", "fill", "sparse", "biharmonic", "telea")},
        args.n_256,
        args.seed,
    )
    flops = refiner_flops(current["model"], 256, 256)
    order = [m for m in ("default", "biharmonic", "telea", "fill", "sparse", "raw", "nmf", "reference") if m in methods]
    order += sorted({r.method for r in rows} - set(order))
    lines = [
        f"Machine: {machine()}.",
        f"Sizes: {args.n_test} test images a set (64x64; digits 32x32), masks {', '.join(KINDS)} at "
        f"{', '.join(f'{int(r * 100)}%' for r in args.rates)}; nmf on the first {args.nmf_images} of them, the "
        f"write-up's method on {args.reference_images} of {', '.join(args.reference_sets)} at scattered 50 % only "
        "(it runs at ~0.01 images/s).",
        "Default = learned refiner, calibrated on each image (`refine`: its own dead mask, shifted, "
        "hides known pixels; the least-squares blend of the net's correction and the harmonic fill over "
        "the biharmonic fill on them, weights clipped to [0, 1]; images under 64x64 pulled towards the "
        "batch's pooled weights"
        + (
            "; with the sparse-transform fills as more calibrated directions: "
            + ", ".join(str(dataclasses.asdict(s)) for s in sparse)
            if sparse
            else ""
        )
        + "); sparse = `fit.method: sparse`, what the default is without a refiner (no training: the "
        "harmonic and sparse-transform fills blended over the biharmonic one with weights measured the same "
        "way); raw = the same net uncalibrated. "
        f"Refiner {dataclasses.asdict(spec)}, "
        + ("one for all sets" if args.pooled else "one per set, trained on that set's train split only")
        + f", self-supervised on damaged train images (no clean copy), {args.train_threads} thread(s), "
        f"budget {args.train_budget:.0f} CPU-s{' per set' if not args.pooled else ''}: "
        + "; ".join(
            f"{s} {int(i['train images'])} gray 64x64 planes, {int(i.get('train steps', 0))} steps, "
            f"{i.get('train cpu s', float('nan')):.0f} CPU-s / {i.get('train s', float('nan')):.0f} s wall"
            for s, (_m, i) in models.items()
        )
        + (
            "; nmf bases gray 8x8 k=64 learned from clean train images"
            if "nmf" in methods or "reference" in methods
            else ""
        )
        + f". Total run {time.perf_counter() - t0:.0f} s.",
        "",
        "PSNR (dB, all pixels) / SSIM against the clean image, mean over test images:",
        "",
        *table(rows, order),
        "",
        "Margins of the default over biharmonic, per set (PSNR; SSIM lower = cells where the default's SSIM is):",
        "",
        *margins(rows),
        "",
        "images/s per core (one thread), mean over sets and cells, 64x64 (digits 32x32):",
        "",
        "| method | " + " | ".join(order) + " |",
        "|---|" + "---|" * len(order),
        "| images/s | "
        + " | ".join(
            f"{np.mean([r.ips for r in rows if r.method == m]):.1f}" if any(r.method == m for r in rows) else ""
            for m in order
        )
        + " |",
        "",
        f"256x256 gray, 50 % scattered, {args.n_256} images, one thread: "
        + ", ".join(f"{k} {v:.2f} images/s" for k, v in speed.items())
        + f". Refiner forward pass at 256x256: {flops / 1e9:.2f} GFLOP.",
    ]
    block = "\n".join(lines)
    print(block)
    if args.doc:
        write_doc(args.doc, block)
        print(f"# written to {args.doc}")


if __name__ == "__main__":
    main()
