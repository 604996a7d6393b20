"""restore_core.io.datasets: listing (symlinked folders), one schema for Parquet files that
disagree (issue 16); optional protocols (gs://, hf://) up to the filesystem boundary, and Hugging
Face path-only image cells resolved relative to the dataset's folder (issue 17)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from restore_core.codec import cell_bytes
from restore_core.config import InputConfig
from restore_core.errors import UserError
from restore_core.io import datasets, shards
from restore_core.io.locations import Location
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
    files = datasets.list_files(Location(str(root)), "images")
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
        files = datasets.list_files(Location(url), "images")
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
    schema = datasets.parquet_input_schema(Location(str(tmp_path)))
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
    assert datasets.parquet_input_schema(Location(str(tmp_path))) is None


def test_irreconcilable_types_fail_up_front_naming_column_and_files(tmp_path: Path):
    _write(tmp_path / "a.parquet", id=pa.array(["p"]), image=pa.array([PNG]), meta=pa.array([{"k": 1}]))
    _write(tmp_path / "b.parquet", id=pa.array(["q"]), image=pa.array([PNG]), meta=pa.array([5]))
    with pytest.raises(UserError, match=r"column 'meta' is struct<k: int64> in .*a.parquet but int64 in .*b.parquet"):
        datasets.parquet_input_schema(Location(str(tmp_path)))


def test_a_file_without_the_image_column_is_named_up_front(tmp_path: Path):
    _write(tmp_path / "a.parquet", id=pa.array(["p"]), image=pa.array([PNG]))
    _write(tmp_path / "b.parquet", id=pa.array(["q"]), picture=pa.array([PNG]))
    with pytest.raises(UserError, match=r"b.parquet has no column\(s\) \['image'\]"):
        datasets.parquet_input_schema(Location(str(tmp_path)))


ROOT = Path(__file__).resolve().parents[2]
HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def test_gs_url_reaches_gcsfs_with_storage_options():
    gcsfs = pytest.importorskip("gcsfs")
    fs, root = Location("gs://my-bucket/images/train", {"token": "anon", "project": "proj-1"}).filesystem()
    assert isinstance(fs, gcsfs.GCSFileSystem)
    assert root == "my-bucket/images/train"
    assert fs.project == "proj-1"  # storage_options reach the filesystem


def test_hf_url_reaches_hffilesystem_with_storage_options():
    hf = pytest.importorskip("huggingface_hub")
    endpoint = "http://127.0.0.1:9"  # never contacted: resolving a URL needs no request
    fs, root = Location("hf://datasets/org/faces/data", {"token": False, "endpoint": endpoint}).filesystem()
    assert isinstance(fs, hf.HfFileSystem)
    assert root == "datasets/org/faces/data"
    assert fs.endpoint == endpoint


def test_unknown_protocol_is_a_user_error():
    with pytest.raises(UserError, match="cannot open"):
        Location("nosuchproto://bucket/x").filesystem()


@pytest.mark.parametrize(
    ("url", "module", "extra"),
    [("gs://bucket/damaged", "gcsfs", "gcs"), ("hf://datasets/org/faces", "huggingface_hub", "hf")],
)
def test_missing_extra_is_one_line_naming_it(tmp_path, url, module, extra):
    """The job, run for real in a process where the module cannot be imported (a meta-path
    finder refuses it, as a missing install would), ends with one line naming the extra."""
    script = textwrap.dedent(
        f"""
        import sys

        class Missing:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == {module!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.modules.pop({module!r}, None)
        sys.meta_path.insert(0, Missing())
        from jobs.cli import main
        sys.exit(main(sys.argv[1:]))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, "restore", "--set", f"input.path={url}",
         "--set", f"output.path={tmp_path / 'out'}", "--set", "fit.method=median"],
        capture_output=True, text=True, cwd=ROOT, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert f"need {module}" in lines[0] and f"imrestore[{extra}]" in lines[0]


def _png(value: int) -> bytes:
    return png_bytes(np.full((6, 5), value, np.uint8))


def path_only_folder(tmp_path: Path) -> Path:
    """A Hugging Face-style dataset folder: Parquet whose image cells point at files."""
    root = tmp_path / "ds"
    (root / "images" / "sub").mkdir(parents=True)
    (root / "images" / "a.png").write_bytes(_png(10))
    (root / "images" / "sub" / "b.png").write_bytes(_png(20))
    (tmp_path / "outside.png").write_bytes(_png(30))
    cells = [
        {"bytes": None, "path": "images/a.png"},  # relative to the dataset folder
        {"bytes": None, "path": str(root / "images" / "sub" / "b.png")},  # absolute, inside it
        {"bytes": _png(40), "path": "ignored.png"},  # bytes win
        {"bytes": None, "path": "images/missing.png"},
        {"bytes": None, "path": "../outside.png"},  # climbs out: refused
        {"bytes": None, "path": str(tmp_path / "outside.png")},  # absolute, outside: refused
        None,
    ]
    ids = ["rel", "abs", "embedded", "missing", "climb", "outside", "null"]
    pq.write_table(pa.table({"id": ids, "image": pa.array(cells, HF_IMAGE)}), root / "train.parquet")
    return root


def test_embed_path_cells_reads_files_inside_the_dataset_only(tmp_path):
    root = path_only_folder(tmp_path)
    table = pq.read_table(root / "train.parquet")
    for url in (str(root), str(root / "train.parquet")):  # a folder, or one of its files
        out = datasets.embed_path_cells(table, ["image", "not_a_column"], Location(url))
        assert out.schema == table.schema  # same struct column: passes through unchanged in kind
        cells = dict(zip(out.column("id").to_pylist(), out.column("image").to_pylist(), strict=True))
        assert cells["rel"]["bytes"] == _png(10) and cells["rel"]["path"] == "images/a.png"
        assert cells["abs"]["bytes"] == _png(20)
        assert cells["embedded"]["bytes"] == _png(40)
        for bad in ("missing", "climb", "outside"):
            assert cells[bad]["bytes"] is None
        assert cells["null"] is None
    with pytest.raises(Exception, match="could not be read"):
        cell_bytes(cells["climb"])


def test_iter_rows_fills_path_only_cells(tmp_path):
    root = path_only_folder(tmp_path)
    rows = list(datasets.iter_rows(Location(str(root)), "parquet"))
    assert [r["id"] for r in rows] == ["rel", "abs", "embedded", "missing", "climb", "outside", "null"]
    assert cell_bytes(rows[0]["image"]) == _png(10)


def test_binary_columns_are_left_alone(tmp_path):
    table = pa.table({"id": ["x"], "image": pa.array([_png(1)], pa.binary())})
    assert datasets.embed_path_cells(table, ["image"], Location(str(tmp_path))) is table
