"""The refiner artifact (restore_core/io/refiners.py): safetensors + meta.json, validated on load."""

import json

import numpy as np
import pytest
import torch

from restore_core.errors import ArtifactError
from restore_core.io.locations import Location
from restore_core.io.refiners import build_from_artifact, load_refiner, refiner_artifact, save_refiner
from restore_core.refiner import RefinerSpec, build_refiner, refine

SPEC = RefinerSpec(channels=1, width=4, levels=1, fill_iters=20)


def _trained_like() -> torch.nn.Module:
    """A small refiner whose weights are not the initial ones (its output layer starts at zero)."""
    torch.manual_seed(0)
    net = build_refiner(SPEC)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def _saved(tmp_path) -> tuple[torch.nn.Module, str, dict]:
    net = _trained_like()
    url = str(tmp_path / "refiner")
    meta = save_refiner(refiner_artifact(net, SPEC, data_fingerprint="abc", training={"epochs": 1}), Location(url))
    return net, url, meta


def test_round_trip_gives_the_same_network_and_hash(tmp_path):
    net, url, meta = _saved(tmp_path)
    back = load_refiner(Location(url))
    assert (
        back.fingerprint()
        == meta["fingerprint"]
        == json.loads((tmp_path / "refiner" / "meta.json").read_text())["fingerprint"]
    )
    assert back.spec() == SPEC and back.meta["data_fingerprint"] == "abc" and back.bases_fingerprint == ""
    rebuilt = build_from_artifact(back)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 12, 12, generator=g)
    dead = torch.rand(2, 1, 12, 12, generator=g) < 0.3
    torch.testing.assert_close(refine(rebuilt, x, dead), refine(net.eval(), x, dead), rtol=0, atol=0)
    assert not torch.equal(refine(rebuilt, x, dead)[dead.expand_as(x)], x[dead.expand_as(x)])


def test_round_trip_on_another_filesystem():
    net = _trained_like()
    meta = save_refiner(refiner_artifact(net, SPEC), Location("memory://refiner-test/r1"))
    assert load_refiner(Location("memory://refiner-test/r1")).fingerprint() == meta["fingerprint"]


def test_missing_and_corrupt_files_are_one_line(tmp_path):
    with pytest.raises(ArtifactError, match="train-inpaint"):
        load_refiner(Location(str(tmp_path / "nothing")))
    with pytest.raises(ArtifactError, match="no refiner given"):
        load_refiner(Location(""))
    _, url, _ = _saved(tmp_path)
    weights = tmp_path / "refiner" / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ArtifactError, match="cannot be read") as err:
        load_refiner(Location(url))
    assert "\n" not in str(err.value)
    weights.write_bytes(b"\x80\x04garbage pickle-like bytes")
    with pytest.raises(ArtifactError, match="cannot be read"):
        load_refiner(Location(url))


def test_changed_weights_break_the_content_hash(tmp_path):
    from safetensors.numpy import load_file, save_file

    _, url, _ = _saved(tmp_path)
    path = str(tmp_path / "refiner" / "model.safetensors")
    tensors = load_file(path)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1
    save_file(tensors, path)
    with pytest.raises(ArtifactError, match="fingerprint"):
        load_refiner(Location(url))
    tensors[name][...] = np.nan
    save_file(tensors, path)
    with pytest.raises(ArtifactError, match="NaN"):
        load_refiner(Location(url))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"width": 8}, "do not fit the spec"),
        ({"levels": 2}, "do not fit the spec"),
        ({"channels": 7}, "spec is invalid"),
        ({"depth_of_field": 3}, "unknown field 'depth_of_field'"),
    ],
)
def test_a_spec_that_does_not_fit_the_weights_is_refused(tmp_path, change, message):
    _, url, _ = _saved(tmp_path)
    meta_path = tmp_path / "refiner" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["spec"].update(change)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=message) as err:
        load_refiner(Location(url))
    assert "\n" not in str(err.value) and url in str(err.value)


def test_another_artifact_kind_is_refused(tmp_path):
    _, url, _ = _saved(tmp_path)
    meta_path = tmp_path / "refiner" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["format"] = "imrestore-sr"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="not a refiner"):
        load_refiner(Location(url))


@pytest.mark.parametrize(("fill_psnr", "used_by_auto"), [(30.0, True), (30.5, False), (None, True)])
def test_auto_uses_a_refiner_only_when_it_beat_its_fill_on_held_out_rows(tmp_path, fill_psnr, used_by_auto):
    from jobs.config_restore import RestoreJobConfig
    from jobs.restore_plan import load_refiner_artifact
    from restore_core.config import from_dict

    history = [] if fill_psnr is None else [{"val_psnr_hidden": 30.2, "val_psnr_hidden_fill": fill_psnr}]
    url = str(tmp_path / "refiner")
    save_refiner(refiner_artifact(_trained_like(), SPEC, training={"history": history}), Location(url))
    for method, expected in (("auto", used_by_auto), ("learned", True)):
        cfg = from_dict(RestoreJobConfig, {"input": {"path": "in"}, "refiner": url, "fit": {"method": method}})
        assert (load_refiner_artifact(cfg) is not None) == expected, method
