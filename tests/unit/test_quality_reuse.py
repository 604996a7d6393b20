"""The incremental quality run's copy of the previous run's shards (``_copy_reused``): small
shards merged, large ones copied whole, dropped ids left out, every other row kept once."""

from __future__ import annotations

import subprocess
import sys

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from jobs import quality_incremental as qi


def _shard(path: str, ids: list[str], extra: str | None = None) -> None:
    cols = {"id": pa.array(ids, pa.string()), "blur_width": pa.array([float(len(i)) for i in ids])}
    if extra:
        cols[extra] = pa.array([1] * len(ids), pa.int64())
    pq.write_table(pa.table(cols), path)


def _ids(folder) -> list[str]:
    return sorted(i for p in sorted(folder.glob("*.parquet")) for i in pq.read_table(p).column("id").to_pylist())


def test_small_shards_are_merged_large_copied_dropped_rows_gone(tmp_path, monkeypatch):
    monkeypatch.setattr(qi, "SMALL_SHARD_ROWS", 10)
    monkeypatch.setattr(qi, "COMPACT_ROWS", 20)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    ids = []
    for k in range(8):  # eight shards of 5 rows: merged four to a file (20 rows)
        part = [f"s{k}-{j}" for j in range(5)]
        _shard(str(src / f"part-a-{k:05d}.parquet"), part)
        ids += part
    big = [f"big-{j}" for j in range(12)]  # large: copied as it is
    _shard(str(src / "part-b-00000.parquet"), big)
    odd = [f"odd-{j}" for j in range(3)]  # other columns: never merged with the others
    _shard(str(src / "part-c-00000.parquet"), odd, extra="new_metric")
    gone = [f"s{k}-{j}" for k in (0, 5) for j in range(5)] + ["big-3"]  # a whole shard, parts of others
    fs = fsspec.filesystem("file")

    n = qi._copy_reused(fs, str(src), str(dst), pa.array(gone, pa.string()))

    expected = sorted(set(ids + big + odd) - set(gone))
    assert n == len(expected)
    assert _ids(dst) == expected
    files = sorted(p.name for p in dst.glob("*.parquet"))
    assert all(f.startswith(qi.REUSED_PREFIX) for f in files)
    assert len(files) == 4  # 6 small shards left in 2 groups, the large one, the odd one
    odd_file = [p for p in dst.glob("*.parquet") if "new_metric" in pq.read_schema(p).names]
    assert len(odd_file) == 1 and pq.read_table(odd_file[0]).num_rows == 3


def test_nothing_dropped_copies_every_row(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for k in range(3):
        _shard(str(src / f"part-{k}.parquet"), [f"{k}-{j}" for j in range(64)])
    fs = fsspec.filesystem("file")
    assert qi._copy_reused(fs, str(src), str(dst), pa.array([], pa.string())) == 192
    assert len(list(dst.glob("*.parquet"))) == 1
    assert len(_ids(dst)) == 192


def test_a_run_scored_in_the_driver_does_not_import_ray():
    """A small incremental night starts no Ray, and so does not pay for importing it (~2 s)."""
    code = "import sys, jobs.cli, jobs.quality; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
