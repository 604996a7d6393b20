"""The demo: every job, end to end, on a small generated dataset, on an embedded local Ray.

``python -m jobs demo [--out DIR] [--small]`` makes, under ``DIR`` (default ``demo_out``):

- ``data/train/`` clean images, ``data/train_damaged/`` the same images damaged, and
  ``data/test/`` other damaged ones (blur, then dead pixels; the clean image in the
  ``reference`` column), Parquet shards of faces, textures, digits, shapes;
- ``bases/`` (learn-bases), ``sr_model/`` (train-sr, a few epochs), ``refiner/``
  (train-inpaint, a few epochs, self-supervised on ``train_damaged``: it never sees a clean
  image, as on a user's own damaged dataset, and never sees the test images);
- ``restored/<method>/`` (the restore job once per method, and once with NMF then SR);
- ``quality/`` (the nightly quality run over the damaged test set);
- ``report/``: ``results.csv``, ``summary.json`` and ``before_after.png`` (the image grid).

A second run reuses what exists: each step records a fingerprint of its settings and inputs in
``_demo_state.json`` and is skipped when its output is there with the same fingerprint
(``force: true`` redoes everything).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from imrestore_data import demo_data
from jobs import learn_bases as learn_bases_job
from jobs import quality as quality_job
from jobs import restore as restore_job
from jobs import train_inpaint as train_inpaint_job
from jobs import train_sr as train_sr_job
from jobs.common import Summary, format_table
from jobs.ray_utils import init_ray, is_verbose
from restore_core import codec, metrics, sr
from restore_core.config import (
    DemoConfig,
    InputConfig,
    LearnBasesConfig,
    NMFLearnConfig,
    OutputConfig,
    QualityConfig,
    RestoreConfig,
    SRConfig,
    SRDegradeConfig,
    TrainInpaintConfig,
    TrainSRConfig,
    from_dict,
)
from restore_core.errors import UserError

CONFIG = DemoConfig
log = logging.getLogger("jobs.demo")

#: --small: a demo CI can afford (about a minute on 2 CPUs).
SMALL = [
    "data.n_train=48",
    "data.n_test=8",
    "data.shards=2",
    "nmf.n_samples=2000",
    "nmf.max_iter=30",
    "sr.epochs=1",
    "sr.patches_per_image=4",
    "inpaint.epochs=2",
    "inpaint.crops_per_image=2",
]

#: Restore output folder names (a method name may not be a safe folder name: nmf+sr).
SR_ROW = "nmf+sr"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="folder for everything the demo makes (default: demo_out)")
    parser.add_argument("--small", action="store_true", help="fewer, smaller images and one SR epoch (for CI)")


def apply_arguments(args: argparse.Namespace) -> list[str]:
    extra = [*SMALL] if args.small else []
    if args.out:
        extra.append(f"output={args.out}")
    return extra


# ----------------------------------------------------------------------------- steps


class Steps:
    """Runs named steps once: a step is skipped when its marker file exists and the fingerprint
    of its settings matches the one recorded in ``_demo_state.json``."""

    def __init__(self, root: str, force: bool) -> None:
        self.root = root
        self.force = force
        self.path = os.path.join(root, "_demo_state.json")
        self.state: dict[str, str] = {}
        if os.path.isfile(self.path) and not force:
            with open(self.path, encoding="utf-8") as f:
                self.state = json.load(f)
        self.report: dict[str, str] = {}  # step -> "done in 3.1 s" | "reused"
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def run(self, name: str, settings: Any, marker: str, fn: Callable[[], Any]) -> bool:
        """Run ``fn`` unless ``marker`` exists with the same settings; True when the output exists."""
        fp = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
        if not self.force and self.state.get(name) == fp and os.path.exists(marker):
            self.report[name] = "reused"
            log.info("demo: %s reused (%s)", name, marker)
            return True
        t0 = time.perf_counter()
        log.info("demo: %s ...", name)
        fn()
        self.seconds[name] = time.perf_counter() - t0
        self.report[name] = f"done in {self.seconds[name]:.1f} s"
        with self._lock:  # steps may run in two threads (see run)
            self.state[name] = fp
            with open(self.path, "w", encoding="utf-8") as f:
                json.dump(self.state, f, indent=2)
        return True

    def fingerprint(self, name: str) -> str:
        return self.state.get(name, "")


def _summary_line(summary: Any) -> None:
    """A step's job summary in the demo's log: one line, or all of it with --verbose."""
    if not isinstance(summary, Summary):
        return
    if not is_verbose():
        log.info("  %s", summary.brief())
        return
    for line in summary.render().splitlines():
        log.info("  %s", line)


# ----------------------------------------------------------------------------- data


def _blur(cfg: DemoConfig) -> Callable[[np.ndarray], np.ndarray]:
    """The test set's blur: the SR model's own degrade (same filter and scale as its training),
    else a bilinear shrink-and-enlarge."""
    dcfg = SRDegradeConfig(scale=cfg.data.blur_scale)

    def blur(img: np.ndarray) -> np.ndarray:
        planes = img[None] if img.ndim == 2 else np.moveaxis(img, 2, 0)  # (C, H, W)
        out = sr.degrade_np(np.ascontiguousarray(planes, np.float32), dcfg)
        return out[0] if img.ndim == 2 else np.moveaxis(out, 0, 2)

    return blur


def make_data(cfg: DemoConfig, root: str) -> None:
    """Write the clean training set and the damaged test set (with references)."""
    d = cfg.data
    train, train_kinds = demo_data.generate(d.n_train, d.size, rgb=d.rgb, seed=d.seed)
    test_clean, test_kinds = demo_data.generate(d.n_test, d.size, rgb=d.rgb, seed=d.seed + 10_000)
    rng = np.random.default_rng(d.seed + 20_000)
    blur = _blur(cfg)
    damaged = [demo_data.damage(img, d.dead_rate, rng, blur)[0] for img in test_clean]
    train_damaged = [demo_data.damage(img, d.dead_rate, rng, blur)[0] for img in train]
    demo_data.write_shards(
        demo_data.to_table([f"train-{i:05d}" for i in range(d.n_train)], train, train_kinds),
        os.path.join(root, "train"),
        d.shards,
    )
    demo_data.write_shards(
        demo_data.to_table([f"train-{i:05d}" for i in range(d.n_train)], train_damaged, train_kinds),
        os.path.join(root, "train_damaged"),
        d.shards,
    )
    demo_data.write_shards(
        demo_data.to_table([f"test-{i:05d}" for i in range(d.n_test)], damaged, test_kinds, test_clean),
        os.path.join(root, "test"),
        d.shards,
    )
    with open(os.path.join(root, "_SUCCESS"), "w", encoding="utf-8") as f:
        json.dump(dataclasses.asdict(d), f)


# ----------------------------------------------------------------------------- jobs


def learn_bases_cfg(cfg: DemoConfig, train: str, out: str) -> LearnBasesConfig:
    n = cfg.nmf
    nmf = NMFLearnConfig(
        mode="patch", k=n.k, patch_size=n.patch_size, channels=n.channels, n_samples=n.n_samples, max_iter=n.max_iter
    )
    return LearnBasesConfig(input=InputConfig(path=train), output=out, nmf=nmf, device=cfg.device, ray=cfg.ray)


def train_sr_cfg(cfg: DemoConfig, train: str, out: str) -> Any:
    """train-sr's config: the demo's images and blur, a few epochs on the local Ray."""
    s = cfg.sr
    return from_dict(
        TrainSRConfig,
        {
            "input": {"path": train},
            "output": out,
            "net": {"channels": list(s.channels), "residual": s.residual},
            "degrade": {"scale": cfg.data.blur_scale},
            "train": {
                "epochs": s.epochs,
                "patch_size": min(s.patch_size, cfg.data.size),
                "patches_per_image": s.patches_per_image,
            },
            "workers": {"num_workers": s.num_workers},
            "ray": dataclasses.asdict(cfg.ray),
        },
    )


def train_inpaint_cfg(cfg: DemoConfig, train_damaged: str, out: str) -> TrainInpaintConfig:
    """train-inpaint's config: the damaged training images, a few epochs on the local Ray."""
    p = cfg.inpaint
    return from_dict(
        TrainInpaintConfig,
        {
            "input": {"path": train_damaged},
            "output": out,
            "channels": "gray",
            "net": {"width": p.width, "levels": p.levels},
            "train": {
                "epochs": p.epochs,
                "patch_size": min(p.patch_size, cfg.data.size),
                "crops_per_image": p.crops_per_image,
            },
            "workers": {"num_workers": p.num_workers},
            "checkpoints": {"resume": False},  # the demo's step cache decides what is reused
            "ray": dataclasses.asdict(cfg.ray),
        },
    )


