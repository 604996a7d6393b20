"""Wall time of a nightly quality run after 1% new files: incremental against a full rescan.

Generates a folder of small PNG images (photo crops of scikit-image's bundled photos, some
darkened, some exact copies), then runs the quality job three times through its CLI, each in a
fresh process (``python -m jobs quality``, as cron runs it):

1. the first night: every image scored (no earlier run);
2. the next night, after adding 1% new images: incremental (the first run's rows of unchanged
   files reused, only the new files scored);
3. the same data with ``--full``: every image scored again, for comparison.

Each time is the process's wall time: Python and library imports, Ray start-up and shutdown,
listing the input, scoring, aggregation (duplicates, flags, drift), report and publishing. A
fourth line measures an empty Ray start and stop in a fresh process, the part no run avoids.
Prints one table with the machine, its load and the sizes; the numbers go into docs/nightly.md.

Usage::

    PYTHONPATH=. python benchmarks/quality_incremental.py                 # 20,000 images of 64x64
    PYTHONPATH=. python benchmarks/quality_incremental.py --n 10000 --num-cpus 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from imrestore_data import synth
from restore_core import codec

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "brick", "grass", "gravel", "coins", "text", "moon")


def write_images(folder: Path, start: int, n: int, size: int, seed: int) -> int:
    """``n`` PNGs named ``img-<k>.png`` in 100 subfolders; every 20th darkened, every 50th a copy."""
    imgs = synth.photo_crops(n, size, names=PHOTOS, seed=seed)
    written = 0
    for j, img in enumerate(imgs):
        k = start + j
        if k % 20 == 3:
            img = img * 0.05
        blob = codec.encode_png(np.clip(img, 0.0, 1.0))
        if k % 50 == 7 and j > 0:
            blob = codec.encode_png(np.clip(imgs[j - 1], 0.0, 1.0))
        sub = folder / f"d{k % 100:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"img-{k:06d}.png").write_bytes(blob)
        written += len(blob)
    return written


def run_job(data: Path, out: Path, date: str, num_cpus: int, *extra: str) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "jobs", "quality", "--config", str(ROOT / "configs" / "quality.yaml")]
    cmd += ["--set", f"input.path={data}", "--set", "input.format=images", "--set", f"output={out}"]
    cmd += ["--set", f"ray.num_cpus={num_cpus}", "--run-date", date, *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1) or not (out / f"run={date}" / "summary.json").exists():
        raise SystemExit(f"quality run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall, json.loads((out / f"run={date}" / "summary.json").read_text())


def ray_start_stop(num_cpus: int) -> float:
    code = (
        f"import ray; ray.init(address='local', num_cpus={num_cpus}, include_dashboard=False, "
        "logging_level='ERROR', log_to_driver=False); ray.shutdown()"
    )
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="images on the first night")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--added", type=float, default=0.01, help="share of new images on the second night")
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--skip-full", action="store_true", help="leave out the third run (--full on the same data)")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary folder)")
    args = ap.parse_args()

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="quality_incremental_"))
    data, out, out_full = work / "images", work / "quality", work / "quality_full"
    load_before = os.getloadavg()
    try:
        t0 = time.perf_counter()
        size_bytes = write_images(data, 0, args.n, args.size, seed=1)
        t_gen = time.perf_counter() - t0
        t_ray = ray_start_stop(args.num_cpus)
        t1, s1 = run_job(data, out, "2024-01-01", args.num_cpus)
        n_new = max(1, round(args.n * args.added))
        size_bytes += write_images(data, args.n, n_new, args.size, seed=2)
        t2, s2 = run_job(data, out, "2024-01-02", args.num_cpus)
        t3, s3 = run_job(data, out_full, "2024-01-02", args.num_cpus, "--full") if not args.skip_full else (0.0, {})
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()

    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "?"
    print(f"machine: {cpu}, {os.cpu_count()} CPUs visible, Ray given {args.num_cpus}; {platform.platform()}")
    print(
        f"load average (1/5/15 min) before: {load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f}, "
        f"after: {load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f}"
    )
    print(
        f"data: {args.n} PNG images of {args.size}x{args.size} (gray photo crops), then {n_new} added "
        f"({100 * args.added:.0f}%); {size_bytes / 1e6:.1f} MB in all; generated in {t_gen:.0f} s"
    )
    print()
    rows = [
        ("empty Ray start + stop", t_ray, "", "", "", ""),
        ("1st night (no earlier run)", t1, s1),
        (f"2nd night, +{n_new} images, incremental", t2, s2),
    ]
    if s3:
        rows.append(("2nd night's data, --full", t3, s3))
    head = f"{'run':<40} {'wall s':>7} {'vs 1st':>7} {'mode':>12} {'scored':>7} {'reused':>7} {'job s':>7}"
    print(head)
    print("-" * len(head))
    for row in rows:
        if len(row) == 6:
            print(f"{row[0]:<40} {row[1]:>7.1f} {100 * row[1] / t1:>6.1f}%")
            continue
        name, wall, s = row  # type: ignore[misc]
        inc = s.get("incremental", {})
        print(
            f"{name:<40} {wall:>7.1f} {100 * wall / t1:>6.1f}% {inc.get('mode', '?'):>12} "
            f"{inc.get('rows_scored', s['rows']):>7} {inc.get('rows_reused', 0):>7} {s['seconds']['total']:>7.1f}"
        )
    same = (
        bool(s3)
        and s2["rows"] == s3["rows"]
        and {n: f["count"] for n, f in s2["flags"].items()} == {n: f["count"] for n, f in s3["flags"].items()}
    )
    print()
    if s3:
        print(f"incremental = full on the same data (rows, flag counts): {same}")
    print("wall s: the whole process (imports, Ray start-up and shutdown, listing, scoring, aggregation, report);")
    print("job s: the job's own clock from Ray start to publishing (summary.json seconds.total).")


if __name__ == "__main__":
    main()
