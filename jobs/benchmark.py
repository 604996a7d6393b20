"""Quality benchmark: damage clean images with dead pixels, restore with each method, compare.

Prints a table (PSNR over all pixels and over dead pixels only, SSIM, images/s) and writes
``results.csv``, ``psnr_vs_rate.png``, ``grid.png`` (before/after) and, when asked, the
write-up's two studies: ``psnr_vs_k.png`` and ``weights_hist.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import time
import warnings
from typing import Any, Literal

import numpy as np

from imrestore_data import synth
from jobs.common import Summary, format_table
from jobs.config_benchmark import BenchmarkConfig
from jobs.config_learn_bases import LearnBasesConfig
from jobs.learn_bases import build_rows, check_training_rows, learn
from restore_core import codec, masks, metrics, nmf
from restore_core.bases import Bases, BasesMeta
from restore_core.codec import cell_bytes
from restore_core.config import FitConfig
from restore_core.errors import UserError
from restore_core.inpaint import NMFInpainter, restore_image
from restore_core.io import datasets, locations
from restore_core.io.artifacts import load_bases
from restore_core.io.shards import probe_writable

CONFIG = BenchmarkConfig
log = logging.getLogger("jobs.benchmark")


def _clean_images(cfg: BenchmarkConfig, bases: Bases | None) -> list[np.ndarray]:
    if cfg.input.path:
        out = []
        for row in datasets.iter_rows(
            cfg.input.location,
            cfg.input.format,
            cfg.input.id_column,
            cfg.input.image_column,
            cfg.n_images,
        ):
            img, _ = codec.decode(cell_bytes(row[cfg.input.image_column]), cfg.decode.max_pixels)
            out.append(img)
        return out
    # No input: crops of scikit-image's photos at the bases' size.
    size, rgb = 64, False
    if bases is not None:
        rgb = bases.meta.channels == 3
        if bases.meta.mode == "global":
            size = bases.meta.image_shape[0]
    return list(synth.photo_crops(cfg.n_images, size, rgb=rgb, seed=cfg.seed + 1000))


def _fit_cfg(cfg: BenchmarkConfig, method: str) -> FitConfig:
    if method == "reference":
        return dataclasses.replace(cfg.fit, method="reference", keep_observed=False, masked=False)
    return dataclasses.replace(cfg.fit, method="nmf")


def evaluate(images: list[np.ndarray], bases: Bases | None, cfg: BenchmarkConfig) -> list[dict[str, Any]]:
    """One result row per (method, rate): mean PSNR all/dead, SSIM, images/s."""
    rng = np.random.default_rng(cfg.seed)
    damaged = {rate: [masks.apply_dead_pixels(img, rate, rng) for img in images] for rate in cfg.rates}
    rows = []
    for method in cfg.methods:
        inpainter = None
        if method in ("nmf", "reference"):
            if bases is None:
                raise UserError(f"method {method} needs bases: set 'bases' to a learn-bases artifact")
            inpainter = NMFInpainter(bases, _fit_cfg(cfg, method), cfg.device)
        for rate in cfg.rates:
            pairs = damaged[rate]
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", nmf.ConvergenceWarning)
                if inpainter is not None:
                    restored = inpainter.restore_batch([d for d, _ in pairs], [m for _, m in pairs])
                else:
                    restored = [restore_image(d, m, method) for d, m in pairs]
            secs = time.perf_counter() - t0
            rows.append(
                {
                    "method": method,
                    "rate": rate,
                    "psnr": float(np.mean([metrics.psnr(c, r) for c, r in zip(images, restored, strict=True)])),
                    "psnr_dead": float(
                        np.mean([metrics.psnr(c, r, m) for c, r, (_, m) in zip(images, restored, pairs, strict=True)])
                    ),
                    "ssim": float(np.mean([metrics.ssim(c, r) for c, r in zip(images, restored, strict=True)])),
                    "images_per_s": len(images) / max(secs, 1e-9),
                    "_restored": restored,
                    "_damaged": [d for d, _ in pairs],
                }
            )
            log.info("%s rate=%.2f psnr=%.2f", method, rate, rows[-1]["psnr"])
    return rows


def _plot_rates(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        ax.plot([r["rate"] for r in rs], [r["psnr"] for r in rs], marker="o", label=method)
    ax.set_xlabel("dead pixel rate")
    ax.set_ylabel("PSNR (dB), all pixels")
    ax.set_title("Restoration quality vs damage")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_grid(images: list[np.ndarray], rows: list[dict[str, Any]], path: str, index: int = 0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = list(dict.fromkeys(r["rate"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(
        len(rates), len(methods) + 2, figsize=(2 * (len(methods) + 2), 2 * len(rates)), squeeze=False
    )
    gray = images[index].ndim == 2
    for i, rate in enumerate(rates):
        first = next(r for r in rows if r["rate"] == rate)
        panels = [("clean", images[index]), (f"damaged {rate:.0%}", first["_damaged"][index])]
        panels += [
            (f"{m} {r['psnr']:.1f}dB", r["_restored"][index])
            for m in methods
            for r in rows
            if r["method"] == m and r["rate"] == rate
        ]
        for j, (title, img) in enumerate(panels):
            ax = axes[i][j]
            ax.imshow(np.clip(img, 0, 1), cmap="gray" if gray else None, vmin=0, vmax=1)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def weight_histogram(images: list[np.ndarray], bases: Bases, cfg: BenchmarkConfig, path: str) -> dict[str, float]:
    """The write-up's second study: the distribution of fitted weights (mostly ~0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inpainter = NMFInpainter(bases, _fit_cfg(cfg, "nmf"), cfg.device)
    rng = np.random.default_rng(cfg.seed)
    pairs = [masks.apply_dead_pixels(img, cfg.rates[0], rng) for img in images]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nmf.ConvergenceWarning)
        _, W = inpainter.restore_with_weights([d for d, _ in pairs], [m for _, m in pairs])
    W = W.ravel() if W.size else np.zeros(1)
    near_zero = float((np.abs(W) < 1e-3 * max(float(W.max()), 1e-12)).mean())
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(W, bins=100, log=True)
    ax.set_xlabel("fitted weight")
    ax.set_ylabel("count (log)")
    ax.set_title(f"NMF weights: {near_zero:.0%} within 0.1% of max of 0")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return {"weights near zero": near_zero}


