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

At scale, side by side with cleanvision (``pip install -e '.[bench]'``), on the same generated
64x64 PNG folders (``benchmarks/scale_images.py``): the whole quality job through its CLI (Ray's
start included) against ``Imagelab(data_path=...).find_issues()``, wall time, images/s and the
driver process's peak RSS (VmHWM from /proc, polled), each tool in its own process::

    PYTHONPATH=. nice -n 5 python benchmarks/quality_speed.py --scale 10000 100000 \
        --folder /tmp/qscale --cleanvision-max 10000 --write-docs
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

from benchmarks.doc_blocks import replace_block
from imrestore_data import synth
from jobs.config_quality import QualityJobConfig
from jobs.config_restore import RestoreJobConfig
from restore_core import codec, masks, nmf, sampling
from restore_core.bases import Bases, BasesMeta
from restore_core.config import from_dict
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


def _watch(cmd: list[str], env: dict[str, str] | None = None) -> tuple[int, float, float, str]:
    """Run ``cmd``; return its exit code, wall seconds, its own peak RSS in MiB (VmHWM, read
    every 0.1 s while it runs; children such as Ray's processes not counted) and its output tail."""
    import subprocess
    import tempfile

    with tempfile.TemporaryFile() as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        peak = 0.0
        while proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            peak = max(peak, int(line.split()[1]) / 1024)
            except OSError:
                pass
            time.sleep(0.1)
        wall = time.perf_counter() - t0
        log.seek(0)
        tail = log.read().decode(errors="replace")[-3000:]
    return proc.returncode, wall, peak, tail


CLEANVISION = """
import sys
from cleanvision import Imagelab
lab = Imagelab(data_path=sys.argv[1])
lab.find_issues()
print("cleanvision images", len(lab.issues))
"""


def scale(args: argparse.Namespace) -> None:
    """The at-scale side-by-side: the quality job vs cleanvision on the same folders."""
    import platform
    import shutil
    import sys

    from benchmarks.scale_images import generate_folder

    root = args.folder
    rows = []
    load0 = os.getloadavg()[0]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # the job starts its own Ray
    config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "quality.yaml")
    for n in args.scale:
        images = os.path.join(root, f"img{n}")
        generate_folder(images, n)
        out = os.path.join(root, f"runs{n}")
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "jobs", "quality", "--config", config, "--set", f"input.path={images}",
               "--set", "input.format=images", "--set", f"output={out}", "--run-date", "2024-01-01"]  # fmt: skip
        for _attempt in range(3):  # a busy machine can time Ray's start out: try again
            code, wall, peak, tail = _watch(cmd, env)
            if code in (0, 1) or "timed out during startup" not in tail:
                break
        print(tail[-600:] if code not in (0, 1) else "", flush=True)
        rows.append(("quality job (Ray, 2 CPUs)", n, code, wall, peak))
        print(rows[-1], flush=True)
        if n <= args.cleanvision_max:
            cv_env = dict(env)
            if args.cleanvision_path:  # cleanvision installed apart (pip install --target DIR cleanvision ...)
                cv_env["PYTHONPATH"] = os.pathsep.join(p for p in (args.cleanvision_path, env.get("PYTHONPATH")) if p)
            code, wall, peak, tail = _watch([sys.executable, "-c", CLEANVISION, images], cv_env)
            print(tail[-600:] if code else "", flush=True)
            rows.append((f"cleanvision {_version('cleanvision', args.cleanvision_path)}", n, code, wall, peak))
            print(rows[-1], flush=True)
    load1 = os.getloadavg()[0]
    head = (
        f"{platform.machine()}, {os.cpu_count()} CPUs shared with other jobs, load average {load0:.1f} at the start "
        f"and {load1:.1f} at the end; generated 64x64 RGB PNG files (1% exact and 1% near copies, 1% dark, 1% blurred)"
    )
    lines = [
        head,
        "",
        "| tool | images | exit | wall (s) | images/s | driver peak RSS (MiB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for tool, n, code, wall, peak in rows:
        lines.append(f"| {tool} | {n:,} | {code} | {wall:.1f} | {n / wall:.1f} | {peak:.0f} |")
    job = {n: peak for tool, n, code, _, peak in rows if tool.startswith("quality") and code in (0, 1)}
    if len(job) >= 2:
        a, b = min(job), max(job)
        lines += ["", f"Quality job driver peak RSS at {b:,} images / at {a:,}: {job[b] / job[a]:.3f}"]
    text = "\n".join(lines)
    print(text)
    if args.write_docs:
        doc = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "nightly.md")
        replace_block(doc, "quality_scale", text, heading="## At scale")


