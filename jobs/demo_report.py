"""The demo's report: the results table (a row per method), the before/after grid, ``results.csv``
and ``summary.json`` under ``<output>/report/``."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from imrestore_data import demo_data
from restore_core import codec, metrics

RESULT_KEYS = ["method", "psnr", "ssim", "psnr_dead", "dead_after", "ok", "rows"]


def read_output(folder: str) -> Any:
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


def find_quality_report(folder: str) -> str:
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


def write_report(
    report_dir: str, test: str, outputs: dict[str, Any], found: dict[str, str], steps: dict[str, str]
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Write the grid, ``results.csv`` and ``summary.json``; the results rows and every output's place.

    ``found`` lists what the demo made before the report (data, artifacts, restored folders...).
    """
    import pyarrow.parquet as pq

    rows = results_rows(outputs)
    report_outputs: dict[str, str] = {"data": found["data"]}
    if outputs:
        grid = os.path.join(report_dir, "before_after.png")
        plot_grid(pq.read_table(test), outputs, grid)  # the test folder of shards
        report_outputs["before/after grid"] = grid
    csv_path = os.path.join(report_dir, "results.csv")
    with open(csv_path, "w", encoding="utf-8") as f:
        f.write(",".join(RESULT_KEYS) + "\n")
        for r in rows:
            f.write(",".join(str(r[k]) for k in RESULT_KEYS) + "\n")
    report_outputs["results"] = csv_path
    report_outputs.update({k: v for k, v in found.items() if k != "data"})
    summary_path = os.path.join(report_dir, "summary.json")
    with open(summary_path, "w", encoding="utf-8") as f:
        json.dump({"results": rows, "steps": steps, "outputs": report_outputs}, f, indent=2, default=str)
    report_outputs["summary"] = summary_path
    return rows, report_outputs
