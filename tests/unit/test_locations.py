"""restore_core/io/locations.py's Location: a path and its storage options as one value, whose
text never shows the options (they hold credentials)."""

from __future__ import annotations

import logging
import pickle

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
