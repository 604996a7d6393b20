"""restore_core/io/datasets.py: optional protocols (gs://, hf://) up to the filesystem boundary,
and Hugging Face path-only image cells resolved relative to the dataset's folder."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from restore_core.errors import UserError
from restore_core.io import datasets
from restore_core.pipeline import cell_bytes
from tests.conftest import png_bytes

ROOT = Path(__file__).resolve().parents[2]
HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def test_gs_url_reaches_gcsfs_with_storage_options():
    gcsfs = pytest.importorskip("gcsfs")
    fs, root = datasets.filesystem("gs://my-bucket/images/train", {"token": "anon", "project": "proj-1"})
    assert isinstance(fs, gcsfs.GCSFileSystem)
    assert root == "my-bucket/images/train"
    assert fs.project == "proj-1"  # storage_options reach the filesystem


def test_hf_url_reaches_hffilesystem_with_storage_options():
    hf = pytest.importorskip("huggingface_hub")
    endpoint = "http://127.0.0.1:9"  # never contacted: resolving a URL needs no request
    fs, root = datasets.filesystem("hf://datasets/org/faces/data", {"token": False, "endpoint": endpoint})
    assert isinstance(fs, hf.HfFileSystem)
    assert root == "datasets/org/faces/data"
    assert fs.endpoint == endpoint


def test_unknown_protocol_is_a_user_error():
    with pytest.raises(UserError, match="cannot open"):
        datasets.filesystem("nosuchproto://bucket/x")


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
        out = datasets.embed_path_cells(table, ["image", "not_a_column"], url)
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
    rows = list(datasets.iter_rows(str(root), "parquet"))
    assert [r["id"] for r in rows] == ["rel", "abs", "embedded", "missing", "climb", "outside", "null"]
    assert cell_bytes(rows[0]["image"]) == _png(10)


def test_binary_columns_are_left_alone(tmp_path):
    table = pa.table({"id": ["x"], "image": pa.array([_png(1)], pa.binary())})
    assert datasets.embed_path_cells(table, ["image"], str(tmp_path)) is table
