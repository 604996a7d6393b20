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

from benchmarks.doc_blocks import replace_block
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
        sub = folder / f"d{k % 100:02d}"
        path = sub / f"img-{k:06d}.png"
        if path.exists():  # the set is the same on every run (--keep DIR reuses it)
            written += path.stat().st_size
            continue
        blob = codec.encode_png(np.clip(img, 0.0, 1.0))
        if k % 50 == 7 and j > 0:
            blob = codec.encode_png(np.clip(imgs[j - 1], 0.0, 1.0))
        sub.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
        written += len(blob)
    return written


def run_job(data: Path, out: Path, date: str, num_cpus: int, *extra: str) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "jobs", "quality", "--config", str(ROOT / "configs" / "quality.yaml")]
    cmd += ["--set", f"input.path={data}", "--set", "input.format=images", "--set", f"output={out}"]
    cmd += ["--set", f"ray.num_cpus={num_cpus}", "--run-date", date, *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _attempt in range(3):  # a busy machine can time Ray's start out: try again
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode in (0, 1) or "timed out during startup" not in proc.stdout + proc.stderr:
            break
    if proc.returncode not in (0, 1) or not (out / f"run={date}" / "summary.json").exists():
        raise SystemExit(f"quality run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall, json.loads((out / f"run={date}" / "summary.json").read_text())


def flags_by_id(run: Path) -> dict[str, tuple]:
    """``id -> (flags, exact_duplicates, near_duplicates)`` of a finished run's flags.parquet."""
    import pyarrow.parquet as pq

    t = pq.read_table(run / "flags.parquet", columns=["id", "flags", "exact_duplicates", "near_duplicates"])
    cols = [t.column(c).to_pylist() for c in t.column_names]
    return {i: (",".join(sorted((f or "").split(","))), e, n) for i, f, e, n in zip(*cols, strict=True)}


def ray_start_stop(num_cpus: int) -> float:
    code = (
        f"import ray; ray.init(address='local', num_cpus={num_cpus}, include_dashboard=False, "
        "logging_level='ERROR', log_to_driver=False); ray.shutdown()"
    )
    for _attempt in range(3):  # a busy machine can time Ray's start out: try again
        t0 = time.perf_counter()
        if subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0:
            return time.perf_counter() - t0
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="images on the first night")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--added", type=float, default=0.01, help="share of new images on the second night")
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--skip-full", action="store_true", help="leave out the third run (--full on the same data)")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary folder)")
    ap.add_argument("--write-docs", action="store_true", help="write the table into docs/nightly.md")
    args = ap.parse_args()

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="quality_incremental_"))
    data, out, out_full = work / "images", work / "quality", work / "quality_full"
    load_before = os.getloadavg()
    try:
        size_bytes = write_images(data, 0, args.n, args.size, seed=1)
        t_ray = ray_start_stop(args.num_cpus)
        t1, s1 = run_job(data, out, "2024-01-01", args.num_cpus)
        n_new = max(1, round(args.n * args.added))
        size_bytes += write_images(data, args.n, n_new, args.size, seed=2)
        t2, s2 = run_job(data, out, "2024-01-02", args.num_cpus)
        t3, s3 = run_job(data, out_full, "2024-01-02", args.num_cpus, "--full") if not args.skip_full else (0.0, {})
        same_flags = bool(s3) and flags_by_id(out / "run=2024-01-02") == flags_by_id(out_full / "run=2024-01-02")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()

    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "?"
    lines = [
        f"Machine: {cpu}, {os.cpu_count()} CPUs visible (shared with other jobs), Ray given {args.num_cpus}; "
        f"load average (1/5/15 min) {load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f} before, "
        f"{load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f} after. Data: {args.n:,} PNG images of "
        f"{args.size}x{args.size} (gray photo crops), then {n_new:,} added ({100 * args.added:.0f}%); "
        f"{size_bytes / 1e6:.1f} MB in all.",
        "",
        "| run | wall s | vs 1st | mode | scored | scored in | reused | job s |",
        "|---|---:|---:|---|---:|---|---:|---:|",
        f"| empty Ray start + stop | {t_ray:.1f} | {100 * t_ray / t1:.1f}% | | | | | |",
    ]
    runs = [("1st night (no earlier run)", t1, s1), (f"2nd night, +{n_new:,} images, incremental", t2, s2)]
    if s3:
        runs.append(("2nd night's data, `--full`", t3, s3))
    for name, wall, s in runs:
        inc = s.get("incremental", {})
        lines.append(
            f"| {name} | {wall:.1f} | {100 * wall / t1:.1f}% | {inc.get('mode', '?')} | "
            f"{inc.get('rows_scored', s['rows']):,} | {s.get('scored_in', 'ray')} | {inc.get('rows_reused', 0):,} | "
            f"{s['seconds']['total']:.1f} |"
        )
    lines.append("")
    if s3:
        same = s2["rows"] == s3["rows"] and same_flags
        lines.append(f"Incremental run = full run on the same data (every id's flags and duplicate counts): {same}.")
    lines.append(
        "wall s: the whole process (imports, Ray start-up and shutdown when Ray is used, listing, scoring, "
        "aggregation, report); job s: the job's own clock (summary.json seconds.total)."
    )
    text = "\n".join(lines)
    print(text)
    if args.write_docs:
        write_docs(text)


def write_docs(text: str) -> None:
    replace_block(ROOT / "docs" / "nightly.md", "quality_incremental", text)


if __name__ == "__main__":
    main()