def k_study(images: list[np.ndarray], cfg: BenchmarkConfig, bases: Bases | None, path: str) -> list[tuple[int, float]]:
    """The write-up's first study: PSNR against the number of bases k (bases learned here on
    photo crops of the benchmark's size and mode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = bases.meta if bases is not None else None
    rgb = bool(meta and meta.channels == 3)
    mode: Literal["global", "patch"] = "global" if (meta.mode if meta else cfg.nmf.mode) == "global" else "patch"
    size = meta.image_shape[0] if meta and mode == "global" else 64
    p = meta.patch_size if meta and mode == "patch" else cfg.nmf.patch_size
    train = list(
        synth.photo_crops(max(cfg.nmf.n_samples if mode == "global" else 64, 16), size, rgb=rgb, seed=cfg.seed + 7)
    )
    results = []
    for k in cfg.k_values:
        lcfg = dataclasses.replace(
            cfg.nmf, k=k, mode=mode, image_size=size, patch_size=p, channels="rgb" if rgb else "gray"
        )
        X = build_rows(train, LearnBasesConfig(nmf=lcfg))
        check_training_rows(X, k, "the k study's training crops")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", nmf.ConvergenceWarning)
            res = learn(X, lcfg, cfg.device, log_epochs=False)
        bk = Bases(
            res.H_.astype(np.float32),
            BasesMeta(
                mode=mode,
                k=k,
                n_pixels=X.shape[1],
                channels=3 if rgb else 1,
                patch_size=p if mode == "patch" else 0,
                image_shape=(size, size) if mode == "global" else (0, 0),
            ),
        )
        sub = dataclasses.replace(cfg, methods=["nmf"], rates=[cfg.rates[len(cfg.rates) // 2]])
        row = evaluate(images, bk, sub)[0]
        results.append((k, row["psnr"]))
        log.info("k=%d psnr=%.2f", k, row["psnr"])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([k for k, _ in results], [v for _, v in results], marker="o")
    ax.set_xlabel("number of bases k")
    ax.set_ylabel("PSNR (dB)")
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.set_title("Quality vs k")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return results


METHODS = ("reference", "nmf", "biharmonic", "median", "none")


def check_config(cfg: BenchmarkConfig) -> None:
    """Refuse settings that would fail half-way, in one line naming the key; probe the output."""
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown:
        raise UserError(f"methods: unknown method {unknown[0]!r} (choose from {', '.join(METHODS)})")
    if not cfg.methods:
        raise UserError(f"methods is empty: list at least one of {', '.join(METHODS)}")
    if not cfg.rates or not all(0.0 < r < 1.0 for r in cfg.rates):
        raise UserError(f"rates must list dead-pixel shares between 0 and 1 (exclusive), got {cfg.rates}")
    if any(k < 1 for k in cfg.k_values):
        raise UserError(f"k_values must all be >= 1, got {cfg.k_values}")
    if not cfg.output:
        raise UserError("output is empty: set it to the folder for the benchmark's table and plots")
    # its PNG plots inside a folder of Parquet files are never read back; inside an image folder they would be
    reads = [("input.path", cfg.input.path), ("bases", cfg.bases)]
    locations.check_apart(reads, [("output", cfg.output)], output_may_nest=cfg.input.format == "parquet")
    probe_writable(locations.Location(cfg.output), key="output")


def run(cfg: BenchmarkConfig) -> Summary:
    if cfg.k_values and max(cfg.k_values) > cfg.nmf.n_samples:
        raise UserError(
            f"k_values holds k={max(cfg.k_values)}, more bases than the nmf.n_samples={cfg.nmf.n_samples} training "
            "rows can give; lower it or raise nmf.n_samples"
        )
    check_config(cfg)
    needs_bases = any(m in ("nmf", "reference") for m in cfg.methods)
    bases = load_bases(locations.Location(cfg.bases)) if (cfg.bases or needs_bases) else None
    images = _clean_images(cfg, bases)
    if not images:
        raise UserError("no clean images to benchmark (check input.path)")
    os.makedirs(cfg.output, exist_ok=True)
    rows = evaluate(images, bases, cfg)
    keys = ["method", "rate", "psnr", "psnr_dead", "ssim", "images_per_s"]
    csv_path = os.path.join(cfg.output, "results.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys)
        for r in rows:
            w.writerow([r[k] for k in keys])
    outputs = {"csv": csv_path}
    _plot_rates(rows, os.path.join(cfg.output, "psnr_vs_rate.png"))
    _plot_grid(images, rows, os.path.join(cfg.output, "grid.png"))
    outputs["plot"] = os.path.join(cfg.output, "psnr_vs_rate.png")
    outputs["grid"] = os.path.join(cfg.output, "grid.png")
    values: dict[str, Any] = {"images": len(images), "image shape": "x".join(map(str, images[0].shape))}
    if bases is not None:
        values["bases"] = bases.meta.describe()
        if cfg.weight_histogram:
            hist_path = os.path.join(cfg.output, "weights_hist.png")
            values.update(weight_histogram(images, bases, cfg, hist_path))
            outputs["weights histogram"] = hist_path
    if cfg.k_values:
        k_path = os.path.join(cfg.output, "psnr_vs_k.png")
        for k, v in k_study(images, cfg, bases, k_path):
            values[f"psnr at k={k}"] = v
        outputs["psnr vs k"] = k_path
    table = format_table(
        ["method", "rate", "PSNR dB", "PSNR dead", "SSIM", "img/s"],
        [[r["method"], r["rate"], r["psnr"], r["psnr_dead"], r["ssim"], r["images_per_s"]] for r in rows],
    )
    return Summary(job="benchmark", values=values, outputs=outputs, table=table)
