"""Two nightly quality runs through the real CLI and a real local Ray: the second run has 5% of
its images given dead pixels and blur; it must flag exactly those, say so in its drift section,
exit non-zero with --fail-on dead_pixels, and its HTML report must render with every image. Each
run's verdict is its exit code, its status.json and its last line; with stderr not a terminal the
log has progress lines."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import ndimage

from imrestore_data import synth
from restore_core import masks
from tests.conftest import png_bytes

pytestmark = pytest.mark.integration

N_IMAGES = 40
DAMAGED = {"img-007", "img-023"}  # 5% of 40
ROOT = Path(__file__).resolve().parents[2]
AGGREGATION: list[str] = []  # extra CLI settings for where the run-wide step runs


def write_images(folder: Path, damage: bool) -> None:
    # Textured photo crops only: their sharpness sits far above the test's blur threshold and
    # they hold no truly black pixels, so nothing but the damage can raise a flag.
    imgs = synth.photo_crops(N_IMAGES, 48, names=("grass", "gravel", "coins", "text", "brick"), seed=7)
    rng = np.random.default_rng(3)
    ids = [f"img-{i:03d}" for i in range(N_IMAGES)]
    blobs = []
    for i, img in zip(ids, imgs, strict=True):
        if damage and i in DAMAGED:
            img, _ = masks.apply_dead_pixels(ndimage.gaussian_filter(img, 2.5), 0.05, rng)
        blobs.append(png_bytes(np.rint(img * 255).astype(np.uint8)))
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(2):
        part = slice(s * N_IMAGES // 2, (s + 1) * N_IMAGES // 2)
        table = pa.table({"id": pa.array(ids[part]), "image": pa.array(blobs[part], pa.binary())})
        pq.write_table(table, folder / f"part-{s}.parquet")


def run_cli(capsys: pytest.CaptureFixture[str], data: Path, out: Path, date: str, *extra: str) -> tuple[int, str]:
    """``python -m jobs quality ...`` through the real CLI entry point, in this process so that
    the runs share the module's Ray (one Ray start instead of three on a 2-CPU machine)."""
    from jobs.cli import main

    argv = [
        "quality", "--config", str(ROOT / "configs" / "quality.yaml"),
        "--set", f"input.path={data}", "--set", f"output={out}",
        "--set", "flags.blurry.value=1.0", "--set", "flags.grayscale.enabled=false",
        "--set", "ray.batch_size=8", "--run-date", date, *AGGREGATION, *extra,
    ]  # fmt: skip
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.timeout(900)
@pytest.mark.parametrize("where", ["driver", pytest.param("cluster", marks=pytest.mark.slow)])
def test_two_nightly_runs(tmp_path, local_ray, capsys, monkeypatch, where):
    """The run-wide step in the driver (the default below cluster_aggregation_rows) and on Ray."""
    if where == "cluster":
        monkeypatch.setattr(sys.modules[__name__], "AGGREGATION", ["--set", "cluster_aggregation_rows=0"])
    out = tmp_path / "quality"
    write_images(tmp_path / "day1", damage=False)
    write_images(tmp_path / "day2", damage=True)
    monkeypatch.setenv("IMRESTORE_PROGRESS_SECONDS", "0")  # a progress line at every update

    code, text = run_cli(capsys, tmp_path / "day1", out, "2024-03-01", "--fail-on", "dead_pixels")
    assert code == 0, text[-3000:]
    assert "scoring: 0/40 images (0%)" in text and "scoring: 40/40 images (100%)" in text, text[-3000:]
    assert text.rstrip().splitlines()[-1].startswith("QUALITY PASS 40 images, 0 unreadable: no limit passed")
    run1 = out / "run=2024-03-01"
    status1 = json.loads((run1 / "status.json").read_text())
    assert (status1["verdict"], status1["exit_code"], status1["failed"]) == ("PASS", 0, [])
    assert (run1 / "_SUCCESS").exists() and (run1 / "report.html").exists()
    summary1 = json.loads((run1 / "summary.json").read_text())
    assert summary1["aggregated_on"] == where
    peak = summary1["driver_peak_rss_mib"]  # the driver's high-water mark after each step, never falling
    assert 50 < peak["planned"] <= peak["scored"] <= peak["aggregated"] < 4096, peak
    flags1 = pq.read_table(run1 / "flags.parquet").to_pydict()
    assert len(flags1["id"]) == N_IMAGES and not any(flags1["flags"])

    # the clean first night as a known-good run: suggested thresholds, nothing scored or written
    code, text = run_cli(capsys, tmp_path / "day1", out, "2024-03-05", "--calibrate", str(run1))
    assert code == 0, text[-3000:]
    assert "quality calibrate" in text and "--set flags.blurry.value=" in text and "--set flags.dark.value=" in text
    assert not (out / "run=2024-03-05").exists()

    code, text = run_cli(
        capsys, tmp_path / "day2", out, "2024-03-02", "--fail-on", "dead_pixels", "--warn-on", "blurry",
        "--set", "flags.blurry.max_share=0.01",
    )  # fmt: skip
    assert code == 1, text[-3000:]  # a failed limit wins over a warning
    assert "dead_pixels: 2 of 40 images (5.00%)" in text and "over by 4.00 points" in text
    assert text.rstrip().splitlines()[-1] == "QUALITY FAIL 40 images: dead_pixels 5.00% > 1.00%"
    status2 = json.loads((out / "_status" / "run=2024-03-02.json").read_text())
    assert (status2["verdict"], status2["exit_code"], status2["counts"]["flagged"]["dead_pixels"]) == ("FAIL", 1, 2)
    assert len(status2["failed"]) == 1 and status2["warned"][0].startswith("blurry: 2 of 40 images")

    run2 = out / "run=2024-03-02"
    flags2 = pq.read_table(run2 / "flags.parquet").to_pydict()
    flagged = {i: set(f.split(",")) for i, f in zip(flags2["id"], flags2["flags"], strict=True) if f}
    assert set(flagged) == DAMAGED
    assert all(f == {"dead_pixels", "blurry"} for f in flagged.values()), flagged

    summary = json.loads((run2 / "summary.json").read_text())
    assert summary["drift"]["previous_run"] == "2024-03-01"
    words = " ".join(summary["drift"]["sentences"])
    assert "Flag dead_pixels rose from 0.0% to 5.0%" in words and "Flag blurry rose" in words
    assert summary["flags"]["blurry"]["count"] == 2 and summary["failures"]
    page = (run2 / "report.html").read_text()
    assert "dead_pixels rose" in page and "img-007" in page
    shards = pq.read_table(run2 / "data")
    assert shards.num_rows == N_IMAGES and "thumbnail" in shards.column_names

    # (a rerun for the same date replacing the run is covered by tests/unit/test_report.py)
    assert not list((out / "_staging").glob("run=*")), "staging left behind"

    from tests.unit.test_report import CHROMIUM, render_dom

    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip("Debian's chromium is not installed (.ci/run installs it as root: apt-get install -y chromium)")
    dom = render_dom(str(run2 / "report.html"), str(tmp_path / "profile"))
    assert 'data-failed="0"' in dom and f'data-loaded="{page.count("<img ")}"' in dom


