"""Non-negative matrix factorisation: learning bases and fitting weights with bases frozen.

Shapes follow scikit-learn: ``X`` (n_images, n_pixels), ``W`` (n_images, k) weights,
``H`` (k, n_pixels) bases; everything non-negative, float32, on CPU or CUDA.

Objective (per image i, with an optional mask ``M`` of observed pixels, 1 = observed)::

    0.5 * || M_i * (X_i - W_i H) ||^2  +  l1 * sum(W_i),   W >= 0

``fit_weights`` solves it for all images of a batch at once with FISTA (accelerated projected
gradient, two GEMMs an iteration, adaptive restart, relative-tolerance stop).
``fit_weights_reference`` is the write-up's method kept as the reference: weights start at 0 and
follow plain gradient descent on the mean squared error over every pixel, one image at a time.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable

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


# ----------------------------------------------------------------------------- learning


@dataclasses.dataclass
class NMFResult:
    """Learned bases ``H_`` (k, n_pixels), rows of unit L2 norm, and the fit's history."""

    H_: np.ndarray
    W_: np.ndarray | None
    loss_history_: list[float]
    n_iter_: int
    converged_: bool
    seconds_: float


def _init(X: torch.Tensor, k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    n, m = X.shape
    scale = math.sqrt(max(float(X.mean()), _EPS) / k)
    W = torch.rand(n, k, generator=gen, device="cpu").to(X.device) * scale
    H = torch.rand(k, m, generator=gen, device="cpu").to(X.device) * scale
    return W, H


def _normalize_rows(W: torch.Tensor | None, H: torch.Tensor) -> None:
    """Scale each basis to unit L2 norm, moving the scale into its weights (in place)."""
    norms = torch.linalg.vector_norm(H, dim=1).clamp_min(_EPS)  # (k,)
    H /= norms[:, None]
    if W is not None:
        W *= norms[None, :]


def _hals_rows(A: torch.Tensor, G: torch.Tensor, C: torch.Tensor, shift: float, floor: float) -> None:
    """One HALS sweep over the rows of ``A`` (k, p), in place.

    Minimises ``0.5 * tr(A^T G A) - tr(A^T C) + shift * sum(A)`` one row at a time, each row
    clamped to ``>= floor``: ``A`` is H with ``G = W^T W``, ``C = W^T X``, or W^T with
    ``G = H H^T``, ``C = H X^T``. Rows are contiguous, so every update is a GEMV plus two
    vector ops.
    """
    diag = torch.diagonal(G).tolist()
    for j, d in enumerate(diag):
        if d <= _EPS:
            continue
        r = torch.addmv(C[j], A.T, G[j], alpha=-1.0)  # C_j - G_j A
        if shift:
            r -= shift
        A[j].add_(r, alpha=1.0 / d).clamp_(min=floor)


def _hals_update_h(H: torch.Tensor, WtW: torch.Tensor, WtX: torch.Tensor) -> None:
    """One HALS sweep over the rows of H (in place), given W^T W (k, k) and W^T X (k, m)."""
    _hals_rows(H, WtW, WtX, 0.0, _EPS)


def learn_bases(
    X: Array,
    k: int,
    *,
    l1: float = 0.0,
    solver: str = "hals",
    max_iter: int = 200,
    tol: float = 1e-4,
    batch_size: int = 0,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: Callable[[int, float], None] | None = None,
) -> NMFResult:
    """Learn ``k`` non-negative bases from the rows of ``X`` (X ~= W H, W, H >= 0).

    Parameters
    ----------
    X : array (n_samples, n_pixels)
        float32 images or patches in [0, 1], flattened. With ``batch_size > 0`` it may be a
        ``np.memmap`` larger than memory: rows are read one mini-batch at a time.
    k : int
        Number of bases.
    l1 : float
        L1 penalty on the weights (the write-up's sparsity).
    solver : {"hals", "mu"}
        HALS (block coordinate descent) or Lee-Seung multiplicative updates. Full batch only;
        the online mini-batch path uses FISTA for W and HALS for H.
    max_iter, tol : int, float
        Epochs (full passes over X) at most; stop when the relative decrease of the objective
        over an epoch is under ``tol``. A :class:`ConvergenceWarning` is raised otherwise.
    batch_size : int
        0 = full batch; > 0 = online mini-batch learning (Mairal et al. 2010).
    seed : int
        Seeds the initialisation and the mini-batch order.
    progress : callable(epoch, loss), optional
        Called after every epoch.

    Returns
    -------
    NMFResult
        ``H_`` (k, n_pixels) float32 with unit-norm rows, ``W_`` for full batch, the loss
        history (objective averaged over samples), iterations, convergence flag, seconds.
    """
    if solver not in ("hals", "mu"):
        raise ValueError(f"solver must be 'hals' or 'mu', got {solver!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    dev = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    if batch_size and batch_size < X.shape[0]:
        return _learn_online(X, k, l1, max_iter, tol, batch_size, gen, dev, progress, t0)

    Xt = _as_tensor(X, dev)
    if bool((Xt < 0).any()):
        raise ValueError("X must be non-negative")
    W, H = _init(Xt, k, gen)
    Wt = W.T.contiguous()  # (k, n): HALS updates rows, contiguous in this layout
    n = Xt.shape[0]
    xx = float(Xt.double().square().sum())
    # Inner sweeps per product (Gillis & Glineur 2012): a sweep costs k^2 (n or m) against
    # the k n m of the GEMMs that feed it, so when k is small a few more sweeps come cheap.
    inner = max(1, min(4, (min(n, Xt.shape[1]) // max(k, 1)) // 4))
    HHt = H @ H.T
    history: list[float] = []
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        if solver == "mu":
            W = Wt.T
            W *= (Xt @ H.T) / (W @ HHt + l1 + _EPS)
            WtW = W.T @ W
            WtX = W.T @ Xt
            H *= WtX / (WtW @ H + _EPS)
        else:
            HXt = H @ Xt.T  # (k, n)
            for _ in range(inner):
                _hals_rows(Wt, HHt, HXt, l1, 0.0)
            WtW, WtX = Wt @ Wt.T, Wt @ Xt
            for _ in range(inner):
                _hals_rows(H, WtW, WtX, 0.0, _EPS)
        HHt = H @ H.T
        # ||X - W H||^2 = ||X||^2 - 2 <H, W^T X> + <W^T W, H H^T>: no n x m product needed.
        sse = xx - 2.0 * float((H.double() * WtX.double()).sum()) + float((WtW.double() * HHt.double()).sum())
        loss = (0.5 * max(sse, 0.0) + l1 * float(Wt.double().sum())) / max(n, 1)
        # Unit-norm bases, the scale moved into the weights (the loss does not change).
        norms = torch.linalg.vector_norm(H, dim=1).clamp_min(_EPS)  # (k,)
        H /= norms[:, None]
        Wt *= norms[:, None]
        HHt /= norms[:, None] * norms[None, :]
        history.append(loss)
        if progress is not None:
            progress(it, loss)
        if len(history) > 1 and (history[-2] - loss) <= tol * abs(history[-2]):
            converged = True
            break
    W = Wt.T
    if not converged:
        warnings.warn(
            f"learn_bases stopped at max_iter={max_iter} before reaching tol={tol}",
            ConvergenceWarning,
            stacklevel=2,
        )
    return NMFResult(
        H_=H.cpu().numpy(),
        W_=W.cpu().numpy(),
        loss_history_=history,
        n_iter_=it,
        converged_=converged,
        seconds_=time.perf_counter() - t0,
    )


def _learn_online(
    X: Array,
    k: int,
    l1: float,
    max_epochs: int,
    tol: float,
    batch_size: int,
    gen: torch.Generator,
    dev: torch.device,
    progress: Callable[[int, float], None] | None,
    t0: float,
) -> NMFResult:
    """Online dictionary learning: sufficient statistics A = sum W^T W, B = sum W^T X."""
    n = X.shape[0]
    first = _as_tensor(X[: min(n, 4 * batch_size)], dev)
    _, H = _init(first, k, gen)
    _normalize_rows(None, H)
    A = torch.zeros(k, k, device=dev)
    Bs = torch.zeros(k, first.shape[1], device=dev)
    history: list[float] = []
    converged = False
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        order = torch.randperm(n, generator=gen).numpy()
        total, count = 0.0, 0
        for start in range(0, n, batch_size):
            idx = np.sort(order[start : start + batch_size])
            Xb = _as_tensor(X[idx], dev)  # (b, m)
            Lh = spectral_norm_sq(H)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                Wb = fit_weights(Xb, H, l1=l1, max_iter=100, tol=1e-3, device=dev, lipschitz=Lh)
            assert isinstance(Wb, torch.Tensor)
            total += objective(Xb, Wb, H, l1=l1) * Xb.shape[0]
            count += Xb.shape[0]
            A += Wb.T @ Wb
            Bs += Wb.T @ Xb
            _hals_update_h(H, A, Bs)
            # Keep bases in the unit ball so the L1 on W stays meaningful.
            norms = torch.linalg.vector_norm(H, dim=1).clamp_min(1.0)
            H /= norms[:, None]
        loss = total / max(count, 1)
        history.append(loss)
        if progress is not None:
            progress(epoch, loss)
        if len(history) > 1 and (history[-2] - loss) <= tol * abs(history[-2]):
            converged = True
            break
    if not converged:
        warnings.warn(
            f"learn_bases (online) stopped at max_iter={max_epochs} epochs before tol={tol}",
            ConvergenceWarning,
            stacklevel=2,
        )
    _normalize_rows(None, H)
    return NMFResult(
        H_=H.cpu().numpy(),
        W_=None,
        loss_history_=history,
        n_iter_=epoch,
        converged_=converged,
        seconds_=time.perf_counter() - t0,
    )


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
