"""SR quality: bicubic enlargement vs the write-up's CNN vs the improved CNN, at the write-up's degrade.

Trains each model in-process (same code path as the Ray Train job's workers: ``sr.train_step``)
on generated digits and on crops of scikit-image photos, then measures PSNR/SSIM on held-out
data: digits with indices after the training ones, and crops of photos never used for training
(``--test-photos``; never ``lfw_subset``). Also training seconds per epoch and inference
images per second on this machine's CPU (and CUDA when present).

Run (a few minutes on 2 cores):  python benchmarks/sr_quality.py
Scale up:                         python benchmarks/sr_quality.py --digits-train 60000 --epochs 10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imrestore_data import synth
from imrestore_data.digits import digits
from restore_core import metrics, sr
from restore_core.config import SRDegradeConfig

#: The write-up's degrade: 28 -> 10 -> 28, bilinear with align_corners (Chainer's resize_images).
WRITEUP_DEGRADE = SRDegradeConfig(scale=2.8, filter="bilinear", align_corners=True, antialias=False)
TEST_PHOTOS = ("astronaut", "camera", "coffee", "chelsea")


def train(
    net: sr.SRNet, data: np.ndarray, epochs: int, batch: int, degrade_cfg: SRDegradeConfig, seed: int
) -> tuple[sr.SRNet, float]:
    """Adam + MSE on (N, H, W) clean planes; returns the net and mean seconds per epoch."""
    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net.to(device)
    state = sr.make_train_state(net, degrade_cfg, device, lr=1e-3)
    x_all = torch.from_numpy(data)[:, None]
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = rng.permutation(len(data))
        for s in range(0, len(order), batch):
            sr.train_step(state, x_all[order[s : s + batch]])
    net.eval()
    return net, (time.perf_counter() - t0) / max(epochs, 1)


def evaluate(outputs: np.ndarray, clean: np.ndarray) -> tuple[float, float]:
    """Mean per-image PSNR and SSIM of (N, H, W) outputs against clean (N, H, W)."""
    p = [metrics.psnr(c, o) for c, o in zip(clean, outputs, strict=True)]
    s = [metrics.ssim(c, o) for c, o in zip(clean, outputs, strict=True)]
    return float(np.mean(p)), float(np.mean(s))


def inference_rate(net: sr.SRNet, blurry: np.ndarray, device: torch.device) -> float:
    """Images per second for batched inference on ``device`` (one warm-up pass first)."""
    net.to(device)
    sr.enhance_planes(net, blurry[:8], device=device)
    t0 = time.perf_counter()
    sr.enhance_planes(net, blurry, device=device, batch_tiles=256)
    return len(blurry) / (time.perf_counter() - t0)


def run_suite(
    name: str, train_x: np.ndarray, test_x: np.ndarray, models: dict[str, dict[str, Any]], args: argparse.Namespace
) -> list[dict[str, Any]]:
    deg = WRITEUP_DEGRADE
    with torch.no_grad():
        t = torch.from_numpy(test_x)[:, None]
        blurry = sr.degrade(t, deg)[:, 0].numpy()
        bicubic = sr.bicubic_baseline(t, deg)[:, 0].numpy()
    rows = []
    p, s = evaluate(blurry, test_x)
    rows.append({"data": name, "method": "degraded input (bilinear)", "psnr": p, "ssim": s})
    p, s = evaluate(bicubic, test_x)
    rows.append({"data": name, "method": "bicubic", "psnr": p, "ssim": s})
    bicubic_psnr = p
    for label, spec in models.items():
        net = sr.SRNet(spec["channels"], spec["residual"])
        net, sec = train(net, train_x, args.epochs, 64, deg, args.seed)
        out = sr.enhance_planes(net.cpu(), blurry, device=torch.device("cpu"), batch_tiles=256)
        p, s = evaluate(out, test_x)
        row = {
            "data": name,
            "method": label,
            "psnr": p,
            "ssim": s,
            "gain_db": p - bicubic_psnr,
            "params": sr.param_count(net),
            "train_s_per_epoch": sec,
            "train_images": len(train_x),
            "infer_img_s_cpu": inference_rate(net, blurry, torch.device("cpu")),
        }
        if torch.cuda.is_available():
            row["infer_img_s_cuda"] = inference_rate(net, blurry, torch.device("cuda"))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--digits-train", type=int, default=4000, help="training digits (write-up: 60000)")
    ap.add_argument("--digits-test", type=int, default=1000)
    ap.add_argument("--photo-train", type=int, default=4000, help="training photo patches")
    ap.add_argument("--photo-test", type=int, default=200)
    ap.add_argument("--photo-size", type=int, default=48, help="photo patch / crop side")
    ap.add_argument("--epochs", type=int, default=5, help="epochs per model (write-up: 10)")
    ap.add_argument("--improved", default="32,32,32,32,32", help="hidden widths of the improved model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--out", default="bench_out/sr_quality.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    improved = [int(c) for c in args.improved.split(",")]
    models = {
        "write-up CNN [16,32,64]": {"channels": list(sr.WRITEUP_CHANNELS), "residual": False},
        "write-up + residual": {"channels": list(sr.WRITEUP_CHANNELS), "residual": True},
        f"improved residual {improved}": {"channels": improved, "residual": True},
    }
    t0 = time.perf_counter()
    # Digits: training indices 0..n-1, test indices after them (held out, same generator).
    d_train, _ = digits(args.digits_train, seed=args.seed)
    d_test, _ = digits(args.digits_test, seed=args.seed, start=args.digits_train)
    train_names = tuple(n for n in synth.PHOTO_NAMES if n not in TEST_PHOTOS)
    p_train = synth.photo_crops(args.photo_train, args.photo_size, names=train_names, seed=args.seed)
    p_test = synth.photo_crops(args.photo_test, args.photo_size, names=TEST_PHOTOS, seed=args.seed + 1)
    rows = run_suite("digits 28x28", d_train, d_test, models, args)
    rows += run_suite(f"photos {args.photo_size}x{args.photo_size} (held-out photos)", p_train, p_test, models, args)
    headers = ["data", "method", "PSNR dB", "SSIM", "vs bicubic dB", "params", "train s/epoch", "infer img/s CPU"]
    print()
    print(" | ".join(headers))
    for r in rows:
        cells = [
            r["data"],
            r["method"],
            f"{r['psnr']:.2f}",
            f"{r['ssim']:.4f}",
            f"{r['gain_db']:+.2f}" if "gain_db" in r else "",
            str(r.get("params", "")),
            f"{r['train_s_per_epoch']:.1f}" if "train_s_per_epoch" in r else "",
            f"{r['infer_img_s_cpu']:.0f}" if "infer_img_s_cpu" in r else "",
        ]
        print(" | ".join(cells))
    info = {
        "args": vars(args),
        "degrade": dataclasses.asdict(WRITEUP_DEGRADE),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "seconds": time.perf_counter() - t0,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(info, indent=2))
    print(f"\n{time.perf_counter() - t0:.0f} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
