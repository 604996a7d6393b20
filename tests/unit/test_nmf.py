import warnings

import numpy as np
import pytest
import torch

from restore_core import nmf


def _synthetic(rng, n=40, k=12, m=200):
    H = rng.random((k, m)).astype(np.float32)
    W = (rng.random((n, k)) * (rng.random((n, k)) < 0.5)).astype(np.float32)
    return W @ H, W, H


def test_fit_weights_recovers_known_weights(rng):
    X, W_true, H = _synthetic(rng)
    W = nmf.fit_weights(X, H, max_iter=5000, tol=1e-7)
    rel = np.linalg.norm(W - W_true) / np.linalg.norm(W_true)
    assert rel <= 1e-3
    assert (W >= 0).all()


def test_fit_weights_masked_recovers_and_ignores_dead_values(rng):
    X, W_true, H = _synthetic(rng)
    mask = (rng.random(X.shape) > 0.4).astype(np.float32)
    W = nmf.fit_weights(X, H, mask, max_iter=5000, tol=1e-7)
    assert np.linalg.norm(W - W_true) / np.linalg.norm(W_true) <= 1e-3
    garbage = X.copy()
    garbage[mask == 0] = rng.random(int((mask == 0).sum())) * 100
    garbage[0, np.flatnonzero(mask[0] == 0)[:1]] = np.nan
    W2 = nmf.fit_weights(garbage, H, mask, max_iter=5000, tol=1e-7)
    np.testing.assert_array_equal(W, W2)


def test_weights_start_at_zero_and_l1_sparsifies(rng):
    X, _, H = _synthetic(rng)
    W0 = nmf.fit_weights(X, H, max_iter=0)
    assert (W0 == 0).all()
    dense = nmf.fit_weights(X, H, max_iter=2000, tol=1e-8)
    sparse = nmf.fit_weights(X, H, l1=5.0, max_iter=2000, tol=1e-8)
    assert (sparse == 0).mean() > (dense == 0).mean()


def test_fit_weights_torch_in_torch_out(rng):
    X, _, H = _synthetic(rng)
    W = nmf.fit_weights(torch.from_numpy(X), torch.from_numpy(H), max_iter=50, tol=0)
    assert isinstance(W, torch.Tensor) and W.shape == (X.shape[0], H.shape[0])


def test_convergence_warning(rng):
    X, _, H = _synthetic(rng)
    with pytest.warns(nmf.ConvergenceWarning):
        nmf.fit_weights(X, H, max_iter=10, tol=1e-12)


def test_restore_keeps_observed_bit_exact(rng):
    X, _, H = _synthetic(rng)
    X = X / X.max()
    mask = rng.random(X.shape) > 0.3
    damaged = np.where(mask, X, 0).astype(np.float32)
    out = nmf.restore(damaged, H, mask.astype(np.float32), max_iter=500)
    np.testing.assert_array_equal(out[mask], damaged[mask])
    assert np.abs(out[~mask] - X[~mask]).mean() < np.abs(damaged[~mask] - X[~mask]).mean()


def test_reference_method_is_plain_unmasked_gradient_descent(rng):
    X, _, H = _synthetic(rng, n=3)
    W = nmf.fit_weights_reference(X, H, n_iter=200)
    # Plain gradient descent on the mean squared error lowers it from the zero start.
    before = nmf.objective(X, np.zeros_like(W), H)
    after = nmf.objective(X, W, H)
    assert after < 0.1 * before


@pytest.mark.parametrize("solver", ["hals", "mu"])
def test_learn_bases_lowers_loss_and_stays_nonnegative(rng, solver):
    X, _, _ = _synthetic(rng, n=60, k=6, m=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nmf.ConvergenceWarning)
        res = nmf.learn_bases(X, 6, solver=solver, max_iter=60, tol=0, seed=1)
    assert res.H_.shape == (6, 50) and (res.H_ >= 0).all()
    assert res.loss_history_[-1] < res.loss_history_[0]
    assert res.loss_history_[-1] < 0.05 * nmf.objective(X, np.zeros((60, 6), np.float32), res.H_)


def test_learn_bases_online_minibatch(rng):
    X, _, _ = _synthetic(rng, n=200, k=6, m=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nmf.ConvergenceWarning)
        res = nmf.learn_bases(X, 6, batch_size=32, max_iter=15, tol=0, seed=2)
    assert (res.H_ >= 0).all()
    assert res.loss_history_[-1] < res.loss_history_[0]


def test_learn_bases_is_seeded(rng):
    X, _, _ = _synthetic(rng, n=30, k=4, m=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nmf.ConvergenceWarning)
        a = nmf.learn_bases(X, 4, max_iter=5, seed=3).H_
        b = nmf.learn_bases(X, 4, max_iter=5, seed=3).H_
    np.testing.assert_array_equal(a, b)


def test_fit_weights_reports_iterations_and_accepts_cached_gram(rng):
    X, _, H = _synthetic(rng)
    info: dict[str, float] = {}
    W = nmf.fit_weights(X, H, max_iter=3000, tol=1e-6, info=info)
    assert info["converged"] == 1.0 and 0 < info["n_iter"] < 3000
    gram = H @ H.T
    W2 = nmf.fit_weights(X, H, max_iter=3000, tol=1e-6, gram=gram)
    np.testing.assert_allclose(W, W2, rtol=1e-3, atol=1e-4)  # numpy vs torch GEMM rounding
    # A wrong Gram changes the answer: the argument is really used.
    W3 = nmf.fit_weights(X, H, max_iter=3000, tol=1e-6, gram=2 * gram)
    assert np.abs(W3 - W).max() > 1e-2
    info0: dict[str, float] = {}
    nmf.fit_weights(X, H, max_iter=0, info=info0)
    assert info0["n_iter"] == 0
