import json

import numpy as np
import pytest

from restore_core.bases import Bases, BasesMeta
from restore_core.errors import ArtifactError
from restore_core.io.artifacts import load_bases, save_bases
from restore_core.io.locations import Location


def _bases():
    H = np.abs(np.random.default_rng(0).random((4, 9))).astype(np.float32)
    return Bases(H, BasesMeta(mode="patch", k=4, n_pixels=9, channels=1, patch_size=3, loss=0.25))


def test_roundtrip(tmp_path):
    b = _bases()
    save_bases(b, Location(str(tmp_path / "b")))
    back = load_bases(Location(str(tmp_path / "b")))
    np.testing.assert_array_equal(back.H, b.H)
    assert back.meta == b.meta
    assert json.loads((tmp_path / "b" / "meta.json").read_text())["fingerprint"] == b.fingerprint()


def test_missing_artifact_says_what_to_do(tmp_path):
    with pytest.raises(ArtifactError, match="learn-bases"):
        load_bases(Location(str(tmp_path / "nothing")))


def test_corrupt_nan_wrong_shape_and_pickle_refused(tmp_path):
    b = _bases()
    save_bases(b, Location(str(tmp_path / "b")))
    npy = tmp_path / "b" / "bases.npy"
    H = b.H.copy()
    H[0, 0] = np.nan
    np.save(npy, H)
    with pytest.raises(ArtifactError, match="NaN"):
        load_bases(Location(str(tmp_path / "b")))
    np.save(npy, b.H[:, :5])
    with pytest.raises(ArtifactError, match="corrupt"):
        load_bases(Location(str(tmp_path / "b")))
    np.save(npy, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ArtifactError, match="cannot be read"):
        load_bases(Location(str(tmp_path / "b")))
    npy.write_bytes(b"garbage")
    with pytest.raises(ArtifactError):
        load_bases(Location(str(tmp_path / "b")))