def test_duplicate_group_thumbnails_read_back_with_ray_tasks(tmp_path, local_ray):
    """Members of a duplicate group that kept no thumbnail (no per-image flag) are read back from
    the Parquet input by id, one Ray task per file, for the report's side-by-side pictures."""
    import imrestore_report as report
    from jobs import quality as quality_job
    from jobs.config_quality import QualityJobConfig
    from restore_core import codec, quality
    from restore_core.config import from_dict

    imgs = synth.photo_crops(4, 40, names=("grass", "gravel"), seed=5)
    blobs = [png_bytes(np.rint(i * 255).astype(np.uint8)) for i in imgs]
    ids, blobs = ["a", "b", "c", "d", "copy-of-b"], [*blobs, blobs[1]]
    (tmp_path / "in").mkdir()
    for k in range(2):  # the copy in the other file than its original
        part = slice(0, 3) if k == 0 else slice(3, 5)
        pq.write_table(
            pa.table({"id": ids[part], "image": pa.array(blobs[part], pa.binary())}), tmp_path / "in" / f"p{k}.parquet"
        )
    cfg = from_dict(
        QualityJobConfig, {"input": {"path": str(tmp_path / "in")}, "flags": {"grayscale": {"enabled": False}}}
    )
    batch = {"id": np.array(ids, dtype=object), "image": np.array(blobs, dtype=object)}
    table = report.with_run_flags(quality.table_from_columns(quality.QualityScorer(cfg)(batch)), cfg)
    summary = report.summarize(table, cfg, "2024-01-03")
    assert summary["duplicate_groups"]["groups"][0]["ids"] == ["b", "copy-of-b"]
    thumbs = quality_job.group_thumbnails(cfg, table, summary)
    assert sorted(thumbs) == ["b", "copy-of-b"] and thumbs["b"] == thumbs["copy-of-b"]
    assert codec.decode(thumbs["b"], 10**6)[0].shape[:2] == (40, 40)
