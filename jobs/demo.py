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
import logging
import os
import time
from typing import Any

from jobs import learn_bases as learn_bases_job
from jobs import quality as quality_job
from jobs import restore as restore_job
from jobs import train_inpaint as train_inpaint_job
from jobs import train_sr as train_sr_job
from jobs.common import Summary, format_table
from jobs.config_demo import DemoConfig
from jobs.demo_jobs import (
    QUALITY_RUN_DATE,
    learn_bases_cfg,
    make_data,
    quality_cfg,
    restore_cfg,
    start_ray,
    train_inpaint_cfg,
    train_sr_cfg,
)
from jobs.demo_report import find_quality_report, read_output, write_report
from jobs.demo_steps import Step, StepCache, run_steps
from restore_core.config import check_ranges
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


# ----------------------------------------------------------------------------- the steps


@dataclasses.dataclass(frozen=True)
class Paths:
    """Where each step of the demo writes, under ``root``."""

    root: str

    @property
    def data(self) -> str:
        return os.path.join(self.root, "data")

    def under(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def restored(self, row: str) -> str:
        return self.under("restored", row.replace("+", "_"))  # nmf+sr: a safe folder name


def data_step(cfg: DemoConfig, p: Paths) -> Step:
    marker = os.path.join(p.data, "_SUCCESS")
    return Step("data", marker, lambda: make_data(cfg, p.data), settings=dataclasses.asdict(cfg.data))


def restore_step(cfg: DemoConfig, p: Paths, row: str, method: str, sr_model: str = "", skip: str = "") -> Step:
    """Restore the test set with ``method`` (and SR with ``sr_model``) into ``restored/<row>``."""
    folder = p.restored(row)
    rcfg = restore_cfg(cfg, p.under("data", "test"), folder, method, p.under("bases"), sr_model, p.under("refiner"))
    # Only what this run reads: restores without SR may finish before train-sr does.
    inputs = (
        "data",
        "learn-bases" if method in ("nmf", "reference") else None,
        "train-sr" if sr_model else None,
        "train-inpaint" if method == "learned" else None,
    )
    settings = {k: v for k, v in dataclasses.asdict(rcfg).items() if k != "ray"}  # results do not depend on it
    marker = os.path.join(folder, "_manifest.json")
    return Step(f"restore {row}", marker, lambda: restore_job.run(rcfg), inputs, settings, skip=skip, output=folder)


def without_sr_steps(cfg: DemoConfig, p: Paths) -> list[Step]:
    """learn-bases, a restore per method, quality: everything that needs no trained model."""
    lb_cfg = learn_bases_cfg(cfg, p.under("data", "train"), p.under("bases"))
    qcfg = quality_cfg(cfg, p.under("data", "test"), p.under("quality"))
    return [
        Step(
            "learn-bases",
            p.under("bases", "meta.json"),
            lambda: learn_bases_job.run(lb_cfg),
            ("data",),
            dataclasses.asdict(lb_cfg.nmf),
        ),
        *(restore_step(cfg, p, m, m) for m in cfg.methods if m != "learned"),  # learned: after train-inpaint
        Step("quality", p.under("quality", f"run={QUALITY_RUN_DATE}"), lambda: quality_job.run(qcfg), ("data",)),
    ]


def training_steps(cfg: DemoConfig, p: Paths) -> list[Step]:
    """train-sr and train-inpaint, when the demo uses their models."""
    steps = []
    if cfg.sr.enabled:
        sr_cfg = train_sr_cfg(cfg, p.under("data", "train"), p.under("sr_model"))
        marker = p.under("sr_model", "meta.json")
        steps.append(Step("train-sr", marker, lambda: train_sr_job.run(sr_cfg), ("data",), dataclasses.asdict(cfg.sr)))
    if "learned" in cfg.methods and cfg.inpaint.enabled:
        ti_cfg = train_inpaint_cfg(cfg, p.under("data", "train_damaged"), p.under("refiner"))
        marker = p.under("refiner", "meta.json")
        settings = dataclasses.asdict(cfg.inpaint)
        steps.append(Step("train-inpaint", marker, lambda: train_inpaint_job.run(ti_cfg), ("data",), settings))
    return steps


def model_steps(cfg: DemoConfig, p: Paths) -> list[Step]:
    """The restores that use a trained model: the refiner (learned), the SR model (nmf+sr)."""
    steps = []
    if "learned" in cfg.methods:
        skip = "" if cfg.inpaint.enabled else "no refiner (inpaint.enabled is false)"
        steps.append(restore_step(cfg, p, "learned", "learned", skip=skip))
    if cfg.sr.enabled:
        steps.append(restore_step(cfg, p, SR_ROW, "nmf", p.under("sr_model")))
    return steps


# ----------------------------------------------------------------------------- run


def check(cfg: DemoConfig) -> None:
    check_ranges(cfg)  # the loader checks these too; a config built in code gets the same checks
    if not cfg.output:
        raise UserError("output is empty: set it (or --out) to the folder where the demo writes its files")
    known = ("learned", "sparse", "nmf", "reference", "fill", "biharmonic", "median", "none")
    unknown = [m for m in cfg.methods if m not in known]
    if unknown:
        raise UserError(f"methods: unknown method {unknown[0]!r} (choose from {', '.join(known)})")


def run(cfg: DemoConfig) -> Summary:
    check(cfg)
    t_start = time.perf_counter()
    p = Paths(os.path.abspath(cfg.output))
    os.makedirs(p.under("report"), exist_ok=True)
    cache = StepCache(p.root, cfg.force)
    cache.run(data_step(cfg, p))
    started_ray = start_ray(cfg)
    without_sr, training, with_models = without_sr_steps(cfg, p), training_steps(cfg, p), model_steps(cfg, p)
    try:
        run_steps(cache, training, beside=without_sr)  # training overlaps the steps that need no model
        run_steps(cache, with_models)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    restores = [s for s in [*without_sr, *with_models] if s.output and not s.skip]
    by_row = {s.row: read_output(s.output) for s in restores}
    outputs = {row: by_row[row] for row in [*cfg.methods, SR_ROW] if row in by_row}  # a fixed order
    found = _found(p, outputs)
    rows, report_outputs = write_report(p.under("report"), p.under("data", "test"), outputs, found, cache.report)
    return _summary(cfg, rows, report_outputs, cache, time.perf_counter() - t_start)


def _found(p: Paths, outputs: dict[str, Any]) -> dict[str, str]:
    """What the demo made, for the summary's outputs."""
    found = {"data": p.data}
    for label, path in (
        ("bases", p.under("bases")),
        ("SR model", p.under("sr_model")),
        ("SR training plot", p.under("sr_model", "training.png")),
        ("refiner", p.under("refiner")),
    ):
        if os.path.exists(path):
            found[label] = path
    quality_report = find_quality_report(p.under("quality"))
    if quality_report:
        found["quality report"] = quality_report
    for name in outputs:
        found[f"restored ({name})"] = p.restored(name)
    return found


def _summary(
    cfg: DemoConfig, rows: list[dict[str, Any]], outputs: dict[str, str], cache: StepCache, seconds: float
) -> Summary:
    table = format_table(
        ["method", "PSNR dB", "SSIM", "PSNR dead px", "dead px after", "rows ok"],
        [[r["method"], r["psnr"], r["ssim"], r["psnr_dead"], r["dead_after"], f"{r['ok']}/{r['rows']}"] for r in rows],
    )
    d = cfg.data
    values: dict[str, Any] = {
        "images": f"{d.n_train} clean (train), {d.n_test} damaged (test), "
        f"{d.size}x{d.size} {'RGB' if d.rgb else 'gray'}",
        "damage": f"blur (shrink x{d.blur_scale:g} and enlarge), then {d.dead_rate:.0%} dead pixels",
    }
    values.update({f"step {k}": v for k, v in cache.report.items()})
    values["seconds"] = seconds
    return Summary(job="demo", values=values, outputs=outputs, table=table)
