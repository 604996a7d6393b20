"""Throughput of the Ray restore job against the same Restorer called in-process.

    python benchmarks/pipeline.py --images 32 --per-file 32 --cpus 2 --scales 1 4 16

Both sides restore the same Parquet shards of damaged images with the same bases and config on
the same number of cores: in-process, one Python process calls ``Restorer`` on batches (torch
with ``--cpus`` threads); the job runs ``jobs.restore.run`` on an embedded Ray with ``--cpus``
CPUs (read tasks, an actor pool, write tasks, shard commits). Reported per data size: images/s
of each, their ratio (job pipeline time, and end-to-end with Ray start-up), where the job's time
went (actor restore time, reads, writes, commits) and the peak resident memory of the process
tree (driver + Ray workers), sampled from /proc.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imrestore_data import synth
from jobs.config_restore import RestoreJobConfig
from restore_core import masks, nmf, sampling
from restore_core.bases import Bases, BasesMeta
from restore_core.config import from_dict
from restore_core.io.artifacts import save_bases
from restore_core.io.locations import Location


def _png(arr: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def make_data(folder: Path, n_images: int, size: int, per_file: int, seed: int = 0) -> None:
    """``n_images`` gray photo crops (size x size) with 30% dead pixels, in Parquet files."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    crops = synth.photo_crops(min(n_images, 64), size, seed=seed)
    for f, start in enumerate(range(0, n_images, per_file)):
        ids, blobs = [], []
        for i in range(start, min(n_images, start + per_file)):
            damaged, _ = masks.apply_dead_pixels(crops[i % len(crops)], 0.3, rng)
            ids.append(f"img-{i:07d}")
            blobs.append(_png(np.rint(damaged * 255).astype(np.uint8)))
        pq.write_table(pa.table({"id": ids, "image": pa.array(blobs, pa.binary())}), folder / f"part-{f:04d}.parquet")


def make_bases(folder: Path, k: int, patch: int) -> None:
    rng = np.random.default_rng(1)
    clean = synth.photo_crops(32, 64, seed=1)
    X = np.concatenate([sampling.sample_patches(im, patch, 1, 200, rng) for im in clean])
    result = nmf.learn_bases(X, k, max_iter=50, seed=0, device="cpu")
    meta = BasesMeta(mode="patch", k=k, n_pixels=patch * patch, channels=1, patch_size=patch, n_samples=len(X))
    save_bases(Bases(H=result.H_.astype(np.float32), meta=meta), Location(str(folder)))


class PeakRSS:
    """Samples the resident memory of this process and all its descendants (Ray's GCS, raylet,
    workers) every 0.2 s; ``peak`` is the largest total seen, in bytes."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(os.getpid()))
            self._stop.wait(0.2)


def tree_rss(root: int) -> int:
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/statm") as f:
                rss[int(entry)] = int(f.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def job_config(data: Path, bases: Path, out: Path, cpus: int, batch: int) -> RestoreJobConfig:
    return from_dict(
        RestoreJobConfig,
        {
            "input": {"path": str(data)},
            "output": {"path": str(out), "overwrite": True},
            "bases": str(bases),
            "device": "cpu",
            "ray": {"num_cpus": cpus, "batch_size": batch},
        },
    )


def in_process(cfg: RestoreJobConfig, cpus: int) -> tuple[float, int]:
    """Seconds for ``Restorer`` over every row, read + restore + encode, no writing."""
    import torch

    from restore_core.io.artifacts import load_bases
    from restore_core.pipeline import Restorer

    torch.set_num_threads(cpus)
    restorer = Restorer(load_bases(Location(cfg.bases)), None, cfg)
    t0 = time.perf_counter()
    n = 0
    for path in sorted(Path(cfg.input.path).glob("*.parquet")):
        table = pq.read_table(path)
        for start in range(0, table.num_rows, cfg.ray.batch_size):
            part = table.slice(start, cfg.ray.batch_size)
            batch = {c: np.asarray(part.column(c).to_pylist(), dtype=object) for c in part.column_names}
            n += len(restorer(batch)["id"])
    return time.perf_counter() - t0, n


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32, help="images at scale 1")
    ap.add_argument("--size", type=int, default=64, help="image side (pixels)")
    ap.add_argument("--per-file", type=int, default=32, help="rows per input Parquet file (= per shard)")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--out", default="bench_out/pipeline.json")
    args = ap.parse_args(argv)

    import ray

    from jobs import restore

    work = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    make_bases(work / "bases", args.k, args.patch)
    results: list[dict[str, Any]] = []
    for scale in args.scales:
        n = args.images * scale
        data = work / f"data_x{scale}"
        make_data(data, n, args.size, args.per_file)
        cfg = job_config(data, work / "bases", work / f"out_x{scale}", args.cpus, args.batch)
        t_in, rows = in_process(cfg, args.cpus)
        t0 = time.perf_counter()
        with PeakRSS() as mem:
            summary = restore.run(cfg)
        t_job_total = time.perf_counter() - t0
        v = summary.values
        t_pipe = float(v["time: pipeline s"])
        row = {
            "scale": scale,
            "images": rows,
            "in_process_s": t_in,
            "in_process_img_s": rows / t_in,
            "job_pipeline_s": t_pipe,
            "job_img_s": rows / t_pipe,
            "job_total_s": t_job_total,
            "ratio_pipeline": (rows / t_pipe) / (rows / t_in),
            "ratio_end_to_end": t_in / t_job_total,
            "actor_restore_s": v["time: restore s (actors)"],
            "read_s": v["time: read s (tasks)"],
            "write_s": v["time: write s (tasks)"],
            "commit_s": v["time: commit s (tasks)"],
            "actors": v["actors"],
            "actor_busy_fraction": v["actor busy fraction"],
            "peak_rss_mib": mem.peak / 2**20,
        }
        results.append(row)
        print(json.dumps(row), flush=True)
    ray.shutdown()
    report = {
        "machine": {
            "cpus_visible": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_1m_at_end": os.getloadavg()[0],
        },
        "args": vars(args),
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    hdr = (
        f"{'scale':>5} {'images':>7} {'in-proc img/s':>13} {'job img/s':>10} {'ratio':>6} "
        f"{'job total s':>11} {'peak MiB':>9}"
    )
    print(hdr)
    for r in results:
        print(
            f"{r['scale']:>5} {r['images']:>7} {r['in_process_img_s']:>13.2f} {r['job_img_s']:>10.2f} "
            f"{r['ratio_pipeline']:>6.2f} {r['job_total_s']:>11.1f} {r['peak_rss_mib']:>9.0f}"
        )
    return report


if __name__ == "__main__":
    main()
