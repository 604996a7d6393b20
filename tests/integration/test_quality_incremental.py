"""Incremental nightly quality runs on a real local Ray: a second run reuses the first run's rows
of unchanged files, scores only added and rewritten files, drops removed ones, and ends up with
the same flags per id and the same summary counts as a full run over the same data - duplicates
found across old and new images included. Image folders and Parquet inputs."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imrestore_data import synth
from jobs import quality
from jobs.config_quality import QualityJobConfig
from restore_core.config import from_dict
from restore_core.io import file_identity as fid
from restore_core.io.locations import Location
from tests.conftest import png_bytes

pytestmark = pytest.mark.integration


def _images(n: int, seed: int) -> list[bytes]:
    imgs = synth.photo_crops(n, 40, names=("grass", "gravel", "coins", "text", "brick"), seed=seed)
    out = []
    for k, img in enumerate(imgs):
        if k % 5 == 1:
            img = img * 0.05  # dark
        out.append(png_bytes(np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)))
    return out


def _cfg(data: Path, out: Path, fmt: str, date: str, **extra: object) -> QualityJobConfig:
    return from_dict(
        QualityJobConfig,
        {
            "input": {"path": str(data), "format": fmt},
            "output": str(out),
            "run_date": date,
            "ray": {"batch_size": 8, "num_cpus": 2},
            **extra,
        },
    )


def _result(out: Path, date: str) -> tuple[dict, dict]:
    run = out / f"run={date}"
    summary = json.loads((run / "summary.json").read_text())
    flags = pq.read_table(run / "flags.parquet").to_pylist()
    per_id = {r["id"]: (r["flags"], r["exact_duplicates"], r["near_duplicates"]) for r in flags}
    assert len(per_id) == len(flags)  # every id once
    return summary, per_id


def _same_as_full(inc: tuple[dict, dict], full: tuple[dict, dict]) -> None:
    (s_inc, ids_inc), (s_full, ids_full) = inc, full
    assert ids_inc == ids_full
    for key in ("rows", "ok", "errors"):
        assert s_inc[key] == s_full[key], key
    assert {n: f["count"] for n, f in s_inc["flags"].items()} == {n: f["count"] for n, f in s_full["flags"].items()}
    assert s_inc["duplicate_groups"]["count"] == s_full["duplicate_groups"]["count"]
    assert s_inc["duplicate_groups"]["images"] == s_full["duplicate_groups"]["images"]
    for m, q in s_full["quantiles"].items():
        if m != "seconds":
            assert s_inc["quantiles"][m]["p50"] == pytest.approx(q["p50"]), m


def _rewrite(path: Path, data: bytes) -> None:
    before = path.stat().st_mtime_ns
    path.write_bytes(data)
    while path.stat().st_mtime_ns == before:  # a coarse clock: make the rewrite visible
        time.sleep(0.01)
        path.write_bytes(data)


def _folder_and_first_runs(tmp_path: Path) -> tuple[Path, Path, list[bytes]]:
    data, out = tmp_path / "imgs", tmp_path / "q"
    (data / "sub").mkdir(parents=True)
    blobs = _images(26, seed=1)
    for k in range(20):
        (data / ("sub" if k % 2 else "") / f"im-{k:02d}.png").write_bytes(blobs[k])
    return data, out, blobs


@pytest.mark.timeout(900)
def test_incremental_equals_full_on_image_folders_and_parquet(tmp_path, local_ray):
    # ---- an image folder: 20 files, then 4 added (one a copy of an old one), 1 rewritten, 1 removed
    data, out, blobs = _folder_and_first_runs(tmp_path)
    out_full = tmp_path / "q_full"
    first = quality.run(_cfg(data, out, "images", "2024-05-01"))
    assert first.exit_code == 0
    s1, _ = _result(out, "2024-05-01")
    assert s1["incremental"]["mode"] == "full" and "no earlier finished run" in s1["incremental"]["reason"]
    assert s1["scored_in"] == "driver"  # 20 images: under local_score_max_rows, no actor pool
    assert (out / "run=2024-05-01" / fid.FILES_NAME).exists()

    for k in (20, 21, 22):
        (data / f"new-{k}.png").write_bytes(blobs[k])
    (data / "new-copy.png").write_bytes(blobs[4])  # an exact duplicate of an unchanged old image
    _rewrite(data / "im-02.png", blobs[23])  # new content under an old name
    (data / "sub" / "im-03.png").unlink()
    # the new files through Ray Data's actor pool, not in the driver
    second = quality.run(_cfg(data, out, "images", "2024-05-02", local_score_max_rows=0))
    inc = _result(out, "2024-05-02")
    info = inc[0]["incremental"]
    assert info["mode"] == "incremental" and info["base_run"] == "2024-05-01", info
    assert info["files"] == {"unchanged": 18, "changed": 1, "added": 4, "removed": 1}
    assert info["rows_reused"] == 18 and info["rows_scored"] == 5
    assert inc[0]["scored_in"] == "ray"  # so the comparison below holds rows of both scoring paths
    assert "incremental from run=2024-05-01" in second.values["scanned"].lower()
    assert "Incremental from run=2024-05-01" in (out / "run=2024-05-02" / "report.html").read_text()
    assert inc[1]["new-copy.png"][1] == 1 and inc[1]["im-04.png"][1] == 1  # found across old and new
    assert "sub/im-03.png" not in inc[1] and "im-02.png" in inc[1]
    quality.run(_cfg(data, out_full, "images", "2024-05-02", full=True))
    full = _result(out_full, "2024-05-02")
    assert full[0]["incremental"]["mode"] == "full" and "--full" in full[0]["incremental"]["reason"]
    _same_as_full(inc, full)
    assert any(f for f, _, _ in inc[1].values())  # the comparison holds raised flags, not only empty ones

    # ---- Parquet: 3 files, then one added, one rewritten (a row changed, one gone, one new), one removed
    pdata, pout, pout_full = tmp_path / "parquet", tmp_path / "pq", tmp_path / "pq_full"
    pdata.mkdir()
    blobs = _images(30, seed=2)

    def write(name: str, ids: list[str], images: list[bytes]) -> None:
        pq.write_table(pa.table({"id": ids, "image": pa.array(images, pa.binary())}), pdata / name)

    for s in range(3):
        write(f"part-{s}.parquet", [f"p{s}-{i}" for i in range(6)], blobs[6 * s : 6 * s + 6])
    quality.run(_cfg(pdata, pout, "parquet", "2024-05-01"))
    write("part-3.parquet", [f"p3-{i}" for i in range(5)], [*blobs[18:22], blobs[0]])  # p3-4 copies p0-0
    time.sleep(0.01)
    write("part-1.parquet", ["p1-0", "p1-1", "p1-2", "p1-3", "p1-9"], [blobs[6], blobs[22], *blobs[8:10], blobs[23]])
    (pdata / "part-2.parquet").unlink()
    quality.run(_cfg(pdata, pout, "parquet", "2024-05-02"))  # 10 rows: scored in the driver
    assert [p.name for p in (pout / "run=2024-05-02" / "data").iterdir() if p.name.startswith("scored-")]
    inc = _result(pout, "2024-05-02")
    info = inc[0]["incremental"]
    assert info["mode"] == "incremental" and info["files"] == {"unchanged": 1, "changed": 1, "added": 1, "removed": 1}
    assert info["rows_reused"] == 6 and info["rows_scored"] == 10
    assert sorted(inc[1]) == sorted(
        [f"p0-{i}" for i in range(6)] + ["p1-0", "p1-1", "p1-2", "p1-3", "p1-9"] + [f"p3-{i}" for i in range(5)]
    )
    assert inc[1]["p3-4"][1] == 1 and inc[1]["p0-0"][1] == 1
    quality.run(_cfg(pdata, pout_full, "parquet", "2024-05-02", full=True))
    _same_as_full(inc, _result(pout_full, "2024-05-02"))
    files = pq.read_table(pout / "run=2024-05-02" / fid.FILES_NAME).to_pylist()
    assert {Path(r["file"]).name: r["rows"] for r in files} == {
        "part-0.parquet": 6,
        "part-1.parquet": 5,
        "part-3.parquet": 5,
    }
    shutil.rmtree(tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_unchanged_input_scores_nothing_and_other_settings_rescan(tmp_path, local_ray, caplog):
    data, out, _ = _folder_and_first_runs(tmp_path)
    quality.run(_cfg(data, out, "images", "2024-05-01"))
    full = _result(out, "2024-05-01")
    quality.run(_cfg(data, out, "images", "2024-05-02", fail_on=["dark"]))  # not a scoring setting
    again = _result(out, "2024-05-02")
    assert again[0]["incremental"]["rows_scored"] == 0 and again[0]["incremental"]["rows_reused"] == 20
    _same_as_full(again, full)
    with caplog.at_level("INFO", logger="jobs.quality"):
        quality.run(_cfg(data, out, "images", "2024-05-03", dark_level=0.1))
    info = _result(out, "2024-05-03")[0]["incremental"]
    assert info["mode"] == "full" and "dark_level" in info["reason"], info
    assert "full rescan" in caplog.text and "dark_level" in caplog.text


def test_s3_listing_gives_etags_and_a_rewrite_changes_them(moto_s3):
    import s3fs

    fs = s3fs.S3FileSystem(**moto_s3.storage_options)
    fs.mkdir("ident-bucket")
    fs.pipe({"ident-bucket/d/a.png": b"abc", "ident-bucket/d/b.png": b"abcd", "ident-bucket/d/_x.png": b"x"})
    got = fid.list_identities(Location("s3://ident-bucket/d", moto_s3.storage_options), "images")
    assert [(f.path, f.size) for f in got] == [("ident-bucket/d/a.png", 3), ("ident-bucket/d/b.png", 4)]
    assert all(f.token.startswith("etag:") for f in got), got
    fs.pipe("ident-bucket/d/a.png", b"xyz")  # same size, other content
    now = fid.list_identities(Location("s3://ident-bucket/d", moto_s3.storage_options), "images")
    changes = fid.compare(now, {f.path: (f.size, f.token) for f in got})
    assert [f.path for f in changes.changed] == ["ident-bucket/d/a.png"]
    assert [f.path for f in changes.unchanged] == ["ident-bucket/d/b.png"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_incremental_run_with_input_and_output_on_s3(tmp_path, local_ray, moto_s3):
    import s3fs

    fs = s3fs.S3FileSystem(**moto_s3.storage_options)
    fs.mkdir("inc-in")
    fs.mkdir("inc-out")
    blobs = _images(12, seed=3)
    fs.pipe({f"inc-in/d/im-{k:02d}.png": blobs[k] for k in range(10)})
    opts = moto_s3.storage_options

    def cfg(date: str) -> QualityJobConfig:
        return from_dict(
            QualityJobConfig,
            {
                "input": {"path": "s3://inc-in/d", "format": "images", "storage_options": opts},
                "output": "s3://inc-out/q",
                "output_storage_options": opts,
                "run_date": date,
                # the first night through the actor pool: its actors read the images from S3 themselves
                "local_score_max_rows": 0 if date == "2024-06-01" else 1000,
                "ray": {"batch_size": 8, "num_cpus": 2},
            },
        )

    quality.run(cfg("2024-06-01"))
    assert json.loads(fs.cat("inc-out/q/run=2024-06-01/summary.json"))["scored_in"] == "ray"
    fs.pipe({"inc-in/d/im-10.png": blobs[10], "inc-in/d/im-00.png": blobs[11]})
    fs.rm("inc-in/d/im-01.png")
    quality.run(cfg("2024-06-02"))
    summary = json.loads(fs.cat("inc-out/q/run=2024-06-02/summary.json"))
    info = summary["incremental"]
    assert info["mode"] == "incremental", info
    assert info["files"] == {"unchanged": 8, "changed": 1, "added": 1, "removed": 1}
    assert info["rows_reused"] == 8 and info["rows_scored"] == 2 and summary["rows"] == 10
