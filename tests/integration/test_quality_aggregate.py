"""The quality job's aggregation on a real local Ray gives what the in-memory functions give.

Shards of scored rows (some under other file names, as an incremental run stages reused rows)
go into ``<staging>/data``; ``jobs.quality_aggregate.aggregate_run`` must find the same flags,
duplicate columns (groups equal up to their labels), summary, duplicate groups, worst rows per
flag and added/removed ids as ``report.with_run_flags`` / ``summarize`` / ``worst_rows`` /
``compare`` over the whole table in memory.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import imrestore_report as report
from jobs.config_quality import QualityJobConfig
from restore_core.config import from_dict
from restore_core.io.locations import Location
from tests.conftest import scored_quality_rows

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # minutes on a busy 2-CPU machine


@pytest.mark.timeout(600)
def test_aggregation_on_ray_equals_the_in_memory_run(tmp_path, local_ray):
    import fsspec

    from jobs import quality_aggregate
    from jobs.ray_utils import arrow_filesystem

    cfg = from_dict(
        QualityJobConfig,
        {"flags": {"blurry": {"value": 1.0}, "grayscale": {"enabled": False}}, "report": {"worst_per_flag": 3}},
    )
    table = scored_quality_rows(cfg)
    staging = str(tmp_path / "staging")
    data = tmp_path / "staging" / "data"
    data.mkdir(parents=True)
    order = np.random.default_rng(0).permutation(table.num_rows)
    for k, part in enumerate(np.array_split(order, 4)):
        name = f"part-{k}.parquet" if k < 2 else f"reused-from-2024-01-01-{k}.parquet"
        pq.write_table(table.take(pa.array(part)), data / name)
    prev = tmp_path / "prev_flags.parquet"
    prev_ids = [f"img-{k:03d}" for k in range(3, 40)]  # 0-2 added, 36-39 removed
    pq.write_table(pa.table({"id": prev_ids}), prev)

    fs = fsspec.filesystem("file")
    out_fs, _ = arrow_filesystem(Location(staging, {}))
    got = quality_aggregate.aggregate_run(cfg, fs, out_fs, staging, "2024-01-02", str(prev))

    want_table = report.with_run_flags(table, cfg)
    want = report.summarize(want_table, cfg, "2024-01-02")
    flags = pq.read_table(tmp_path / "staging" / "flags.parquet")
    assert flags.column_names == quality_aggregate.FLAG_COLUMNS
    assert not (tmp_path / "staging" / "_flags").exists()
    g = {r["id"]: r for r in flags.to_pylist()}
    w = {r["id"]: r for r in want_table.select(quality_aggregate.FLAG_COLUMNS).to_pylist()}
    assert set(g) == set(w) and len(g) == table.num_rows
    for i, row in w.items():
        for c in ("flags", "exact_duplicates", "near_duplicates", "sha256", "dhash"):
            assert g[i][c] == row[c], (i, c, g[i][c], row[c])
        for j, other in w.items():  # the same groups, whatever their labels
            if row["duplicate_group"] >= 0:
                same = g[i]["duplicate_group"] == g[j]["duplicate_group"]
                assert same == (row["duplicate_group"] == other["duplicate_group"]), (i, j)
            else:
                assert g[i]["duplicate_group"] == -1
    assert "exact_duplicates" in g["img-005"]["flags"] and "near_duplicates" in g["img-006"]["flags"]
    assert "odd_size" in g["img-020"]["flags"] and "dead_pixels" in g["img-012"]["flags"]

    s = got.summary
    assert {k: s[k] for k in ("rows", "ok", "errors", "flags")} == {
        k: want[k] for k in ("rows", "ok", "errors", "flags")
    }
    assert s["duplicate_groups"] == want["duplicate_groups"]
    assert s["duplicate_groups"]["count"] >= 3
    assert set(s["quantiles"]) == set(want["quantiles"])
    for m, q in want["quantiles"].items():
        spread = (q["max"] - q["min"]) or 1.0
        for k, v in q.items():
            assert s["quantiles"][m][k] == pytest.approx(v, rel=1e-6, abs=1e-3 * spread), (m, k)
        edges, counts, _ = got.histograms[m]
        assert int(counts.sum()) == q["count"] and edges.size == counts.size + 1

    worst = report.worst_rows(want_table, cfg)
    assert list(got.worst) == list(worst)
    for name, rows in worst.items():
        assert [r["id"] for r in got.worst[name]] == [r["id"] for r in rows], name
        assert [r["thumb"] for r in got.worst[name]] == [r["thumb"] for r in rows], name
        assert [r["value"] for r in got.worst[name]] == pytest.approx([r["value"] for r in rows])

    ids = table.column("id").to_pylist()
    drift = report.compare(want, {**want, "run_date": "2024-01-01"}, ids, prev_ids)
    mine = report.compare(s, {**want, "run_date": "2024-01-01"}, (), None, id_diff=got.id_diff)
    assert got.id_diff == {
        "ids_added": 3,
        "ids_removed": 4,
        "examples_added": ["img-000", "img-001", "img-002"],
        "examples_removed": ["img-036", "img-037", "img-038", "img-039"],
    }
    for k in ("ids_added", "ids_removed", "examples_added", "examples_removed", "sentences"):
        assert mine[k] == drift[k], k

    page = report.write_report_parts(fs, staging, {**s, "drift": mine}, [], cfg, got.histograms, got.worst)
    html = open(page, encoding="utf-8").read()
    assert "img-012" in html and (tmp_path / "staging" / "plots" / "hist_blur_width.png").exists()