def synthetic_shards(folder: str, n: int, per_shard: int = 10000, seed: int = 0) -> None:
    """``n`` scored rows as the scoring step stages them (every quality column, random metrics,
    64x64 sizes with 0.5% odd ones, 1% exact and 1% near copies, a 2 KB thumbnail on every 20th),
    in shards of ``per_shard``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from restore_core.quality import NUMERIC_COLUMNS, TEXT_COLUMNS

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for s0 in range(0, n, per_shard):
        m = min(per_shard, n - s0)
        k = np.arange(s0, s0 + m)
        cols: dict[str, object] = {c: rng.uniform(0, 1, m) for c in NUMERIC_COLUMNS}
        cols["width"] = np.where(k % 200 == 3, 20.0, 64.0)
        cols["height"] = np.full(m, 64.0)
        cols["decode_error"] = np.zeros(m)
        h = rng.integers(0, 2**63, m, dtype=np.int64).astype(np.uint64) | np.uint64(0x00FF00FF00000000)
        near = k % 100 == 8
        h[near] = h[np.flatnonzero(near) - 1] ^ np.uint64(0b1011)
        sha = [f"{x:064x}" for x in rng.integers(0, 2**62, m)]
        for j in np.flatnonzero(k % 100 == 7)[1:]:
            sha[j], h[j] = sha[j - 1], h[j - 1]
        text = {c: [None] * m for c in TEXT_COLUMNS}
        text.update(id=[f"d{i // 10000:02d}/i{i:06d}.png" for i in k], status=["ok"] * m, mode=["RGB"] * m,
                    format=["PNG"] * m, sha256=sha, dhash=[f"{int(x):016x}" for x in h], flags=[""] * m)  # fmt: skip
        table = pa.table(
            {
                **{c: pa.array(v, pa.string()) for c, v in text.items()},
                **{c: pa.array(v) for c, v in cols.items()},
                # flagged rows keep a small PNG: 2 KB on every 20th row here
                "thumbnail": pa.array([rng.bytes(2000) if i % 20 == 0 else None for i in k], pa.binary()),
            }
        )
        pq.write_table(table, os.path.join(folder, f"part-{s0 // per_shard:05d}.parquet"))


AGGREGATE = """
import sys, fsspec, ray
from jobs import quality_aggregate
from jobs.ray_utils import arrow_filesystem, init_ray
from jobs.config_ray import RayConfig
from jobs.config_quality import QualityJobConfig
from restore_core.io.locations import Location
init_ray(RayConfig(num_cpus=2))
staging = sys.argv[1]
out_fs, _ = arrow_filesystem(Location(staging))
r = quality_aggregate.aggregate_run(QualityJobConfig(), fsspec.filesystem("file"), out_fs, staging, "2024-01-02")
print("rows", r.summary["rows"], "groups", r.summary["duplicate_groups"]["count"])
"""

STREAMING = """
import sys, fsspec, pyarrow.parquet as pq
from restore_core import run_wide
from restore_core.config import QualityConfig
staging = sys.argv[1]
r = run_wide.aggregate(fsspec.filesystem("file"), staging, QualityConfig(), "2024-01-02", None)
print("rows", r.summary["rows"], "groups", r.summary["duplicate_groups"]["count"])
"""

IN_DRIVER = """
import sys, os, pyarrow as pa, pyarrow.parquet as pq
import imrestore_report as report
from jobs.config_quality import QualityJobConfig
d = os.path.join(sys.argv[1], "data")
t = pa.concat_tables([pq.read_table(os.path.join(d, f)) for f in sorted(os.listdir(d))]).sort_by("id")
cfg = QualityJobConfig()
t = report.with_run_flags(t, cfg)
s = report.summarize(t, cfg, "2024-01-02")
report.worst_rows(t, cfg)
print("rows", s["rows"], "groups", s["duplicate_groups"]["count"])
"""


def aggregate_only(args: argparse.Namespace) -> None:
    """Driver peak RSS of the run-wide step alone on staged shards of each size: the Ray
    aggregation (jobs/quality_aggregate.py) against the former in-driver path (every shard read
    into the driver, report.with_run_flags/summarize/worst_rows)."""
    import shutil
    import sys

    rows = []
    load0 = os.getloadavg()[0]
    for n in args.aggregate_rows:
        staging = os.path.join(args.folder, f"staged{n}")
        if not os.path.isdir(os.path.join(staging, "data")):
            synthetic_shards(os.path.join(staging, "data"), n)
        variants = [
            ("in the driver, streaming (this job)", STREAMING),
            ("in the driver, whole table (before)", IN_DRIVER),
        ]
        if args.with_ray:
            variants.append(("Ray aggregation (this job from cluster_aggregation_rows)", AGGREGATE))
        for name, code_text in variants:
            shutil.rmtree(os.path.join(staging, "_flags"), ignore_errors=True)
            code, wall, peak, tail = _watch([sys.executable, "-c", code_text, staging])
            print(tail[-400:] if code else "", flush=True)
            rows.append((name, n, code, wall, peak))
            print(rows[-1], flush=True)
    load1 = os.getloadavg()[0]
    lines = [
        f"run-wide step alone on synthetic staged shards; {os.cpu_count()} CPUs shared, load average {load0:.1f} "
        f"at the start and {load1:.1f} at the end",
        "",
        "| run-wide step | rows | exit | wall (s) | driver peak RSS (MiB) |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {t} | {n:,} | {c} | {w:.1f} | {p:.0f} |" for t, n, c, w, p in rows]
    peaks = {(t, n): p for t, n, c, _, p in rows if c == 0}
    lo, hi = min(args.aggregate_rows), max(args.aggregate_rows)
    lines.append("")
    for t in dict.fromkeys(t for t, _, _, _, _ in rows):
        if (t, lo) in peaks and (t, hi) in peaks and lo != hi:
            lines.append(f"{t}: driver peak RSS at {hi:,} rows / at {lo:,}: {peaks[(t, hi)] / peaks[(t, lo)]:.3f}")
    print("\n".join(lines))


def _version(name: str, path: str | None = None) -> str:
    from importlib.metadata import distributions, version

    try:
        if path:
            return next(d.version for d in distributions(path=[path]) if d.metadata["Name"].lower() == name)
        return version(name)
    except Exception:
        return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, nargs="*", help="at scale: these numbers of generated images (see above)")
    ap.add_argument("--folder", default="/tmp/quality_scale", help="at scale: where the images and runs go")
    ap.add_argument("--cleanvision-max", type=int, default=10000, help="at scale: cleanvision up to this size only")
    ap.add_argument("--cleanvision-path", help="at scale: a folder to put on cleanvision's PYTHONPATH")
    ap.add_argument("--aggregate-rows", type=int, nargs="*", help="the run-wide step alone on this many staged rows")
    ap.add_argument("--with-ray", action="store_true", help="--aggregate-rows: the Ray aggregation too (slow here)")
    ap.add_argument("--write-docs", action="store_true", help="at scale: write the table into docs/nightly.md")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--rgb", action="store_true")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--restore-n", type=int, default=16, help="images for the (slow) restore timing")
    ap.add_argument("--k", type=int, default=64, help="bases for the restore step")
    args = ap.parse_args()
    if args.aggregate_rows:
        return aggregate_only(args)
    if args.scale:
        return scale(args)
    torch.set_num_threads(1)

    rows = make_rows(args.n, args.size, args.rgb, seed=1)
    scorer = QualityScorer(QualityJobConfig())
    q = time_step(scorer, rows, args.batch, args.repeats)

    bases = learn_bases(args.k, 8)
    restorer = Restorer(bases, None, from_dict(RestoreJobConfig, {"device": "cpu", "fit": {"method": "nmf"}}))
    few = {k: v[: args.restore_n] for k, v in rows.items()}
    r = time_step(restorer, few, min(args.batch, args.restore_n), 1)
    median = Restorer(None, None, from_dict(RestoreJobConfig, {"fit": {"method": "median"}}))
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
