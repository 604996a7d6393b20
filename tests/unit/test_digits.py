import numpy as np

from imrestore_data.digits import digits, font_sources


def test_digits_shape_range_and_mnist_layout():
    x, y = digits(32, seed=3)
    assert x.shape == (32, 28, 28) and x.dtype == np.float32
    assert y.shape == (32,) and set(np.unique(y)) <= set(range(10))
    assert x.min() >= 0.0 and x.max() <= 1.0
    # White strokes on black: corners are background, every image has ink, ink is a minority.
    assert np.all(x[:, :2, :2] == 0.0)
    assert np.all(x.reshape(32, -1).max(1) > 0.5)
    assert 0.03 < float((x > 0.5).mean()) < 0.4


def test_digits_deterministic_and_index_addressable():
    a, la = digits(10, seed=7)
    b, lb = digits(10, seed=7)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    tail, ltail = digits(4, seed=7, start=6)  # image i depends only on (seed, i)
    np.testing.assert_array_equal(a[6:], tail)
    np.testing.assert_array_equal(la[6:], ltail)
    c, _ = digits(10, seed=8)
    assert not np.array_equal(a, c)


def test_digits_other_sizes_and_fonts():
    x, _ = digits(3, size=40, seed=0)
    assert x.shape == (3, 40, 40)
    assert len(font_sources()) >= 1  # Pillow's bundled font at least