def restore_cfg(
    cfg: DemoConfig, test: str, out: str, method: str, bases: str, sr_model: str, refiner: str = ""
) -> RestoreConfig:
    fit = dataclasses.replace(RestoreConfig().fit, method=method)  # type: ignore[arg-type]
    sr = SRConfig(enabled=bool(sr_model), model=sr_model)
    return RestoreConfig(
        input=InputConfig(path=test),
        output=OutputConfig(path=out, overwrite=True),
        bases=bases if method in ("nmf", "reference") else "",
        refiner=refiner if method == "learned" else "",
        fit=fit,
        sr=sr,
        device=cfg.device,
        ray=_small_pool(cfg),
    )


def _small_pool(cfg: DemoConfig) -> Any:
    """Unless asked otherwise, one single-thread actor per core, at most one per shard: the
    demo's test set is a few dozen images in a few shards, and an actor's start (a process
    importing torch) is only worth it when it gets a shard of its own."""
    if cfg.ray.num_actors:
        return cfg.ray
    actors = max(1, min(cfg.data.shards, os.cpu_count() or 1))
    return dataclasses.replace(cfg.ray, num_actors=actors, num_cpus_per_actor=1.0)


def quality_cfg(cfg: DemoConfig, test: str, out: str) -> QualityConfig:
    # One fixed run date: the demo's quality folder holds one run, replaced on a rerun.
    return from_dict(
        QualityConfig,
        {"input": {"path": test}, "output": out, "run_date": "2000-01-01", "ray": dataclasses.asdict(_small_pool(cfg))},
    )


