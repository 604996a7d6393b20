"""File identities for incremental quality runs: tokens from what each store reports, the
comparison of two listings, and which config keys make a rescan."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path

import pytest

from jobs.config_quality import QualityJobConfig
from restore_core.config import from_dict, to_dict
from restore_core.errors import UserError
from restore_core.io import file_identity as fid
from restore_core.io.locations import Location


def test_token_prefers_content_checksums_and_falls_back_to_times() -> None:
    # gcsfs: the object resource, md5Hash first, crc32c for composite objects, generation else
    gcs = {"name": "b/a.png", "size": 3, "md5Hash": "rL0Y20zC+Fzt72VPzMSk2A==", "crc32c": "AAAA", "generation": "17"}
    assert fid.identity_token(gcs) == "md5:rL0Y20zC+Fzt72VPzMSk2A=="
    assert fid.identity_token({k: v for k, v in gcs.items() if k != "md5Hash"}) == "crc32c:AAAA"
    # s3fs: the ETag, quotes dropped
    s3 = {
        "name": "b/a.png",
        "size": 3,
        "ETag": '"9a0364b9e99bb480dd25e1f0284c8555"',
        "LastModified": dt.datetime(2024, 1, 1),
    }
    assert fid.identity_token(s3) == "etag:9a0364b9e99bb480dd25e1f0284c8555"
    # huggingface_hub: the LFS sha256, else the git blob id
    assert fid.identity_token({"lfs": {"sha256": "ab12"}, "blob_id": "cd"}) == "sha256:ab12"
    assert fid.identity_token({"blob_id": "cd", "last_commit": None}) == "blob:cd"
    assert fid.identity_token({"LastModified": dt.datetime(2024, 1, 1)}) == "mtime:2024-01-01T00:00:00"
    assert fid.identity_token({"size": 3}) == ""


def test_local_listing_gives_size_and_nanosecond_mtime(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"abc")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.png").write_bytes(b"abcd")
    (tmp_path / ".hidden.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_bytes(b"x")
    got = fid.list_identities(Location(str(tmp_path)), "images")
    assert [(Path(f.path).name, f.size) for f in got] == [("a.png", 3), ("b.png", 4)]
    assert got[0].token == f"mtime_ns:{os.stat(tmp_path / 'a.png').st_mtime_ns}"
    assert fid.image_ids(Location(str(tmp_path)), [f.path for f in got]) == ["a.png", "sub/b.png"]
    assert fid.image_ids(Location(str(tmp_path / "a.png")), [str(tmp_path / "a.png")]) == ["a.png"]
    with pytest.raises(UserError, match=r"no \*\.parquet files"):
        fid.list_identities(Location(str(tmp_path / "sub")), "parquet")


def test_compare_sorts_files_into_unchanged_changed_added_removed() -> None:
    F = fid.FileIdentity
    before = {"/d/a": (3, "mtime_ns:1"), "/d/b": (4, "mtime_ns:1"), "/d/c": (5, "mtime_ns:1"), "/d/e": (1, "")}
    now = [F("/d/b", 4, "mtime_ns:2"), F("/d/a", 3, "mtime_ns:1"), F("/d/d", 1, "mtime_ns:1"), F("/d/e", 1, "")]
    got = fid.compare(now, before)
    assert [f.path for f in got.unchanged] == ["/d/a"]
    assert [f.path for f in got.changed] == ["/d/b", "/d/e"]  # no token: never taken as unchanged
    assert [f.path for f in got.added] == ["/d/d"]
    assert got.removed == ["/d/c"]
    assert got.to_score == ["/d/b", "/d/d", "/d/e"]
    assert got.counts() == {"unchanged": 1, "changed": 2, "added": 1, "removed": 1}


def test_scoring_settings_cover_what_a_row_depends_on_only() -> None:
    cfg = from_dict(QualityJobConfig, {"input": {"path": "/in"}, "output": "/out"})
    base = fid.scoring_settings(to_dict(cfg))
    assert "dark_level" in base and "masks.rule" in base and "artifact.scorer_code" in base
    assert not any(k.startswith(("ray.", "output", "run_date", "fail_on", "full")) for k in base)
    assert not any(k.endswith(".max_share") for k in base)
    same = [
        dataclasses.replace(cfg, ray=dataclasses.replace(cfg.ray, num_cpus=7)),
        dataclasses.replace(cfg, fail_on=["dark"], full=True, run_date="2024-01-02", near_duplicate_distance=9),
        dataclasses.replace(cfg, input=dataclasses.replace(cfg.input, path="s3://b/in", storage_options={"key": "k"})),
        from_dict(QualityJobConfig, {"input": {"path": "/in"}, "output": "/o", "flags": {"dark": {"max_share": 0.5}}}),
    ]
    for other in same:
        assert fid.settings_fingerprint(fid.scoring_settings(to_dict(other))) == fid.settings_fingerprint(base)
    for other in (
        dataclasses.replace(cfg, dark_level=0.1),
        dataclasses.replace(cfg, decode=dataclasses.replace(cfg.decode, max_pixels=1000)),
        from_dict(QualityJobConfig, {"input": {"path": "/in"}, "output": "/o", "flags": {"dark": {"value": 0.5}}}),
    ):
        now = fid.scoring_settings(to_dict(other))
        assert fid.settings_fingerprint(now) != fid.settings_fingerprint(base)
        assert fid.changed_keys(base, now)


def test_files_table_metadata_round_trips() -> None:
    settings = {"dark_level": 0.05, "artifact.scorer_code": "x"}
    schema = fid.FILES_SCHEMA.with_metadata(fid.files_metadata(settings))
    assert fid.read_metadata(schema) == (fid.settings_fingerprint(settings), settings)
    assert fid.read_metadata(fid.FILES_SCHEMA) == ("", {})
    batch = fid.files_batch([(fid.FileIdentity("/d/a.parquet", 10, "etag:1"), ["x", None])])
    assert batch.to_pylist() == [{"file": "/d/a.parquet", "size": 10, "token": "etag:1", "rows": 2, "ids": ["x", None]}]


def test_quality_config_full_key_and_cli_flag() -> None:
    import argparse

    from jobs import quality

    assert from_dict(QualityJobConfig, {"full": True}).full is True
    parser = argparse.ArgumentParser()
    quality.add_arguments(parser)
    assert "full=true" in quality.apply_arguments(parser.parse_args(["--full"]))
    assert not any(x.startswith("full") for x in quality.apply_arguments(parser.parse_args([])))
