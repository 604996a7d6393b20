"""Non-negative matrix factorisation: learning bases (and, re-exported from
:mod:`restore_core.nmf_fit`, fitting weights with bases frozen).

Shapes follow scikit-learn: ``X`` (n_images, n_pixels), ``W`` (n_images, k) weights,
``H`` (k, n_pixels) bases; everything non-negative, float32, on CPU or CUDA. Learning is HALS or
multiplicative updates over the whole batch, or online mini-batch dictionary learning (Mairal et
al. 2010) when ``X`` is larger than memory.
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
from restore_core.nmf_fit import (
    _EPS,
    Array,
    ConvergenceWarning,
    _as_tensor,
    fit_weights,
    fit_weights_reference,
    objective,
    reconstruct,
    restore,
    spectral_norm_sq,
)

__all__ = [
    "Array",
    "ConvergenceWarning",
    "NMFResult",
    "fit_weights",
    "fit_weights_reference",
    "learn_bases",
    "objective",
    "reconstruct",
    "restore",
    "spectral_norm_sq",
]


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

    return _learn_full_batch(_as_tensor(X, dev), k, l1, solver, max_iter, tol, gen, progress, t0)


def _learn_full_batch(
    Xt: torch.Tensor,
    k: int,
    l1: float,
    solver: str,
    max_iter: int,
    tol: float,
    gen: torch.Generator,
    progress: Callable[[int, float], None] | None,
    t0: float,
) -> NMFResult:
    """HALS or multiplicative updates over all of ``Xt`` at once, ``W`` kept (as ``W^T``)."""
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
    it = 0
    for it in range(1, max_iter + 1):
        WtW, WtX = _full_batch_sweep(Xt, Wt, H, HHt, l1, solver, inner)
        HHt = H @ H.T
        # ||X - W H||^2 = ||X||^2 - 2 <H, W^T X> + <W^T W, H H^T>: no n x m product needed.
        sse = xx - 2.0 * float((H.double() * WtX.double()).sum()) + float((WtW.double() * HHt.double()).sum())
        loss = (0.5 * max(sse, 0.0) + l1 * float(Wt.double().sum())) / max(n, 1)
        # Unit-norm bases, the scale moved into the weights (the loss does not change).
        norms = torch.linalg.vector_norm(H, dim=1).clamp_min(_EPS)  # (k,)
        H /= norms[:, None]
        Wt *= norms[:, None]
        HHt /= norms[:, None] * norms[None, :]
        if _epoch_done(history, loss, it, progress, tol):
            return _result(H, Wt.T, history, it, True, t0)
    _warn_unconverged(f"learn_bases stopped at max_iter={max_iter} before reaching tol={tol}")
    return _result(H, Wt.T, history, it, False, t0)


def _full_batch_sweep(
    Xt: torch.Tensor, Wt: torch.Tensor, H: torch.Tensor, HHt: torch.Tensor, l1: float, solver: str, inner: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch's update of ``Wt`` and ``H`` (in place); returns ``W^T W`` and ``W^T X``."""
    if solver == "mu":
        W = Wt.T
        W *= (Xt @ H.T) / (W @ HHt + l1 + _EPS)
        WtW = W.T @ W
        WtX = W.T @ Xt
        H *= WtX / (WtW @ H + _EPS)
        return WtW, WtX
    HXt = H @ Xt.T  # (k, n)
    for _ in range(inner):
        _hals_rows(Wt, HHt, HXt, l1, 0.0)
    WtW, WtX = Wt @ Wt.T, Wt @ Xt
    for _ in range(inner):
        _hals_rows(H, WtW, WtX, 0.0, _EPS)
    return WtW, WtX


def _epoch_done(
    history: list[float], loss: float, epoch: int, progress: Callable[[int, float], None] | None, tol: float
) -> bool:
    """Record an epoch's loss, report it, and say whether the relative decrease fell under ``tol``."""
    history.append(loss)
    if progress is not None:
        progress(epoch, loss)
    return len(history) > 1 and (history[-2] - loss) <= tol * abs(history[-2])


def _warn_unconverged(message: str) -> None:
    """A ConvergenceWarning pointing at the caller of :func:`learn_bases`."""
    warnings.warn(message, ConvergenceWarning, stacklevel=4)


def _result(
    H: torch.Tensor, W: torch.Tensor | None, history: list[float], n_iter: int, converged: bool, t0: float
) -> NMFResult:
    return NMFResult(
        H_=H.cpu().numpy(),
        W_=None if W is None else W.cpu().numpy(),
        loss_history_=history,
        n_iter_=n_iter,
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
            Xb = _as_tensor(X[np.sort(order[start : start + batch_size])], dev)  # (b, m)
            total += _online_step(Xb, H, A, Bs, l1) * Xb.shape[0]
            count += Xb.shape[0]
        if _epoch_done(history, total / max(count, 1), epoch, progress, tol):
            converged = True
            break
    if not converged:
        _warn_unconverged(f"learn_bases (online) stopped at max_iter={max_epochs} epochs before tol={tol}")
    _normalize_rows(None, H)
    return _result(H, None, history, epoch, converged, t0)


def _online_step(Xb: torch.Tensor, H: torch.Tensor, A: torch.Tensor, Bs: torch.Tensor, l1: float) -> float:
    """Fit one mini-batch's weights, fold them into the statistics, update ``H`` (in place);
    returns the batch's mean objective before the update."""
    Lh = spectral_norm_sq(H)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        Wb = fit_weights(Xb, H, l1=l1, max_iter=100, tol=1e-3, device=Xb.device, lipschitz=Lh)
    assert isinstance(Wb, torch.Tensor)
    loss = objective(Xb, Wb, H, l1=l1)
    A += Wb.T @ Wb
    Bs += Wb.T @ Xb
    _hals_update_h(H, A, Bs)
    # Keep bases in the unit ball so the L1 on W stays meaningful.
    norms = torch.linalg.vector_norm(H, dim=1).clamp_min(1.0)
    H /= norms[:, None]
    return loss
