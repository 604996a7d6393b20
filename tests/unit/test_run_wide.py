"""The compact, streaming run-wide step (restore_core.run_wide) gives what the whole-table
functions give: flags, duplicate columns (same labels), summary with exact quantiles, worst rows,
duplicate groups and added/removed ids, from shards read a few columns at a time."""

from __future__ import annotations

import hashlib

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import imrestore_report as report
from restore_core import duplicates, quality, run_wide
from restore_core.config import QualityConfig, from_dict
from tests.conftest import scored_quality_rows


def test_streaming_run_wide_step_equals_the_whole_table(tmp_path):
    cfg = from_dict(
        QualityConfig,
        {"flags": {"blurry": {"value": 1.0}, "grayscale": {"enabled": False}}, "report": {"worst_per_flag": 3}},
    )
    table = scored_quality_rows(cfg)
    data = tmp_path / "staging" / "data"
    data.mkdir(parents=True)
    order = np.random.default_rng(0).permutation(table.num_rows)
    for k, part in enumerate(np.array_split(order, 3)):
        part_table = table.take(pa.array(part))
        if k == 2:  # a shard from an older run without one column
            part_table = part_table.drop_columns(["content_entropy"])
        pq.write_table(part_table, data / f"part-{k}.parquet", row_group_size=4)
    prev_ids = pa.array([f"img-{k:03d}" for k in range(3, 40)])  # 0-2 added, 36-39 removed
    fs = fsspec.filesystem("file")

    got = run_wide.aggregate(fs, str(tmp_path / "staging"), cfg, "2024-01-02", prev_ids)

    want_table = report.with_run_flags(table, cfg)
    want = report.summarize(want_table, cfg, "2024-01-02")
    flags = pq.read_table(tmp_path / "staging" / "flags.parquet")
    assert flags.schema == run_wide.FLAGS_SCHEMA
    g = {r["id"]: r for r in flags.to_pylist()}
    w = {r["id"]: r for r in want_table.select(run_wide.FLAGS_SCHEMA.names).to_pylist()}
    assert g == w  # labels included: the row number, in id order, of the group's first member
    assert "exact_duplicates" in g["img-005"]["flags"] and "odd_size" in g["img-020"]["flags"]

    s = got.summary
    for k in ("rows", "ok", "errors", "flags", "duplicate_groups"):
        assert s[k] == want[k], k
    assert s["duplicate_groups"]["count"] >= 3
    assert set(s["quantiles"]) == set(want["quantiles"]) - {"content_entropy"} | {"content_entropy"}
    for m, q in want["quantiles"].items():
        if m == "content_entropy":  # one shard lacks it: fewer values
            assert s["quantiles"][m]["count"] < q["count"]
            continue
        assert s["quantiles"][m] == pytest.approx(q), m
        edges, counts, _ = got.histograms[m]
        assert int(counts.sum()) == q["count"] and edges.size == counts.size + 1

    worst = report.worst_rows(want_table, cfg)
    assert list(got.worst) == list(worst)
    for name, rows in worst.items():
        assert [(r["id"], r["thumb"], r["error"]) for r in got.worst[name]] == [
            (r["id"], r["thumb"], r["error"]) for r in rows
        ], name
    shown = report.group_members_shown(s)
    assert got.kept_thumbs == report.table_thumbnails(table, shown)

    ids = table.column("id").to_pylist()
    drift = report.compare(want, {**want, "run_date": "2024-01-01"}, ids, prev_ids.to_pylist())
    assert got.id_diff == {k: drift[k] for k in ("ids_added", "ids_removed", "examples_added", "examples_removed")}
    assert got.id_diff["ids_added"] == 3 and got.id_diff["ids_removed"] == 4


def test_duplicate_arrays_equal_duplicate_columns():
    rng = np.random.default_rng(2)
    n = 300
    h = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
    h[50:60] = h[40:50] ^ np.uint64(0b101)  # near copies
    h[60:65] = 0  # uninformative
    sha: list[str | None] = [hashlib.sha256(str(k).encode()).hexdigest() for k in range(n)]
    sha[70:75] = sha[40:45]  # exact copies with another perceptual hash (a corner case)
    h[70:75] = h[40:45]
    sha[61] = sha[60]
    sha[3] = None
    dh = [f"{int(x):016x}" for x in h]
    want = quality.duplicate_columns(sha, dh, 4, 8)
    hi, ok1 = duplicates.hex_to_u64(pa.array(sha, pa.string()), 16, 0)
    lo, ok2 = duplicates.hex_to_u64(pa.array(sha, pa.string()), 16, 16)
    d, ok3 = duplicates.hex_to_u64(pa.array(dh, pa.string()))
    got = duplicates.duplicate_arrays(np.stack([hi, lo], 1), d, ok1 & ok2 & ok3, np.arange(n), 4, 8)
    for k, v in want.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
