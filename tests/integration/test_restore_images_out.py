"""output.format images: an image folder tree in, the same tree of restored files out (under
<output>/images/), with the metrics and manifest as Parquet beside them; a rerun does nothing."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from imrestore_data import synth
from jobs import restore
from jobs.config_restore import RestoreJobConfig
from restore_core import codec, masks
from restore_core.config import from_dict
from restore_core.errors import UserError
from restore_core.io.shards import image_relpath

pytestmark = pytest.mark.integration


def _write_tree(root):
    rng = np.random.default_rng(0)
    imgs = synth.photo_crops(3, 40, names=("coffee", "chelsea", "camera"), seed=1)
    files = {"a/x.png": "PNG", "b/c/y.jpg": "JPEG", "z.bmp": "BMP"}
    for (rel, fmt), img in zip(files.items(), imgs, strict=True):
        damaged = np.rint(masks.apply_dead_pixels(img, 0.1, rng)[0] * 255).astype(np.uint8)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(damaged).save(root / rel, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return files


def test_image_tree_in_same_tree_out(local_ray, tmp_path):
    src, out = tmp_path / "photos", tmp_path / "restored"
    _write_tree(src)
    cfg = from_dict(
        RestoreJobConfig,
        {
            "input": {"path": str(src), "format": "images"},
            "output": {"path": str(out), "format": "images"},
            "fit": {"method": "median"},
            "ray": {"batch_size": 2, "num_cpus": 2},
        },
    )
    summary = restore.run(cfg)
    assert summary.values["rows ok"] == 3 and summary.outputs["images"] == f"{out}/images"
    written = sorted(p.relative_to(out / "images").as_posix() for p in (out / "images").rglob("*") if p.is_file())
    assert written == ["a/x.png", "b/c/y.jpg", "z.png"]  # BMP is written as PNG (keep)
    jpeg = Image.open(out / "images" / "b/c/y.jpg")
    assert jpeg.format == "JPEG" and codec.estimate_jpeg_quality(jpeg) == 92
    for name in ("a/x.png", "z.png"):  # lossless outputs: every dead pixel filled (JPEG may make new zeros)
        img, _ = codec.decode((out / "images" / name).read_bytes())
        assert not masks.detect(img, "zero").any()
    table = pq.read_table(out / "data")
    assert "image" not in table.column_names
    assert sorted(table.column("output_path").to_pylist()) == [f"images/{n}" for n in written]
    assert (out / "_manifest.json").is_file()

    before = {n: (out / "images" / n).stat().st_mtime_ns for n in written}
    again = restore.run(cfg)  # resume: everything is committed, nothing is rewritten
    assert again.values["shards written now"] == 0
    assert before == {n: (out / "images" / n).stat().st_mtime_ns for n in written}

    # a grown input (a nightly drop of new files): resume by default restores the new file only
    img = synth.photo_crops(1, 40, names=("coffee",), seed=5)[0]
    damaged = np.rint(masks.apply_dead_pixels(img, 0.1, np.random.default_rng(1))[0] * 255).astype(np.uint8)
    Image.fromarray(damaged).save(src / "a" / "new.png", format="PNG")
    grown = restore.run(cfg)
    assert grown.values["shards written now"] == 1 and grown.values["rows ok"] == 4  # rows ok: the whole output
    assert before == {n: (out / "images" / n).stat().st_mtime_ns for n in written}  # the old ones untouched
    assert (out / "images" / "a" / "new.png").is_file()
    assert sorted(pq.read_table(out / "data").column("id").to_pylist()) == [
        "a/new.png",
        "a/x.png",
        "b/c/y.jpg",
        "z.bmp",
    ]


def test_images_output_needs_an_image_folder_input(tmp_path):
    cfg = from_dict(
        RestoreJobConfig,
        {"input": {"path": str(tmp_path)}, "output": {"path": str(tmp_path / "o"), "format": "images"},
         "fit": {"method": "median"}},
    )  # fmt: skip
    with pytest.raises(UserError, match=r"needs input\.format images"):
        restore.run(cfg)


def test_image_relpath_follows_the_written_format():
    png = codec.encode_png(np.zeros((4, 4), np.float32))
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="JPEG")
    assert image_relpath("a/b.png", png) == "a/b.png"
    assert image_relpath("a/b.bmp", png) == "a/b.png"
    assert image_relpath("a/b.JPEG", buf.getvalue()) == "a/b.JPEG"
    assert image_relpath("a/b.png", buf.getvalue()) == "a/b.jpg"
