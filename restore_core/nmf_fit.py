"""Non-negative least squares with bases frozen: fitting weights, reconstructing, restoring.

Shapes follow scikit-learn: ``X`` (n_images, n_pixels), ``W`` (n_images, k) weights,
``H`` (k, n_pixels) bases; everything non-negative, float32, on CPU or CUDA.

Objective (per image i, with an optional mask ``M`` of observed pixels, 1 = observed)::

    0.5 * || M_i * (X_i - W_i H) ||^2  +  l1 * sum(W_i),   W >= 0

``fit_weights`` solves it for all images of a batch at once with FISTA (accelerated projected
gradient, two GEMMs an iteration, adaptive restart, relative-tolerance stop).
``fit_weights_reference`` is the write-up's method kept as the reference: weights start at 0 and
follow plain gradient descent on the mean squared error over every pixel, one image at a time.
Learning the bases is :mod:`restore_core.nmf`, which re-exports these functions.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from restore_core.device import resolve_device

Array = np.ndarray | torch.Tensor
_EPS = 1e-12


class ConvergenceWarning(UserWarning):
    """An iterative solver stopped at ``max_iter`` before reaching ``tol``."""


def _as_tensor(a: Array, device: torch.device) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.to(device=device, dtype=torch.float32)
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)


def _like(out: torch.Tensor, ref: Array) -> Array:
    if isinstance(ref, torch.Tensor):
        return out.to(ref.device)
    return out.detach().cpu().numpy()


def spectral_norm_sq(H: torch.Tensor, n_iter: int = 50) -> float:
    """Largest eigenvalue of ``H @ H.T`` (the Lipschitz constant of the unmasked gradient)."""
    gram = H @ H.T  # (k, k)
    v = torch.ones(gram.shape[0], device=H.device, dtype=H.dtype)
    lam = 0.0
    for _ in range(n_iter):
        w = gram @ v
        lam_new = float(torch.linalg.vector_norm(w))
        if lam_new == 0.0:
            return 0.0
        v = w / lam_new
        if abs(lam_new - lam) <= 1e-6 * lam_new:
            lam = lam_new
            break
        lam = lam_new
    return lam * 1.01


def _masked_lipschitz(H: torch.Tensor, M: torch.Tensor, n_iter: int = 12) -> torch.Tensor:
    """Per-row estimate of the largest eigenvalue of ``H diag(M_i) H.T``, shape (B, 1).

    The matrices are entrywise non-negative, so power iteration from a positive vector
    converges quickly to the Perron root; a safety factor covers the remaining gap.
    """
    v = torch.ones(M.shape[0], H.shape[0], device=H.device, dtype=H.dtype)  # (B, k)
    lam = torch.ones(M.shape[0], 1, device=H.device, dtype=H.dtype)
    for _ in range(n_iter):
        w = ((v @ H) * M) @ H.T  # (B, k)
        lam = torch.linalg.vector_norm(w, dim=1, keepdim=True).clamp_min(_EPS)
        v = w / lam
    return lam * 1.2


def objective(X: Array, W: Array, H: Array, mask: Array | None = None, l1: float = 0.0) -> float:
    """Mean over images of ``0.5 * ||M * (X - W H)||^2 + l1 * sum(W)``."""
    dev = torch.device("cpu") if not isinstance(X, torch.Tensor) else X.device
    Xt, Wt, Ht = _as_tensor(X, dev), _as_tensor(W, dev), _as_tensor(H, dev)
    R = Wt @ Ht - Xt
    if mask is not None:
        R = R * _as_tensor(mask, dev)
    val = 0.5 * float((R.double() ** 2).sum()) + l1 * float(Wt.double().sum())
    return val / max(Xt.shape[0], 1)


def fit_weights(
    X: Array,
    H: Array,
    mask: Array | None = None,
    *,
    l1: float = 0.0,
    max_iter: int = 300,
    tol: float = 1e-4,
    device: str | torch.device = "auto",
    check_every: int = 10,
    lipschitz: float | None = None,
    gram: Array | None = None,
    info: dict[str, float] | None = None,
) -> Array:
    """Fit non-negative weights for every row of ``X`` at once, bases ``H`` frozen.

    Parameters
    ----------
    X : array (n, n_pixels)
        float32 images (or patches) in [0, 1], flattened.
    H : array (k, n_pixels)
        Non-negative bases.
    mask : array (n, n_pixels), optional
        1 (or True) where a pixel is observed, 0 where it is dead. Dead pixels do not count
        in the fit, and their values in ``X`` (even NaN) have no effect. Values in between are
        per-pixel weights of the squared error.
    l1 : float
        Sparsity penalty on the weights, on the ``0.5 * SSE`` scale.
    max_iter, tol : int, float
        Stop after ``max_iter`` iterations, or when the relative change of ``W`` (Frobenius
        norm over the batch) over an iteration falls under ``tol`` (checked every
        ``check_every``).
    lipschitz : float, optional
        Precomputed largest eigenvalue of ``H @ H.T`` (saves a power iteration per call).
    gram : array (k, k), optional
        Precomputed ``H @ H.T`` for the unmasked case: with the bases fixed across batches it
        costs one (k, n_pixels) GEMM once instead of once a call.
    info : dict, optional
        Filled with ``n_iter`` and ``converged`` (1.0 or 0.0).

    Returns
    -------
    W : array (n, k)
        Non-negative weights, numpy if ``X`` was numpy, else a tensor on X's device.
    """
    dev = X.device if isinstance(X, torch.Tensor) and device == "auto" else resolve_device(device)
    Xt = _as_tensor(X, dev)  # (B, n)
    Ht = _as_tensor(H, dev)  # (k, n)
    B, k = Xt.shape[0], Ht.shape[0]
    if Xt.shape[1] != Ht.shape[1]:
        raise ValueError(f"X has {Xt.shape[1]} pixels per row, bases have {Ht.shape[1]}")
    W = torch.zeros(B, k, device=dev, dtype=torch.float32)  # weights start at 0 (sparsity)
    if B == 0:
        return _like(W, X)

    G: torch.Tensor | None = None
    if mask is None:
        Xt = torch.nan_to_num(Xt)
        # One (B, k) x (k, k) GEMM an iteration instead of two with n_pixels.
        G = Ht @ Ht.T if gram is None else _as_tensor(gram, dev)  # (k, k)
        XHt = Xt @ Ht.T  # (B, k)
        L_all = lipschitz if lipschitz is not None else spectral_norm_sq(Ht)
        step = torch.full((B, 1), 1.0 / max(L_all, _EPS), device=dev)
        M = None
    else:
        M = _as_tensor(mask, dev)  # (B, n)
        Xt = torch.where(M > 0, Xt, torch.zeros((), device=dev)) * M  # NaN-safe M * X
        XHt = Xt @ Ht.T  # (B, k)
        lam = _masked_lipschitz(Ht, M)
        if lipschitz is not None and float(M.max()) <= 1.0:
            # The unmasked constant bounds the masked one only for weights <= 1; larger
            # weights (a strong prior) would make the clamped step diverge to NaN.
            lam = lam.clamp_max(lipschitz)
        step = 1.0 / lam.clamp_min(_EPS)  # (B, 1)
    lin = XHt - l1  # gradient = Y G - (X H^T - l1)

    # On a CPU, rows go through the solver in blocks small enough to stay in cache: the
    # element-wise steps between the GEMMs then run from cache instead of memory (about 1.5x
    # on 8x8 patches), and each block stops as soon as it has converged.
    rows = B if dev.type != "cpu" else max(1024, _CACHE_FLOATS // (Ht.shape[1] + k))
    total_it, converged = 0, True
    for s in range(0, B, rows):
        e = min(B, s + rows)
        it, ok = _fista(W[s:e], lin[s:e], step[s:e], Ht, G, None if M is None else M[s:e], max_iter, tol, check_every)
        total_it += it * (e - s)
        converged &= ok
    if info is not None:
        info["n_iter"] = total_it / B  # mean iterations per row
        info["converged"] = float(converged)
    if not converged and max_iter >= check_every:
        warnings.warn(
            f"fit_weights stopped at max_iter={max_iter} before reaching tol={tol}",
            ConvergenceWarning,
            stacklevel=2,
        )
    return _like(W, X)


_CACHE_FLOATS = 1 << 18  # 1 MiB of float32 per row block: about one core's L2


def _fista(
    W: torch.Tensor,
    lin: torch.Tensor,
    step: torch.Tensor,
    H: torch.Tensor,
    G: torch.Tensor | None,
    M: torch.Tensor | None,
    max_iter: int,
    tol: float,
    check_every: int,
) -> tuple[int, bool]:
    """FISTA with adaptive restart on one block of rows; writes the result into ``W``."""
    B = W.shape[0]
    Y = W.clone()
    t = torch.ones(B, 1, device=W.device)
    Ht = H.T
    it = 0
    for it in range(1, max_iter + 1):
        if G is not None:
            grad = torch.addmm(lin, Y, G, alpha=1.0, beta=-1.0)  # Y G - lin
        else:
            assert M is not None
            grad = torch.addmm(lin, (Y @ H).mul_(M), Ht, beta=-1.0)  # two GEMMs
        W_new = torch.addcmul(Y, step, grad, value=-1.0).clamp_(min=0.0)
        delta = W_new - W
        # Adaptive restart (O'Donoghue & Candes): drop momentum where it points uphill.
        restart = torch.linalg.vecdot(grad, delta).unsqueeze(1) > 0
        t_new = torch.where(restart, 1.0, (1.0 + torch.sqrt(1.0 + 4.0 * t * t)) / 2.0)
        beta = torch.where(restart, 0.0, (t - 1.0) / t_new)
        Y = torch.addcmul(W_new, beta, delta)
        W.copy_(W_new)
        t = t_new
        if it % check_every == 0 or it == max_iter:
            # Relative change of the whole block (Frobenius): a per-row maximum would keep
            # thousands of converged patches iterating for the sake of one slow row.
            rel = torch.linalg.vector_norm(delta) / torch.linalg.vector_norm(W).clamp_min(1e-8)
            if float(rel) < tol:
                return it, True
    return it, False


def fit_weights_reference(
    X: Array,
    H: Array,
    *,
    lr: float = 0.0,
    n_iter: int = 500,
    device: str | torch.device = "auto",
) -> Array:
    """The write-up's weight fitting, kept as the reference to beat.

    For each image separately: weights start at 0 and follow plain gradient descent
    (autograd, no projection, no momentum) on the mean squared error over *every* pixel,
    dead ones included, for ``n_iter`` steps of size ``lr``.

    ``lr = 0`` picks ``1 / L`` with ``L = 2 * lambda_max(H H^T) / n_pixels``, the largest step
    for which plain gradient descent on this loss is guaranteed to decrease it.
    """
    dev = resolve_device(device)
    Xt = _as_tensor(X, dev)
    Ht = _as_tensor(H, dev)
    n = Ht.shape[1]
    if lr <= 0:
        lr = n / (2.0 * max(spectral_norm_sq(Ht), _EPS))
    out = torch.zeros(Xt.shape[0], Ht.shape[0], device=dev)
    for i in range(Xt.shape[0]):
        x = Xt[i]
        w = torch.zeros(Ht.shape[0], device=dev, requires_grad=True)
        for _ in range(n_iter):
            y = w @ Ht
            mse = ((y - x) ** 2).mean()
            (g,) = torch.autograd.grad(mse, w)
            with torch.no_grad():
                w -= lr * g
        out[i] = w.detach()
    return _like(out, X)


def reconstruct(W: Array, H: Array) -> Array:
    """``W @ H``: (n, k) x (k, n_pixels) -> (n, n_pixels)."""
    if isinstance(W, torch.Tensor):
        return W @ _as_tensor(H, W.device)
    return np.asarray(W, dtype=np.float32) @ np.asarray(H, dtype=np.float32)


def restore(
    X: Array,
    H: Array,
    mask: Array | None = None,
    *,
    keep_observed: bool = True,
    masked: bool = True,
    l1: float = 0.0,
    max_iter: int = 300,
    tol: float = 1e-4,
    device: str | torch.device = "auto",
) -> Array:
    """Fit weights and reconstruct; by default observed pixels are kept bit-exact.

    Parameters
    ----------
    X : array (n, n_pixels)
        Damaged rows, float32 in [0, 1].
    mask : array (n, n_pixels), optional
        1 = observed, 0 = dead. ``None`` treats every pixel as observed.
    keep_observed : bool
        True: only dead pixels take the reconstruction. False: the write-up's full
        reconstruction ``W @ H`` everywhere.
    masked : bool
        True: only observed pixels count in the fit. False: the write-up's fit against every
        pixel, dead zeros included.
    """
    W = fit_weights(X, H, mask if masked else None, l1=l1, max_iter=max_iter, tol=tol, device=device)
    Xhat = reconstruct(W, H)
    if isinstance(Xhat, torch.Tensor):
        Xhat = Xhat.clamp(0.0, 1.0)
        if keep_observed and mask is not None:
            Xt = _as_tensor(X, Xhat.device)
            Xhat = torch.where(_as_tensor(mask, Xhat.device) > 0, Xt, Xhat)
        return Xhat
    Xhat = np.clip(Xhat, 0.0, 1.0)
    if keep_observed and mask is not None:
        Xhat = np.where(np.asarray(mask) > 0, np.asarray(X, dtype=np.float32), Xhat)
    return Xhat.astype(np.float32)
