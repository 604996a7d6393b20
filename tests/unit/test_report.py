"""Summary, flags, drift and the static HTML report (imrestore_report and the core modules it gathers)."""

import json
import os
import re
import shutil
import subprocess

import fsspec
import numpy as np
import pyarrow as pa
import pytest
from scipy import ndimage

import imrestore_report as report
from imrestore_data import synth
from jobs.config_quality import QualityJobConfig
from restore_core import masks, quality
from restore_core.config import QualityConfig, from_dict
from restore_core.errors import UserError
from tests.conftest import png_bytes

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def enc(img: np.ndarray) -> bytes:
    return png_bytes(np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def cfg() -> QualityJobConfig:
    flags = {"blurry": {"value": 1.0}, "grayscale": {"enabled": False}}  # the photos are gray
    return from_dict(QualityJobConfig, {"flags": flags, "fail_on": ["dead_pixels"]})


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return synth.photo_crops(20, 40, names=("grass", "gravel", "coins", "text"), seed=0)


def scored(cfg: QualityConfig, imgs, ids) -> pa.Table:
    batch = {"id": np.array(ids, dtype=object), "image": np.array([enc(i) for i in imgs], dtype=object)}
    out = quality.QualityScorer(cfg)(batch)
    return report.with_run_flags(quality.table_from_columns(out), cfg)


def test_summary_drift_and_failures(cfg, images):
    ids = [f"img{i:02d}" for i in range(20)]
    before = scored(cfg, images, ids)
    s0 = report.summarize(before, cfg, "2024-01-01")
    assert s0["rows"] == 20 and s0["flags"]["dead_pixels"]["count"] == 0
    assert report.failures(s0, cfg.fail_on) == []
    rng = np.random.default_rng(0)
    damaged = list(images[:19])
    damaged[3] = masks.apply_dead_pixels(ndimage.gaussian_filter(images[3], 3.0), 0.05, rng)[0]
    damaged.append(images[0])  # an exact duplicate under a new id
    ids2 = [*ids[:19], "copy_of_img00"]
    after = scored(cfg, damaged, ids2)
    s1 = report.summarize(after, cfg, "2024-01-02")
    flags = dict(zip(after.column("id").to_pylist(), after.column("flags").to_pylist(), strict=True))
    assert set(flags["img03"].split(",")) == {"dead_pixels", "blurry"}
    assert flags["img00"] == flags["copy_of_img00"] == "exact_duplicates"
    assert s1["flags"]["dead_pixels"]["share"] == pytest.approx(0.05)
    assert s1["duplicate_groups"]["groups"][0]["ids"] == ["img00", "copy_of_img00"]
    fails = report.failures(s1, cfg.fail_on)
    assert len(fails) == 1 and fails[0].startswith("dead_pixels: 1 of 20 images (5.00%)") and "over by 4.00" in fails[0]
    drift = report.compare(s1, s0, ids2, ids)
    text = " ".join(drift["sentences"])
    assert "dead_pixels rose from 0.0% to 5.0%" in text
    assert "1 images added and 1 removed" in text
    assert drift["examples_added"] == ["copy_of_img00"] and drift["examples_removed"] == ["img19"]
    same = report.compare(s0, s0, ids, ids)
    assert same["sentences"] == ["No notable change since 2024-01-01."]


def test_run_date():
    assert re.match(r"^\d{4}-\d{2}-\d{2}$", report.run_date_or_today(""))
    assert report.run_date_or_today("2024-02-29") == "2024-02-29"
    for bad in ("2023-02-29", "yesterday", "2024/01/01"):
        with pytest.raises(UserError, match="run_date"):
            report.run_date_or_today(bad)


def test_publish_replaces_a_run(tmp_path):
    fs = fsspec.filesystem("file")
    root = str(tmp_path)
    for content in (b"first", b"second"):
        staging = report.staging_path(root, "2024-01-01")
        report.put(fs, f"{staging}/summary.json", content)
        report.put(fs, f"{staging}/{report.SUCCESS}", b"")
        report.publish_run(fs, staging, root, "2024-01-01")
    assert fs.cat(f"{root}/run=2024-01-01/summary.json") == b"second"
    assert report.list_runs(fs, root) == ["2024-01-01"]
    fs.mkdir(f"{root}/run=2024-01-02")  # unfinished: no _SUCCESS
    assert report.list_runs(fs, root) == ["2024-01-01"]
    assert not [p for p in fs.ls(f"{root}/_staging") if "2024" in p]


def test_publish_on_an_object_store():
    fs = fsspec.filesystem("memory")
    root = "/qa-publish"
    for content in (b"first", b"second"):
        staging = report.staging_path(root, "2024-01-01")
        report.put(fs, f"{staging}/data/part-0.parquet", content)
        report.put(fs, f"{staging}/{report.SUCCESS}", b"")
        report.publish_run(fs, staging, root, "2024-01-01")
    assert fs.cat(f"{root}/run=2024-01-01/data/part-0.parquet") == b"second"
    assert report.list_runs(fs, root) == ["2024-01-01"]


def render_dom(html_path: str, profile: str) -> str:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--allow-file-access-from-files",
        "--virtual-time-budget=5000",
        "--dump-dom",
        f"file://{html_path}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason="Debian's chromium is not installed (.ci/run installs it as root: apt-get install -y chromium)",
)
def test_html_renders_in_headless_chromium(tmp_path, cfg, images):
    rng = np.random.default_rng(1)
    imgs = list(images[:10])
    imgs[2] = masks.apply_dead_pixels(images[2], 0.1, rng)[0]
    table = scored(cfg, imgs, [f"i{k}" for k in range(10)])
    summary = report.summarize(table, cfg, "2024-01-03")
    summary["drift"] = report.compare(summary, None, [], None)
    summary["failures"] = report.failures(summary, cfg.fail_on)
    fs = fsspec.filesystem("file")
    folder = str(tmp_path / "run=2024-01-03")
    path = report.write_report(fs, folder, table, summary, [], cfg)
    assert os.path.exists(os.path.join(folder, "plots", "hist_sharpness.png"))
    assert os.path.exists(os.path.join(folder, "thumbs", "dead_pixels_0.jpg"))
    page = open(path, encoding="utf-8").read()
    assert "file://" not in page and "http" not in page  # relative links only: opens with no server
    dom = render_dom(path, str(tmp_path / "profile"))
    status = re.search(r'id="image-status"[^>]*', dom)
    assert status, dom[-2000:]
    failed = re.search(r'data-failed="(\d+)"', status.group(0))
    loaded = re.search(r'data-loaded="(\d+)"', status.group(0))
    assert failed and loaded, status.group(0)
    n_img = page.count("<img ")
    assert int(failed.group(1)) == 0 and int(loaded.group(1)) == n_img >= 10
    assert "dead_pixels" in dom and "Limits passed" in dom
    # a broken link must be caught by the same check
    os.remove(os.path.join(folder, "plots", "flag_history.png"))
    dom = render_dom(path, str(tmp_path / "profile2"))
    assert 'data-failed="1"' in dom
    json.dumps(summary, allow_nan=False)


def test_suggested_thresholds_from_a_good_run(cfg, images):
    table = scored(cfg, images, [f"img{i:02d}" for i in range(20)])
    sug = report.suggest_thresholds(table, cfg, target_share=0.05)
    assert "blurry" in sug and "dark" in sug and "exact_duplicates" not in sug
    bw = table.column("blur_width").to_numpy()
    assert sug["blurry"]["suggested"] == pytest.approx(np.nanquantile(bw, 0.95))
    p99 = table.column("luma_p99").to_numpy()
    assert sug["dark"]["suggested"] == pytest.approx(np.quantile(p99, 0.05))
    lines = report.calibration_lines(sug)
    assert any(line.startswith("blurry: blur_width > 1 flags 0.00% here") for line in lines)
