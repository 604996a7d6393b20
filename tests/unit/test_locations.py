"""restore_core/io/locations.py's Location: a path and its storage options as one value, whose
text never shows the options (they hold credentials), and the config properties that build it."""

from __future__ import annotations

import dataclasses
import logging
import pickle

from jobs.config_quality import QualityJobConfig
from jobs.config_ray import TrainCheckpointConfig
from jobs.config_restore import RestoreJobConfig
from jobs.config_train_inpaint import TrainInpaintConfig
from restore_core.config import InputConfig, OutputConfig, SRConfig, to_dict
from restore_core.io import shards as shard_io
from restore_core.io.locations import Location

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
OPTIONS = {"key": "AKIAIOSFODNN7EXAMPLE", "secret": SECRET, "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}


def test_str_and_repr_show_the_path_and_never_the_options(caplog):
    loc = Location("s3://bucket/in", OPTIONS)
    assert str(loc) == f"{loc}" == "s3://bucket/in"
    for text in (repr(loc), f"{loc!r}", repr([loc]), repr({"where": loc}), repr(loc.join("a"))):
        assert "s3://bucket/in" in text
        assert SECRET not in text and "AKIA" not in text and "secret" not in text
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("reading %s (%r)", loc, loc)
    assert SECRET not in caplog.text


def test_join_and_at_keep_the_options_and_the_value_is_a_copy():
    given = {"key": "k", "secret": "s"}
    loc = Location("s3://bucket/out/", given)
    given["secret"] = "changed later"  # the caller's dict is not the Location's
    assert loc.storage_options == {"key": "k", "secret": "s"}
    part = loc.join("data", "part-00000.parquet")
    assert part.path == "s3://bucket/out/data/part-00000.parquet"
    assert part.storage_options == loc.storage_options
    assert loc.at("s3://bucket/bases") == Location("s3://bucket/bases", {"key": "k", "secret": "s"})
    assert pickle.loads(pickle.dumps(loc)) == loc  # Ray ships Locations to its workers


def test_key_normalises_spellings_and_equality_counts_the_options(tmp_path):
    assert Location("s3a://bkt//p/").key() == Location("s3://bkt/p").key() == ("s3", "bkt/p")
    assert Location(f"file://{tmp_path}/a/../b/").key() == Location(str(tmp_path / "b")).key()
    same_path = {Location("s3://b/p", {"anon": True}), Location("s3://b/p")}
    assert len(same_path) == 2  # hashable (by path), unequal by options
    assert Location("s3://b/p") == Location("s3://b/p", {})


def test_filesystem_opens_the_path_with_the_options(tmp_path):
    fs, root = Location(str(tmp_path)).filesystem()
    assert fs.isdir(root)
    fs, root = Location("memory://loc-test/x", {"skip_instance_cache": True}).filesystem()
    assert root == "/loc-test/x"


def test_config_sections_expose_their_locations_and_fingerprints_never_see_them():
    opts = {"key": "k", "secret": "s"}
    cfg = RestoreJobConfig(
        input=InputConfig(path="s3://b/in", storage_options=opts),
        output=OutputConfig(path="s3://b/out", storage_options={"anon": True}),
        bases="s3://b/bases",
        refiner="s3://b/refiner",
        sr=SRConfig(model="s3://m/sr", storage_options={"profile": "models"}),
    )
    assert cfg.input.location == Location("s3://b/in", opts)
    assert cfg.output.location == Location("s3://b/out", {"anon": True})
    assert cfg.bases_location == Location("s3://b/bases", opts)  # artifacts: the input's options
    assert cfg.refiner_location == Location("s3://b/refiner", opts)
    assert cfg.sr.model_location == Location("s3://m/sr", {"profile": "models"})
    quality = QualityJobConfig(output="s3://q/runs", output_storage_options={"anon": True})
    assert quality.output_location == Location("s3://q/runs", {"anon": True})
    # Properties are not fields: the config's plain data, and so every fingerprint, is unchanged.
    flat = shard_io.settings_document(to_dict(cfg), {})
    assert not any("location" in k for k in flat) and "location" not in str(dataclasses.asdict(cfg))


def test_checkpoints_default_to_the_output_folder_and_its_options():
    train = TrainInpaintConfig(input=InputConfig(path="s3://b/in", storage_options={"anon": True}), output="s3://b/m")
    assert train.output_location == Location("s3://b/m", {"anon": True})
    assert TrainCheckpointConfig().location(train.output_location) == Location("s3://b/m/checkpoints", {"anon": True})
    own = TrainCheckpointConfig(path="s3://c/ckpt/", storage_options={"profile": "c"})
    assert own.location(train.output_location) == Location("s3://c/ckpt", {"profile": "c"})
