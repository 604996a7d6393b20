"""restore_core.io.datasets: listing (symlinked folders) and one schema for Parquet files that
disagree (issue 16)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from restore_core.config import InputConfig
from restore_core.errors import UserError
from restore_core.io import datasets, shards
from tests.conftest import png_bytes

PNG = png_bytes(np.full((4, 4), 90, np.uint8))


def test_symlinked_subfolders_are_followed_once_and_loops_are_not(tmp_path: Path):
    root, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    (root / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    (root / "a.png").write_bytes(PNG)
    (root / "sub" / "b.png").write_bytes(PNG)
    (elsewhere / "c.png").write_bytes(PNG)
    os.symlink(elsewhere, root / "linked")  # a folder outside the root, reached through a link
    os.symlink(root, root / "sub" / "loop")  # a loop back to the root
    os.symlink(root / "sub", root / "zz_again")  # a second way into a folder already listed
    files = datasets.list_files(str(root), "images")
    rel = [os.path.relpath(f, root) for f in files]
    assert rel == ["a.png", "linked/c.png", "sub/b.png"]
    plan = shards.plan_shards(InputConfig(path=str(root), format="images"))
    ids = shards.read_shard(plan[0], InputConfig(path=str(root), format="images")).column("id").to_pylist()
    assert ids == rel


def test_odd_file_names_are_listed_with_their_real_names(tmp_path: Path):
    names = ["a?b.png", "c#d.png", "img[1].png", "st*r.png", "%3F.png", "sp ace.png", "ü.png"]
    for n in names:
        (tmp_path / n).write_bytes(PNG)
    for url in (str(tmp_path), f"file://{tmp_path}"):
        files = datasets.list_files(url, "images")
        assert sorted(os.path.basename(f) for f in files) == sorted(names)


def _write(path: Path, **cols) -> None:
    pq.write_table(pa.table(cols), path)


def test_files_whose_types_differ_read_as_one_schema(tmp_path: Path):
    _write(tmp_path / "a.parquet", id=pa.array([1, 2]), image=pa.array([PNG, PNG]), label=pa.array([7, 8], pa.int32()))
    _write(
        tmp_path / "b.parquet",
        id=pa.array(["x", "y"]),
        image=pa.array([PNG, PNG]),
        label=pa.array([1.5, 2.5]),
        extra=pa.array(["e1", "e2"]),
        note=pa.array([1, 2]),
    )
    _write(tmp_path / "c.parquet", id=pa.array([3]), image=pa.array([PNG]), note=pa.array(["n"]))
    schema = datasets.parquet_input_schema(str(tmp_path))
    assert schema is not None
    assert schema.field("id").type == pa.string()
    assert schema.field("label").type == pa.float64()  # int32 + double widen
    assert schema.field("note").type == pa.string()  # int + string: text
    icfg = InputConfig(path=str(tmp_path))
    plan = shards.plan_shards(icfg)
    tables = [shards.read_shard(s, icfg, schema).drop_columns([shards.SHARD_COL, shards.ROW_COL]) for s in plan]
    table = pa.concat_tables(tables)  # one schema: concatenates without promotion
    assert table.column("id").to_pylist() == ["1", "2", "x", "y", "3"]
    assert table.column("extra").to_pylist() == [None, None, "e1", "e2", None]
    assert table.column("note").to_pylist() == [None, None, "1", "2", "n"]


def test_files_that_agree_need_no_schema(tmp_path: Path):
    for name in ("a", "b"):
        _write(tmp_path / f"{name}.parquet", id=pa.array([1]), image=pa.array([PNG]))
    assert datasets.parquet_input_schema(str(tmp_path)) is None


def test_irreconcilable_types_fail_up_front_naming_column_and_files(tmp_path: Path):
    _write(tmp_path / "a.parquet", id=pa.array(["p"]), image=pa.array([PNG]), meta=pa.array([{"k": 1}]))
    _write(tmp_path / "b.parquet", id=pa.array(["q"]), image=pa.array([PNG]), meta=pa.array([5]))
    with pytest.raises(UserError, match=r"column 'meta' is struct<k: int64> in .*a.parquet but int64 in .*b.parquet"):
        datasets.parquet_input_schema(str(tmp_path))


def test_a_file_without_the_image_column_is_named_up_front(tmp_path: Path):
    _write(tmp_path / "a.parquet", id=pa.array(["p"]), image=pa.array([PNG]))
    _write(tmp_path / "b.parquet", id=pa.array(["q"]), picture=pa.array([PNG]))
    with pytest.raises(UserError, match=r"b.parquet has no column\(s\) \['image'\]"):
        datasets.parquet_input_schema(str(tmp_path))
