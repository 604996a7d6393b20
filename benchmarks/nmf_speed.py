"""Speed of the NMF core against the write-up's loop and scikit-learn, on one machine, one run.

Prints one table:

- global mode (the write-up's setting: 100x100 gray, k = 1000, a batch of damaged images):
  images/s of ``fit_weights`` (masked FISTA, our ``nmf``) against the write-up's ``reference`` loop (timed on a
  few images and extrapolated per image) and against scikit-learn's
  ``non_negative_factorization(update_H=False)`` (what ``NMF.transform`` runs) with the same
  bases on the unmasked objective it supports, our solver run to an equal or better objective;
- the share of the GEMM peak that ``fit_weights`` reaches: torch.matmul of the same shapes is
  timed in the same run, and the solver's flops are counted as two GEMMs an iteration;
- patch mode on 256x256 RGB images (gray 8x8 bases applied per channel, the default);
- ``learn_bases`` against scikit-learn ``NMF.fit``: time to reach scikit-learn's final loss.

Defaults finish in a few minutes on a 2-core CPU; ``--full`` runs the issue's exact scale
(a batch of 256, learning on 3000 x 10000 with k = 1000), which takes much longer on a CPU.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from imrestore_data import synth
from restore_core import masks, nmf, sampling
from restore_core.bases import Bases, BasesMeta
from restore_core.config import FitConfig
from restore_core.inpaint import NMFInpainter

warnings.simplefilter("ignore", nmf.ConvergenceWarning)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """Best wall time of ``repeat`` runs (the machine may be shared), and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def gemm_gflops(shapes: list[tuple[int, int, int]], device: torch.device, repeat: int = 3) -> float:
    """GFLOP/s of torch.matmul on the given (m, k, n) products, timed back to back."""
    mats = [(torch.rand(m, k, device=device), torch.rand(k, n, device=device)) for m, k, n in shapes]
    flops = sum(2.0 * m * k * n for m, k, n in shapes)

    def run() -> None:
        for a, b in mats:
            torch.matmul(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()

    run()
    secs, _ = timed(run, repeat)
    return flops / secs / 1e9


def sklearn_transform(X: np.ndarray, H: np.ndarray, tol: float, max_iter: int) -> np.ndarray:
    from sklearn.decomposition import non_negative_factorization

    W, _, _ = non_negative_factorization(
        X.astype(np.float32),
        H=H.astype(np.float32),
        n_components=H.shape[0],
        update_H=False,
        solver="cd",
        tol=tol,
        max_iter=max_iter,
    )
    return W


def ours_to_match(X: np.ndarray, H: np.ndarray, target: float, device: torch.device) -> tuple[float, float, int]:
    """Unmasked fit_weights with the fewest iterations whose objective is <= ``target``.

    Returns (seconds, objective, iterations). The Gram H H^T is computed inside the timed call.
    """
    return iters_to_match(
        lambda n_it: nmf.fit_weights(X, H, tol=0.0, max_iter=n_it, device=device),
        lambda W: nmf.objective(X, W, H),
        target,
    )


def iters_to_match(
    fit: Callable[[int], Any], obj: Callable[[Any], float], target: float, start: int = 2
) -> tuple[float, float, int]:
    """Fewest iterations at which ``obj(fit(n))`` <= ``target``: doubling from ``start`` to
    bracket it, then bisection down to 1/16 of the count. Returns (seconds, objective, n)."""

    def trial(n_it: int) -> tuple[float, float]:
        secs, W = timed(functools.partial(fit, n_it))
        return secs, obj(W)

    def ok(val: float) -> bool:
        return val <= target * (1 + 1e-7)

    lo, hi = 0, start
    best = trial(hi)
    while not ok(best[1]) and hi < 1 << 14:
        lo, hi = hi, hi * 2
        best = trial(hi)
    while hi - lo > max(1, hi // 16):
        mid = (lo + hi) // 2
        res = trial(mid)
        if ok(res[1]):
            hi, best = mid, res
        else:
            lo = mid
    return best[0], best[1], hi


def make_global_bases(side: int, k: int, n: int, epochs: int, seed: int) -> np.ndarray:
    X = synth.photo_crops(n, side, seed=seed + 11).reshape(n, -1)
    return nmf.learn_bases(X, k, solver="hals", max_iter=epochs, tol=0, seed=seed).H_


def global_section(args: argparse.Namespace, dev: torch.device, rows: list[list[str]], H: np.ndarray) -> None:
    side, B = args.side, args.batch
    k = H.shape[0]
    n = side * side
    clean = synth.photo_crops(B, side, seed=args.seed + 1000)
    rng = np.random.default_rng(args.seed)
    pairs = [masks.apply_dead_pixels(im, args.rate, rng) for im in clean]
    X = np.stack([d.reshape(-1) for d, _ in pairs])
    M = np.stack([(~m).reshape(-1) for _, m in pairs]).astype(np.float32)
    scale = f"global {side}x{side}, k={k}, batch {B}, {args.rate:.0%} dead"

    # Ours, masked (what restoring does).
    info: dict[str, float] = {}
    secs, W = timed(lambda: nmf.fit_weights(X, H, M, tol=args.tol, max_iter=args.max_iter, device=dev, info=info))
    iters = info["n_iter"]
    obj_ours = nmf.objective(X, W, H, M)
    flops = iters * 2 * (2.0 * B * k * n)  # two GEMMs an iteration
    peak = gemm_gflops([(B, k, n), (B, n, k)], dev)
    rate_ours = flops / secs / 1e9
    ips_ours = B / secs
    rows.append(
        [
            scale,
            "nmf fit_weights (masked FISTA)",
            f"{ips_ours:.2f}",
            f"{obj_ours:.3f}",
            f"{iters:.0f} it, tol {args.tol:g}",
        ]
    )
    rows.append(
        [scale, "GEMM peak, same shapes", "", "", f"{rate_ours:.1f} of {peak:.1f} GFLOP/s = {rate_ours / peak:.0%}"]
    )

    # The write-up's loop, a few images, extrapolated.
    ns = min(args.reference_images, B)
    s_secs, Ws = timed(lambda: nmf.fit_weights_reference(X[:ns], H, n_iter=args.reference_iter, device=dev))
    ips_ref = ns / s_secs
    obj_ref = nmf.objective(X[:ns], Ws, H, M[:ns])
    obj_ours_ns = nmf.objective(X[:ns], W[:ns], H, M[:ns])
    rows.append(
        [
            scale,
            f"reference loop ({args.reference_iter} GD steps, {ns} images, per image)",
            f"{ips_ref:.4f}",
            f"{obj_ref:.3f}",
            f"nmf as restoring runs it: {ips_ours / ips_ref:.0f}x faster, obj {obj_ours_ns:.3f} on the same {ns}",
        ]
    )
    # Equal objective, on the objective restoring minimises (observed pixels only): our solver
    # runs on the whole batch, its iterations doubled until its objective on the reference's images
    # is no worse than the reference's. (On the unmasked objective the reference, which never projects
    # onto W >= 0, can end below any non-negative solution, so no equal point exists there.)
    e_secs, e_obj, e_it = iters_to_match(
        lambda n_it: nmf.fit_weights(X, H, M, tol=0.0, max_iter=n_it, device=dev),
        lambda Wm: nmf.objective(X[:ns], Wm[:ns], H, M[:ns]),
        obj_ref,
        start=1,
    )
    rows.append(
        [
            scale,
            "nmf fit_weights to the reference's objective (masked)",
            f"{B / e_secs:.2f}",
            f"{e_obj:.3f}",
            f"{e_it} it; {B / e_secs / ips_ref:.0f}x the reference loop at equal objective",
        ]
    )

    # scikit-learn on the objective it supports (unmasked: dead pixels count as zeros).
    sk_secs, Wsk = timed(lambda: sklearn_transform(X, H, 1e-4, 200))
    obj_sk = nmf.objective(X, Wsk, H)
    o_secs, obj_o, it_o = ours_to_match(X, H, obj_sk, dev)
    G = torch.from_numpy(H) @ torch.from_numpy(H).T
    g_secs, _ = timed(lambda: nmf.fit_weights(X, H, tol=0.0, max_iter=it_o, device=dev, gram=G))
    rows.append([scale, "sklearn transform (cd, unmasked)", f"{B / sk_secs:.2f}", f"{obj_sk:.3f}", "tol 1e-4"])
    rows.append(
        [
            scale,
            "nmf fit_weights (unmasked, Gram per call)",
            f"{B / o_secs:.2f}",
            f"{obj_o:.3f}",
            f"{it_o} it; {sk_secs / o_secs:.1f}x sklearn",
        ]
    )
    rows.append(
        [
            scale,
            "nmf fit_weights (unmasked, Gram cached)",
            f"{B / g_secs:.2f}",
            f"{obj_o:.3f}",
            f"{sk_secs / g_secs:.1f}x sklearn (bases fixed across batches)",
        ]
    )


def patch_section(args: argparse.Namespace, dev: torch.device, rows: list[list[str]]) -> None:
    fit = FitConfig()
    p, k = args.patch, args.patch_k
    train = synth.photo_crops(100, 96, seed=args.seed + 7)
    rng = np.random.default_rng(args.seed)
    Xtr = np.concatenate([sampling.sample_patches(im, p, 1, 100, rng) for im in train])
    H = nmf.learn_bases(Xtr, k, max_iter=50, seed=args.seed).H_
    bases = Bases(H, BasesMeta(mode="patch", k=k, n_pixels=p * p, channels=1, patch_size=p))
    imgs = synth.photo_crops(args.patch_images, args.patch_side, rgb=True, seed=args.seed + 2000)
    pairs = [masks.apply_dead_pixels(im, args.rate, rng) for im in imgs]
    s = args.patch_side
    scale = f"patch {s}x{s} RGB, {p}x{p} gray bases k={k}, stride {fit.stride}, {args.rate:.0%} dead"
    inp = NMFInpainter(bases, fit, str(dev))
    secs, _ = timed(lambda: inp.restore_batch([d for d, _ in pairs], [m for _, m in pairs]))
    n_img = len(pairs)
    rows.append(
        [scale, "nmf restore_batch end to end (per image)", f"{n_img / secs:.3f}", "", f"{secs / n_img:.2f} s/image"]
    )

    # The patch matrix of one image, to time the solvers alone.
    d, m = pairs[0]
    Xp, Mp = [], []
    for c in range(3):
        obs = torch.from_numpy(~m).float()[None, None]
        img = torch.from_numpy(np.ascontiguousarray(d[:, :, c]))[None, None]
        Xp.append(torch.nn.functional.unfold(img, p, stride=fit.stride)[0].T)
        Mp.append(torch.nn.functional.unfold(obs, p, stride=fit.stride)[0].T)
    X = torch.cat(Xp).numpy()
    Mk = torch.cat(Mp).numpy()
    N = X.shape[0]
    info: dict[str, float] = {}
    f_secs, W = timed(lambda: nmf.fit_weights(X, H, Mk, tol=fit.tol, max_iter=fit.max_iter, device=dev, info=info))
    flops = info["n_iter"] * 2 * (2.0 * N * k * p * p)
    peak = gemm_gflops([(N, k, p * p), (N, p * p, k)], dev)
    rate = flops / f_secs / 1e9
    obj = nmf.objective(X, W, H, Mk)
    rows.append(
        [
            scale,
            f"nmf fit_weights masked, {N} patches (per image)",
            f"{1 / f_secs:.3f}",
            f"{obj:.5f}",
            f"{info['n_iter']:.0f} it",
        ]
    )
    rows.append([scale, "GEMM peak, same shapes", "", "", f"{rate:.1f} of {peak:.1f} GFLOP/s = {rate / peak:.0%}"])
    ns = min(args.reference_patches, N)
    s_secs, Ws = timed(lambda: nmf.fit_weights_reference(X[:ns], H, n_iter=args.reference_iter, device=dev))
    per_img = s_secs / ns * N
    rows.append(
        [
            scale,
            f"reference loop ({ns} patches timed, extrapolated to {N})",
            f"{1 / per_img:.5f}",
            f"{nmf.objective(X[:ns], Ws, H, Mk[:ns]):.4f}",
            f"nmf fit {per_img / f_secs:.0f}x, end to end {per_img / (secs / n_img):.0f}x faster",
        ]
    )
    sk_secs, Wsk = timed(lambda: sklearn_transform(X, H, 1e-4, 200))
    obj_sk = nmf.objective(X, Wsk, H)
    o_secs, obj_o, it_o = ours_to_match(X, H, obj_sk, dev)
    rows.append([scale, "sklearn transform (cd, unmasked, per image)", f"{1 / sk_secs:.3f}", f"{obj_sk:.4f}", ""])
    rows.append(
        [
            scale,
            "nmf fit_weights (unmasked, per image)",
            f"{1 / o_secs:.3f}",
            f"{obj_o:.4f}",
            f"{it_o} it; {sk_secs / o_secs:.1f}x sklearn",
        ]
    )


def learn_section(args: argparse.Namespace, dev: torch.device, rows: list[list[str]]) -> np.ndarray:
    from sklearn.decomposition import NMF

    n, side, k = args.learn_n, args.learn_side, args.learn_k
    X = synth.photo_crops(n, side, seed=args.seed + 11).reshape(n, -1)
    scale = f"learn {n}x{side * side}, k={k}"
    sk = NMF(n_components=k, solver="cd", max_iter=args.learn_iter, tol=0.0, random_state=args.seed)
    t0 = time.perf_counter()
    Wsk = sk.fit_transform(X)
    sk_secs = time.perf_counter() - t0
    target = nmf.objective(X, Wsk, sk.components_)  # mean over rows of 0.5 * SSE
    stamps: list[tuple[float, float]] = []
    t0 = time.perf_counter()
    res = nmf.learn_bases(
        X,
        k,
        solver=args.learn_solver,
        max_iter=args.learn_iter,
        tol=0.0,
        seed=args.seed,
        device=dev,
        progress=lambda it, loss: stamps.append((time.perf_counter() - t0, loss)),
    )
    reach = next((t for t, loss in stamps if loss <= target), None)
    rows.append([scale, f"sklearn NMF.fit (cd, {args.learn_iter} it)", "", f"{target:.3f}", f"{sk_secs:.1f} s"])
    if reach is None:
        note = f"did not reach sklearn's loss in {len(stamps)} epochs ({stamps[-1][0]:.1f} s)"
    else:
        ep = next(i for i, (_, loss) in enumerate(stamps, 1) if loss <= target)
        note = f"reached sklearn's loss at epoch {ep}, {reach:.1f} s: {sk_secs / reach:.1f}x faster"
    rows.append([scale, f"nmf learn_bases ({args.learn_solver})", "", f"{res.loss_history_[-1]:.3f}", note])
    return res.H_


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="the issue's exact scale (slow on a CPU)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--side", type=int, default=100)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rate", type=float, default=0.5)
    ap.add_argument("--tol", type=float, default=FitConfig().tol)
    ap.add_argument("--max-iter", type=int, default=FitConfig().max_iter)
    ap.add_argument("--bases-epochs", type=int, default=3, help="HALS epochs for the global bases")
    ap.add_argument("--reference-images", type=int, default=2)
    ap.add_argument("--reference-iter", type=int, default=FitConfig().reference_iter)
    ap.add_argument("--patch-images", type=int, default=2)
    ap.add_argument("--patch-side", type=int, default=256)
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--patch-k", type=int, default=64)
    ap.add_argument("--reference-patches", type=int, default=200)
    ap.add_argument("--learn-n", type=int, default=1000)
    ap.add_argument("--learn-side", type=int, default=40)
    ap.add_argument("--learn-k", type=int, default=100)
    ap.add_argument("--learn-iter", type=int, default=50)
    ap.add_argument("--learn-solver", default="hals", choices=["hals", "mu"])
    ap.add_argument("--skip", nargs="*", default=[], choices=["global", "patch", "learn"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    args = ap.parse_args(argv)
    if args.threads:
        # The same number of threads for torch and for scikit-learn's BLAS (a fair race).
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    if args.full:
        args.batch, args.patch_images = 256, 8
        args.learn_n, args.learn_side, args.learn_k = 3000, 100, 1000
    dev = torch.device(args.device)
    torch.manual_seed(args.seed)
    rows: list[list[str]] = []
    t0 = time.perf_counter()
    H_learned = None
    if "learn" not in args.skip:
        H_learned = learn_section(args, dev, rows)
    if "global" not in args.skip:
        if H_learned is not None and H_learned.shape == (args.k, args.side**2):
            H = H_learned
        else:
            H = make_global_bases(args.side, args.k, max(args.k + 200, 2 * args.batch), args.bases_epochs, args.seed)
        global_section(args, dev, rows, H)
    if "patch" not in args.skip:
        patch_section(args, dev, rows)

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(
        f"# machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} threads "
        f"{torch.get_num_threads()}, device {dev}; load average at end {load[0]:.1f} "
        f"(shared machine: other processes compete for the cores); total {time.perf_counter() - t0:.0f} s"
    )
    head = ["scale", "what", "images/s", "objective", "notes"]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    print(
        "# objective = mean over rows of 0.5 * ||M * (X - W H)||^2; masked rows use the dead-pixel mask, "
        "sklearn rows the unmasked objective it supports"
    )


if __name__ == "__main__":
    main()
