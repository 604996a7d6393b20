"""The quality run's verdict (jobs/verdict.py and the CLI's exit codes), progress lines in logs, and
duplicate groups with thumbnails side by side in the report."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import imrestore_report as report
from imrestore_data import synth
from jobs import cli, logs, verdict
from jobs import quality as quality_job
from jobs.config_quality import QualityJobConfig
from restore_core import codec, quality
from restore_core.config import ConfigError, QualityConfig, from_dict
from restore_core.errors import UserError
from tests.conftest import png_bytes


def summary_with(shares: dict[str, tuple[float, float]], rows: int = 100) -> dict:
    """A summary whose flags have the given (share, max_share)."""
    flags = {
        n: {"count": round(s * rows), "share": s, "max_share": m, "rule": f"{n}_metric > 0"}
        for n, (s, m) in shares.items()
    }
    return {"rows": rows, "ok": rows - 1, "errors": 1, "flags": flags}


SUMMARY = summary_with({"dead_pixels": (0.05, 0.01), "blurry": (0.10, 0.05), "dark": (0.01, 0.05)})


def test_pass_when_no_watched_flag_is_over():
    v = verdict.decide(SUMMARY, ["dark"], [])
    assert (v.verdict, v.exit_code, v.failed, v.warned) == ("PASS", 0, [], [])
    assert v.line() == "QUALITY PASS 100 images, 1 unreadable: no limit passed (1 flags watched)"
    # nothing watched: a pass that says so
    assert verdict.decide(SUMMARY, [], []).line().endswith("no fail_on or warn_on flags set")


def test_warn_fail_and_fail_wins():
    warn = verdict.decide(SUMMARY, ["dark"], ["blurry"])
    assert (warn.verdict, warn.exit_code, warn.failed) == ("WARN", 3, [])
    assert warn.warned == [
        "blurry: 10 of 100 images (10.00%) flagged [blurry_metric > 0], limit 5.00%, over by 5.00 points"
    ]
    assert warn.line() == "QUALITY WARN 100 images: blurry 10.00% > 5.00%"
    fail = verdict.decide(SUMMARY, ["dead_pixels"], ["blurry"])
    assert (fail.verdict, fail.exit_code) == ("FAIL", 1)
    assert len(fail.failed) == 1 and len(fail.warned) == 1  # the warning is still reported
    assert fail.line() == "QUALITY FAIL 100 images: dead_pixels 5.00% > 1.00%"
    both = verdict.decide(SUMMARY, ["blurry"], ["blurry"])  # named in both lists: it fails
    assert both.verdict == "FAIL" and both.warned == []
    # a disabled flag (absent from the summary) neither fails nor warns
    assert verdict.decide(SUMMARY, ["saturated"], ["saturated"]).verdict == "PASS"


def test_crash_verdict_and_record():
    v = verdict.crashed("ValueError: bad\nsecond line")
    assert (v.verdict, v.exit_code) == ("ERROR", 2)
    assert v.line() == "QUALITY ERROR the job failed: ValueError: bad second line"
    rec = verdict.record(v, run_date="2024-01-02", started="a", finished="b", fail_on=["x"])
    assert rec["verdict"] == "ERROR" and rec["exit_code"] == 2 and rec["counts"] == {} and rec["fail_on"] == ["x"]
    assert verdict.describe_error(UserError("input path does not exist: x")) == "input path does not exist: x"
    assert verdict.describe_error(KeyError("k")) == "KeyError: 'k'"
    assert verdict.describe_error(KeyboardInterrupt()) == "interrupted"
    ok = verdict.record(
        verdict.decide(SUMMARY, [], ["blurry"]), run_date="2024-01-02", started="s", finished="f", summary=SUMMARY
    )
    assert ok["counts"]["flagged"] == {"dead_pixels": 5, "blurry": 10, "dark": 1} and ok["exit_code"] == 3
    json.dumps(ok, allow_nan=False)


def test_warn_on_is_checked_like_fail_on():
    cfg = from_dict(QualityJobConfig, {"warn_on": ["near_duplicate", "blurry"]})
    assert cfg.warn_on == ["near_duplicates", "blurry"]  # the old name still read
    with pytest.raises(ConfigError, match="warn_on names unknown flag 'blury'"):
        from_dict(QualityJobConfig, {"warn_on": ["blury"]})


def test_cli_warn_on_flag():
    parser = cli.build_parser()
    args = parser.parse_args(["quality", "--warn-on", "blurry, dark", "--fail-on", "dead_pixels"])
    assert quality_job.apply_arguments(args) == ["fail_on=[dead_pixels]", "warn_on=[blurry, dark]"]


def test_a_failed_job_exits_2_with_the_error_line_last(tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["quality", "--set", f"input.path={tmp_path / 'gone'}", "--set", f"output={out}",
                     "--run-date", "2024-05-06"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-2].startswith("error: input path does not exist")
    assert err[-1].startswith("QUALITY ERROR the job failed: input path does not exist")
    # the output was known: the verdict is where a scheduler looks for it
    status = json.loads((out / "_status" / "run=2024-05-06.json").read_text())
    assert status["verdict"] == "ERROR" and status["exit_code"] == 2 and "does not exist" in status["error"]
    assert not (out / "run=2024-05-06").exists()
    # a mistake found before the output is known: the line, no file
    assert cli.main(["quality", "--set", f"input.path={tmp_path}"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("QUALITY ERROR the job failed: output is empty")


def test_a_crash_says_where_its_traceback_went(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # so that gettempdir() reads TMPDIR again
    try:
        {}["missing"]
    except KeyError as exc:
        where = cli._save_traceback(exc, "quality", verbose=False)
    saved = list(tmp_path.glob("imrestore-quality-*.txt"))
    assert len(saved) == 1 and where == f"traceback in {saved[0]}; --verbose prints it here"
    assert "Traceback (most recent call last)" in saved[0].read_text() and "KeyError" in saved[0].read_text()
    try:
        {}["missing"]
    except KeyError as exc:
        assert cli._save_traceback(exc, "quality", verbose=True) == "traceback above"
    assert "KeyError" in capsys.readouterr().err
    assert quality_job.EXIT_CRASH == 2


def test_progress_lines_in_a_log(caplog, capsys):
    caplog.set_level(logging.INFO, logger="jobs.progress")
    bar = logs.progress_bar(4, "scoring", interval=0)
    assert not bar.disable  # stderr is not a terminal under capsys
    for _ in range(4):
        bar.update(1)
    bar.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "jobs.progress"]
    assert lines[0].startswith("scoring: 0/4 images (0%)")
    assert [line.split(",")[0] for line in lines] == [f"scoring: {k}/4 images ({25 * k}%)" for k in range(5)]
    assert all("images/s" in line and "ETA" in line for line in lines)
    with pytest.raises(UserError, match="IMRESTORE_PROGRESS_SECONDS"):
        logs.progress_seconds("soon")
    assert logs.progress_seconds(None) == logs.DEFAULT_PROGRESS_SECONDS and logs.progress_seconds("2.5") == 2.5


@pytest.fixture(scope="module")
def dup_images() -> tuple[list[str], list[bytes]]:
    imgs = synth.photo_crops(6, 40, names=("grass", "gravel", "coins"), seed=3)
    blobs = [png_bytes(np.rint(i * 255).astype(np.uint8)) for i in imgs]
    ids = [f"img{k}" for k in range(6)]
    return [*ids, "copy_of_img1", "copy2_of_img1"], [*blobs, blobs[1], blobs[1]]


@pytest.mark.parametrize("fmt", ["parquet", "images"])
def test_duplicate_groups_shown_with_thumbnails(tmp_path, dup_images, fmt):
    ids, blobs = dup_images
    if fmt == "parquet":
        url = "memory://dups-input"
        fs = fsspec.filesystem("memory")
        with fs.open(f"{url}/part-0.parquet", "wb") as f:
            pq.write_table(pa.table({"id": ids, "image": pa.array(blobs, pa.binary())}), f, row_group_size=3)
    else:
        url = str(tmp_path / "input")
        for i, b in zip(ids, blobs, strict=True):
            (tmp_path / "input" / f"{i}.png").parent.mkdir(exist_ok=True)
            (tmp_path / "input" / f"{i}.png").write_bytes(b)
        ids = [f"{i}.png" for i in ids]
    cfg = from_dict(QualityConfig, {"input": {"path": url, "format": fmt}, "flags": {"grayscale": {"enabled": False}}})
    batch = {"id": np.array(ids, dtype=object), "image": np.array(blobs, dtype=object)}
    table = report.with_run_flags(quality.table_from_columns(quality.QualityScorer(cfg)(batch)), cfg)
    summary = report.summarize(table, cfg, "2024-01-03")
    summary["drift"] = report.compare(summary, None, [], None)
    group = summary["duplicate_groups"]["groups"][0]
    assert sorted(group["ids"]) == sorted(ids[1:2] + ids[6:]) and group["kind"] == "exact"
    # only per-image flags keep a thumbnail in the shards: these three rows have none
    assert report.table_thumbnails(table, group["ids"]) == {}
    thumbs = quality_job.group_thumbnails(cfg, table, summary)
    assert sorted(thumbs) == sorted(group["ids"])
    assert codec.decode(thumbs[group["ids"][0]], 10**6)[0].shape[:2] == (40, 40)
    out = fsspec.filesystem("file")
    page = Path(report.write_report(out, str(tmp_path / "run"), table, summary, [], cfg, thumbs)).read_text()
    section = page[page.index("id='duplicates'") :]
    for k, row_id in enumerate(group["ids"]):
        assert f"<img src='thumbs/group_0_{k}.jpg' alt='{row_id}'>" in section
        assert (tmp_path / "run" / "thumbs" / f"group_0_{k}.jpg").exists()
