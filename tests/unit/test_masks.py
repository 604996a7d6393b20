import numpy as np

from restore_core import masks


def test_zero_rule_needs_every_channel():
    img = np.ones((3, 3, 3), np.float32)
    img[0, 0] = 0
    img[1, 1, 0] = 0  # one channel zero: not dead
    m = masks.detect(img)
    assert m.sum() == 1 and m[0, 0]


def test_saturated_and_large_regions():
    img = np.full((10, 10), 0.5, np.float32)
    img[0, 0] = 1.0
    img[5:9, 5:9] = 0.0  # 16-pixel black area
    img[2, 2] = 0.0
    assert masks.detect(img, "saturated").sum() == 1
    assert masks.detect(img, "zero").sum() == 17
    kept = masks.detect(img, "zero", ignore_zero_regions_larger_than=4)
    assert kept.sum() == 1 and kept[2, 2]


def test_apply_dead_pixels_rate(rng):
    img = np.full((100, 100, 3), 0.5, np.float32)
    damaged, dead = masks.apply_dead_pixels(img, 0.3, rng)
    assert abs(dead.mean() - 0.3) < 0.02
    assert (damaged[dead] == 0).all() and (damaged[~dead] == 0.5).all()
    np.testing.assert_array_equal(masks.detect(damaged), dead)