def _start_ray(cfg: DemoConfig) -> bool:
    """Start the embedded Ray once for every step; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if not cfg.ray.address and not cfg.ray.num_cpus and not os.environ.get("RAY_ADDRESS"):
        # Logical CPUs, not cores: train-sr runs its workers and the Ray Data actors that cut
        # training patches at the same time; with 2 logical CPUs (a 2-core laptop or CI) they
        # wait on each other for ever. Oversubscribing a small machine only slows it down.
        cfg = dataclasses.replace(cfg, ray=dataclasses.replace(cfg.ray, num_cpus=max(4, os.cpu_count() or 1)))
    init_ray(cfg.ray)
    return True


# ----------------------------------------------------------------------------- results


def _read_output(folder: str) -> Any:
    """The restore job's output rows (pyarrow table), or None when there is none."""
    import pyarrow.parquet as pq

    data = os.path.join(folder, "data")
    if not os.path.isdir(data):
        return None
    files = sorted(os.path.join(data, f) for f in os.listdir(data) if f.endswith(".parquet"))
    if not files:
        return None
    import pyarrow as pa

    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")


def _mean(table: Any, column: str, ok_only: bool = True) -> float:
    if table is None or column not in table.column_names:
        return float("nan")
    values = np.asarray(table.column(column).to_numpy(zero_copy_only=False), dtype=np.float64)
    if ok_only and "status" in table.column_names:
        values = values[np.asarray(table.column("status").to_pylist()) == "ok"]
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def results_rows(outputs: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per method (plus the damaged input), means over ok rows."""
    rows: list[dict[str, Any]] = []
    first = next((t for t in outputs.values() if t is not None), None)
    if first is not None:
        rows.append(
            {
                "method": "damaged input",
                "psnr": _mean(first, "psnr_in"),
                "ssim": _mean(first, "ssim_in"),
                "psnr_dead": float("nan"),
                "dead_after": _mean(first, "dead_fraction_in"),
                "ok": first.num_rows,
                "rows": first.num_rows,
            }
        )
    for name, table in outputs.items():
        if table is None:
            continue
        status = table.column("status").to_pylist() if "status" in table.column_names else []
        rows.append(
            {
                "method": name,
                "psnr": _mean(table, "psnr_out"),
                "ssim": _mean(table, "ssim_out"),
                "psnr_dead": _mean(table, "psnr_dead_out"),
                "dead_after": _mean(table, "dead_fraction_out"),
                "ok": sum(s == "ok" for s in status),
                "rows": table.num_rows,
            }
        )
    return rows


def _images_by_id(table: Any, column: str) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    if table is None or column not in table.column_names:
        return out
    for i, cell in zip(table.column("id").to_pylist(), table.column(column).to_pylist(), strict=True):
        if cell:
            out[str(i)] = codec.decode(cell)[0]
    return out


def plot_grid(test_table: Any, outputs: dict[str, Any], path: str, per_kind: int = 1) -> None:
    """Before/after grid: a row per sample image (one of each kind), columns clean, damaged,
    then each method, titled with the image's PSNR against the clean image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = test_table.column("id").to_pylist()
    kinds = test_table.column("kind").to_pylist()
    chosen: list[str] = []
    for kind in demo_data.KINDS:
        chosen += [i for i, k in zip(ids, kinds, strict=True) if k == kind][:per_kind]
    clean = _images_by_id(test_table, "reference")
    damaged = _images_by_id(test_table, "image")
    restored = {name: _images_by_id(t, "image") for name, t in outputs.items() if t is not None}
    columns = [("clean (reference)", clean), ("damaged input", damaged), *restored.items()]
    fig, axes = plt.subplots(
        len(chosen), len(columns), figsize=(1.6 * len(columns), 1.6 * len(chosen) + 0.3), squeeze=False
    )
    for r, image_id in enumerate(chosen):
        ref = clean.get(image_id)
        for c, (title, images) in enumerate(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
            if c == 0:
                ax.set_ylabel(kinds[ids.index(image_id)], fontsize=8)
            img = images.get(image_id)
            if img is None:
                ax.text(0.5, 0.5, "error", ha="center", va="center", transform=ax.transAxes)
                continue
            ax.imshow(
                np.clip(img, 0, 1), cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest"
            )
            if c > 0 and ref is not None and ref.shape == img.shape:
                # PSNR against the clean image, in a box inside the panel so rows never overlap.
                ax.text(
                    0.03,
                    0.04,
                    f"{metrics.psnr(ref, img):.1f} dB",
                    transform=ax.transAxes,
                    fontsize=7,
                    color="white",
                    bbox={"facecolor": "black", "alpha": 0.6, "pad": 1.5, "linewidth": 0},
                )
    fig.tight_layout(pad=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- run


def run(cfg: DemoConfig) -> Summary:
    if not cfg.output:
        raise UserError("output is empty: set it (or --out) to the folder where the demo writes its files")
    known = ("learned", "nmf", "reference", "fill", "biharmonic", "median", "none")
    unknown = [m for m in cfg.methods if m not in known]
    if unknown:
        raise UserError(f"methods: unknown method {unknown[0]!r} (choose from {', '.join(known)})")
    if cfg.data.n_test < 1 or cfg.data.n_train < 1:
        raise UserError("data.n_train and data.n_test must be >= 1")
    t_start = time.perf_counter()
    root = os.path.abspath(cfg.output)
    os.makedirs(root, exist_ok=True)
    steps = Steps(root, cfg.force)
    data_dir = os.path.join(root, "data")
    train, test = os.path.join(data_dir, "train"), os.path.join(data_dir, "test")
    bases_dir, model_dir = os.path.join(root, "bases"), os.path.join(root, "sr_model")
    refiner_dir = os.path.join(root, "refiner")
    report_dir = os.path.join(root, "report")
    os.makedirs(report_dir, exist_ok=True)

    data_marker = os.path.join(data_dir, "_SUCCESS")
    steps.run("data", dataclasses.asdict(cfg.data), data_marker, lambda: make_data(cfg, data_dir))
    data_fp = steps.fingerprint("data")

    started_ray = _start_ray(cfg)
    try:
        outputs: dict[str, Any] = {}

        def restore_step(name: str, method: str, model: str) -> None:
            folder = os.path.join(root, "restored", name.replace("+", "_"))
            rcfg = restore_cfg(cfg, test, folder, method, bases_dir, model, refiner_dir)

            def restore(rcfg: RestoreConfig = rcfg) -> None:
                _summary_line(restore_job.run(rcfg))

            settings = {k: v for k, v in dataclasses.asdict(rcfg).items() if k != "ray"}  # results do not depend on it
            # Only what this run reads: restores without SR may finish before train-sr does.
            fp = [
                data_fp,
                steps.fingerprint("learn-bases") if method in ("nmf", "reference") else "",
                steps.fingerprint("train-sr") if model else "",
                steps.fingerprint("train-inpaint") if method == "learned" else "",
                settings,
            ]
            if steps.run(f"restore {name}", fp, os.path.join(folder, "_manifest.json"), restore):
                outputs[name] = _read_output(folder)

        quality_dir = os.path.join(root, "quality")

        def quality() -> None:
            _summary_line(quality_job.run(quality_cfg(cfg, test, quality_dir)))

        def without_sr() -> bool:
            """learn-bases, a restore per method, quality: everything that needs no SR model."""
            lb_cfg = learn_bases_cfg(cfg, train, bases_dir)
            have_bases = steps.run(
                "learn-bases",
                [data_fp, dataclasses.asdict(lb_cfg.nmf)],
                os.path.join(bases_dir, "meta.json"),
                lambda: _summary_line(learn_bases_job.run(lb_cfg)),
            )
            for method in cfg.methods:
                if method == "learned":
                    continue  # after train-inpaint, below
                if method in ("nmf", "reference") and not have_bases:
                    steps.report[f"restore {method}"] = "skipped: no bases"
                    continue
                restore_step(method, method, "")
            steps.run("quality", [data_fp], os.path.join(quality_dir, "run=2000-01-01"), quality)
            return have_bases

        # SR training runs in this thread while the other steps go on in a second one: on a
        # small machine most of each step is start-up latency (processes importing torch,
        # Ray Train's worker group), which overlaps well. Ray's API is thread-safe.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="demo-steps") as pool:
            others = pool.submit(without_sr)
            have_model = False
            if cfg.sr.enabled:

                def train_sr() -> None:
                    _summary_line(train_sr_job.run(train_sr_cfg(cfg, train, model_dir)))

                have_model = steps.run(
                    "train-sr", [data_fp, dataclasses.asdict(cfg.sr)], os.path.join(model_dir, "meta.json"), train_sr
                )
            have_refiner = False
            if "learned" in cfg.methods and cfg.inpaint.enabled:
                ti_cfg = train_inpaint_cfg(cfg, os.path.join(data_dir, "train_damaged"), refiner_dir)
                have_refiner = steps.run(
                    "train-inpaint",
                    [data_fp, dataclasses.asdict(cfg.inpaint)],
                    os.path.join(refiner_dir, "meta.json"),
                    lambda: _summary_line(train_inpaint_job.run(ti_cfg)),
                )
            have_bases = others.result()
        if "learned" in cfg.methods:
            if have_refiner:
                restore_step("learned", "learned", "")
            else:
                steps.report["restore learned"] = "skipped: no refiner (inpaint.enabled is false)"
        if cfg.sr.enabled:
            if not have_bases:
                steps.report[f"restore {SR_ROW}"] = "skipped: no bases"
            elif not have_model:
                steps.report[f"restore {SR_ROW}"] = "skipped: no SR model"
            else:
                restore_step(SR_ROW, "nmf", model_dir)
        # Rows in a fixed order, whatever order the threads finished in.
        order = [*cfg.methods, SR_ROW]
        outputs = {name: outputs[name] for name in order if name in outputs}
    finally:
        if started_ray:
            import ray

            ray.shutdown()

    import pyarrow.parquet as pq

    test_table = pq.read_table(test)  # the folder of shards
    rows = results_rows(outputs)
    grid = os.path.join(report_dir, "before_after.png")
    report_outputs: dict[str, str] = {"data": data_dir}
    if outputs:
        plot_grid(test_table, outputs, grid)
        report_outputs["before/after grid"] = grid
    csv_path = os.path.join(report_dir, "results.csv")
    keys = ["method", "psnr", "ssim", "psnr_dead", "dead_after", "ok", "rows"]
    with open(csv_path, "w", encoding="utf-8") as f:
        f.write(",".join(keys) + "\n")
        for r in rows:
            f.write(",".join(str(r[k]) for k in keys) + "\n")
    report_outputs["results"] = csv_path
    for label, path in (
        ("bases", bases_dir),
        ("SR model", model_dir),
        ("SR training plot", os.path.join(model_dir, "training.png")),
        ("refiner", refiner_dir),
    ):
        if os.path.exists(path):
            report_outputs[label] = path
    quality_report = _find_quality_report(quality_dir)
    if quality_report:
        report_outputs["quality report"] = quality_report
    for name in outputs:
        report_outputs[f"restored ({name})"] = os.path.join(root, "restored", name.replace("+", "_"))
    summary_path = os.path.join(report_dir, "summary.json")
    with open(summary_path, "w", encoding="utf-8") as f:
        json.dump({"results": rows, "steps": steps.report, "outputs": report_outputs}, f, indent=2, default=str)
    report_outputs["summary"] = summary_path

    table = format_table(
        ["method", "PSNR dB", "SSIM", "PSNR dead px", "dead px after", "rows ok"],
        [[r["method"], r["psnr"], r["ssim"], r["psnr_dead"], r["dead_after"], f"{r['ok']}/{r['rows']}"] for r in rows],
    )
    values: dict[str, Any] = {
        "images": f"{cfg.data.n_train} clean (train), {cfg.data.n_test} damaged (test), "
        f"{cfg.data.size}x{cfg.data.size} {'RGB' if cfg.data.rgb else 'gray'}",
        "damage": f"blur (shrink x{cfg.data.blur_scale:g} and enlarge), then {cfg.data.dead_rate:.0%} dead pixels",
    }
    values.update({f"step {k}": v for k, v in steps.report.items()})
    values["seconds"] = time.perf_counter() - t_start
    return Summary(job="demo", values=values, outputs=report_outputs, table=table)


def _find_quality_report(folder: str) -> str:
    """The quality run's HTML report (or summary JSON), wherever the quality job put it."""
    if not os.path.isdir(folder):
        return ""
    found = ""
    for dirpath, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            if name.endswith(".html"):
                return os.path.join(dirpath, name)
            if name == "summary.json" and not found:
                found = os.path.join(dirpath, name)
    return found
