import json
import os

import numpy as np
import pytest
import torch

from restore_core import sr
from restore_core.config import SRConfig, SRDegradeConfig
from restore_core.errors import ArtifactError, UserError
from restore_core.io import sr_models
from restore_core.io.artifacts import load_sr_model
from restore_core.io.locations import Location

WRITEUP = SRDegradeConfig(scale=2.8, filter="bilinear", align_corners=True, antialias=False)


def _trained_ish(net: sr.SRNet, seed: int = 0) -> sr.SRNet:
    """Random non-trivial weights and BatchNorm statistics (an untrained residual head is zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.dtype.is_floating_point:
                if "running_var" in name:
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * 0.2)
    return net.eval()


def test_writeup_model_exact_parameter_count():
    net = sr.writeup_net()
    # conv 1->16 (144) + BN 16 (32) + conv 16->32 (4608) + BN 32 (64) + conv 32->64 (18432) + BN 64 (128)
    # + conv 64->1 with bias (577): the write-up's Chainer model.
    assert sr.param_count(net) == 144 + 32 + 4608 + 64 + 18432 + 128 + 577 == 23985
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.bias is None for c in convs] == [True, True, True, False]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 3


@pytest.mark.parametrize("residual", [False, True])
def test_output_shape_and_range(residual, rng):
    net = _trained_ish(sr.SRNet((8, 8), residual=residual))
    x = torch.from_numpy(rng.random((3, 1, 17, 23), dtype=np.float32))
    y = sr.predict(net, x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    if not residual:
        raw = net(x).detach()  # sigmoid: strictly inside (0, 1) before clamping
        assert float(raw.min()) > 0.0 and float(raw.max()) < 1.0


def test_residual_starts_as_identity(rng):
    net = sr.SRNet((8,), residual=True).eval()
    x = torch.from_numpy(rng.random((2, 1, 9, 9), dtype=np.float32))
    torch.testing.assert_close(net(x), x)


def test_degrade_shape_range_and_writeup_sizes(rng):
    x = torch.from_numpy(rng.random((4, 1, 28, 28), dtype=np.float32))
    assert sr.shrink(x, WRITEUP).shape == (4, 1, 10, 10)
    y = sr.degrade(x, WRITEUP)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    assert not torch.allclose(x, y)  # information was lost
    for filt in ("nearest", "bicubic", "area"):
        z = sr.degrade(x, SRDegradeConfig(scale=2.0, filter=filt, align_corners=False, antialias=filt == "bicubic"))
        assert z.shape == x.shape and float(z.min()) >= 0 and float(z.max()) <= 1
    flat = torch.full((1, 1, 28, 28), 0.4)
    torch.testing.assert_close(sr.degrade(flat, WRITEUP), flat)  # a flat image survives
    with pytest.raises(UserError):
        sr.resize(x, (5, 5), "lanczos")


def test_sample_patches_any_size(rng):
    imgs = [
        rng.random((40, 50), dtype=np.float32),
        rng.random((20, 10, 3), dtype=np.float32),
        rng.random((28, 28), dtype=np.float32),
    ]
    p = sr.sample_patches(imgs, 28, 4, np.random.default_rng(0))
    # 4 from the large one, 1 padded small one, the exact-size one once.
    assert p.shape == (6, 28, 28) and p.dtype == np.float32
    assert p.min() >= 0 and p.max() <= 1
    np.testing.assert_array_equal(p[-1], imgs[2])
    q = sr.sample_patches(imgs, 28, 4, np.random.default_rng(0))
    np.testing.assert_array_equal(p, q)


def test_tiled_equals_untiled_on_odd_sizes(rng):
    net = _trained_ish(sr.SRNet((8, 8, 8)))
    planes = rng.random((2, 67, 45), dtype=np.float32)
    whole = sr.enhance_planes(net, planes, tile=512, overlap=4)
    tiled = sr.enhance_planes(net, planes, tile=16, overlap=net.receptive_radius, batch_tiles=5)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    # Too little context would leave seams: refused.
    with pytest.raises(UserError):
        sr.enhance_planes(net, planes, tile=16, overlap=1)


def test_train_step_reduces_loss():
    torch.manual_seed(0)
    net = sr.SRNet((8, 8), residual=False)
    state = sr.make_train_state(net, WRITEUP, torch.device("cpu"), lr=1e-2)
    from imrestore_data.digits import digits

    x = torch.from_numpy(digits(16, seed=1)[0])[:, None]
    first = sr.evaluate_batch(net, x, WRITEUP, torch.device("cpu"))
    for _ in range(25):
        sr.train_step(state, x)
    after = sr.evaluate_batch(net, x, WRITEUP, torch.device("cpu"))
    assert after["loss"] < first["loss"] * 0.5
    assert after["n"] == 16 and np.isfinite(after["psnr_bicubic"])


@pytest.fixture
def saved_model(tmp_path):
    net = _trained_ish(sr.SRNet((8, 8), residual=True), seed=3)
    url = str(tmp_path / "model")
    meta = sr_models.save_model(net, WRITEUP, Location(url), val_psnr=21.5)
    return net, url, meta


def test_checkpoint_round_trip(saved_model, rng):
    net, url, meta = saved_model
    assert sorted(os.listdir(url)) == ["meta.json", "model.safetensors"]
    assert meta["architecture"] == {"name": "srnet", "channels": [8, 8], "residual": True, "in_channels": 1}
    assert meta["degrade"]["filter"] == "bilinear" and meta["val_psnr"] == 21.5
    model = sr_models.load_model(Location(url))
    assert model.degrade == WRITEUP
    x = torch.from_numpy(rng.random((2, 1, 13, 11), dtype=np.float32))
    torch.testing.assert_close(sr.predict(model.net, x), sr.predict(net, x))


def test_load_sr_apply_gray_rgb_and_scale(saved_model, rng):
    _, url, _ = saved_model
    gray = rng.random((31, 17), dtype=np.float32)
    rgb = rng.random((19, 33, 3), dtype=np.float32)
    rgba = rng.random((12, 12, 4), dtype=np.float32)
    apply = sr_models.load_sr_apply(SRConfig(enabled=True, model=url), "cpu")
    assert apply(gray).shape == gray.shape
    out = apply(rgb)
    assert out.shape == rgb.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    out4 = apply(rgba)
    np.testing.assert_array_equal(out4[:, :, 3], rgba[:, :, 3])  # alpha passes through
    per = sr_models.load_sr_apply(SRConfig(enabled=True, model=url, color="per_channel"), "cpu")(rgb)
    assert per.shape == rgb.shape and not np.allclose(per, out)
    up = sr_models.load_sr_apply(SRConfig(enabled=True, model=url, scale=2.0, tile=8), "cpu")
    assert up(gray).shape == (62, 34)
    assert up(rgb).shape == (38, 66, 3)


def test_y_channel_keeps_gray_images_gray(saved_model, rng):
    _, url, _ = saved_model
    g = rng.random((16, 16), dtype=np.float32)
    apply = sr_models.load_sr_apply(SRConfig(enabled=True, model=url), "cpu")
    out = apply(np.repeat(g[:, :, None], 3, axis=2))
    np.testing.assert_allclose(out[:, :, 0], out[:, :, 1], atol=1e-5)
    np.testing.assert_allclose(out[:, :, 0], apply(g), atol=1e-5)


def test_ycbcr_round_trip(rng):
    rgb = rng.random((5, 7, 3), dtype=np.float32)
    np.testing.assert_allclose(sr.ycbcr_to_rgb(sr.rgb_to_ycbcr(rgb)), rgb, atol=1e-5)


def test_corrupt_checkpoints_refused(saved_model, tmp_path):
    _, url, _ = saved_model
    weights = os.path.join(url, "model.safetensors")
    meta_path = os.path.join(url, "meta.json")
    good = open(weights, "rb").read()

    # Truncated weights file.
    with open(weights, "wb") as f:
        f.write(good[: len(good) // 2])
    with pytest.raises(ArtifactError, match="cannot be read"):
        sr_models.load_model(Location(url))

    # Flipped bytes in the data: still parses, but the fingerprint no longer matches.
    bad = bytearray(good)
    bad[-8:] = b"\x00\x00\xc0\x7f" * 2  # NaN in the last float
    with open(weights, "wb") as f:
        f.write(bytes(bad))
    with pytest.raises(ArtifactError, match=r"NaN|fingerprint"):
        sr_models.load_model(Location(url))

    # Weights that do not fit the architecture in meta.json.
    with open(weights, "wb") as f:
        f.write(good)
    meta = json.load(open(meta_path))
    meta["architecture"]["channels"] = [8, 16]
    json.dump(meta, open(meta_path, "w"))
    with pytest.raises(ArtifactError, match="do not match its architecture"):
        sr_models.load_model(Location(url))

    # Not a model folder at all.
    with pytest.raises(ArtifactError, match=r"meta\.json missing"):
        sr_models.load_model(Location(str(tmp_path / "nowhere")))
    open(meta_path, "w").write("{not json")
    with pytest.raises(ArtifactError):
        load_sr_model(Location(url))


def test_nan_weights_refused_on_save(tmp_path):
    net = sr.SRNet((4,))
    with torch.no_grad():
        net.head.bias.fill_(float("nan"))
    with pytest.raises(ArtifactError, match="NaN"):
        sr_models.save_model(net, WRITEUP, Location(str(tmp_path / "m")))
