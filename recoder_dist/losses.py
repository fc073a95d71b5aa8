"""Reconstruction losses over target-restricted logits, without a dense target matrix.

Each loss takes ``logits`` (B × T, any float dtype; low-precision logits are summed in
float32) and the batch's positives in COO form inside them (``rows``, ``cols``, ``values``:
:attr:`Batch.rows`, :attr:`Batch.target_cols`, :attr:`Batch.values`) and returns the sum over
the target columns, averaged over the B users.
Entries outside the positives are zeros of the target; the sums over them are taken as
"sum over all columns" minus "the positives' share", so no B × T target is built.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _full_precision(logits: torch.Tensor) -> torch.Tensor:
    """Low-precision (bf16/fp16) logits as float32: losses always sum in float32 or wider."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def multinomial_nll(logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                    values: torch.Tensor) -> torch.Tensor:
    """Multinomial negative log-likelihood (Liang et al. 2018, "Variational Autoencoders for
    Collaborative Filtering"), softmax over the target set.

    ``-Σ_i Σ_j x_ij log_softmax(y_i)_j = Σ_i n_i lse(y_i) - Σ_ij x_ij y_ij`` with
    ``n_i = Σ_j x_ij``; gradient ``n_i softmax(y_i) - x_i``. Computed in float32 (or float64)
    whatever the logits' dtype, in few passes over the B × T logits (see :class:`_MultinomialNLL`).

    Parameters
    ----------
    logits : torch.Tensor, shape (B, T)
    rows, cols : torch.Tensor of int64, shape (nnz,)
        Position of each positive inside ``logits``; unique pairs.
    values : torch.Tensor, shape (nnz,)
        Target values ``x`` of the positives.

    Returns
    -------
    torch.Tensor
        Scalar, mean over users.
    """
    return _MultinomialNLL.apply(logits, rows, cols, values)


class _MultinomialNLL(torch.autograd.Function):
    """The multinomial loss with a hand-written backward: the forward keeps ``exp(y - max)``,
    which the backward scales in place into the softmax gradient. Autograd's version makes
    ~14 passes over the B × T logits (the log-sum-exp is recomputed, the positives' gather
    back-propagates into a zero-filled B × T tensor, the two are added); this one makes ~7,
    which is most of a step at ML-20M size. The saved buffer is consumed, so the graph can be
    back-propagated once."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                values: torch.Tensor) -> torch.Tensor:
        y = _full_precision(logits)
        values = values.to(y.dtype)
        top = y.amax(dim=1, keepdim=True)
        shifted_exp = (y - top).exp_()
        sums = shifted_exp.sum(dim=1)
        n = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device).index_add_(0, rows, values)
        lse = top.squeeze(1) + sums.log()
        total = (n * lse).sum() - (values * y[rows, cols]).sum()
        ctx.save_for_backward(shifted_exp, sums, n, rows, cols, values)
        ctx.logits_dtype = logits.dtype
        ctx.consumed = False
        return total / y.shape[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total: torch.Tensor):
        if ctx.consumed:
            raise RuntimeError("multinomial_nll: the graph was already back-propagated once")
        ctx.consumed = True
        shifted_exp, sums, n, rows, cols, values = ctx.saved_tensors
        scale = grad_total / shifted_exp.shape[0]
        grad = shifted_exp.mul_((n * scale / sums).unsqueeze(1))  # n_i softmax(y_i), scaled
        grad.index_put_((rows, cols), -values * scale, accumulate=True)
        return grad.to(ctx.logits_dtype), None, None, None


def weighted_mse(logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                 values: torch.Tensor, confidence: float = 0.0) -> torch.Tensor:
    """Confidence-weighted squared error ``Σ w (x - y)²`` with ``w = 1 + c·[x > 0]``
    (Hu et al. 2008 confidence weighting, as Recoder's MSE loss).

    Computed as ``Σ_all y² + Σ_pos [w (y - x)² - y²]``.

    Parameters
    ----------
    logits : torch.Tensor, shape (B, T)
    rows, cols : torch.Tensor of int64, shape (nnz,)
    values : torch.Tensor, shape (nnz,)
    confidence : float
        Extra weight ``c`` of the positive entries.

    Returns
    -------
    torch.Tensor
        Scalar, mean over users.
    """
    logits = _full_precision(logits)
    values = values.to(logits.dtype)
    y = logits[rows, cols]
    w = 1.0 + confidence * (values > 0).to(logits.dtype)
    total = logits.square().sum() + (w * (y - values).square() - y.square()).sum()
    return total / logits.shape[0]


def logistic(logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
             values: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits against the targets ``[x > 0]``.

    ``BCE(y, t) = softplus(y) - t·y``, so the loss is ``Σ_all softplus(y) - Σ_pos [x>0]·y``.

    Parameters
    ----------
    logits : torch.Tensor, shape (B, T)
    rows, cols : torch.Tensor of int64, shape (nnz,)
    values : torch.Tensor, shape (nnz,)

    Returns
    -------
    torch.Tensor
        Scalar, mean over users.
    """
    logits = _full_precision(logits)
    positive = (values > 0).to(logits.dtype)
    total = F.softplus(logits).sum() - (positive * logits[rows, cols]).sum()
    return total / logits.shape[0]


LOSSES: dict[str, LossFn] = {
    "multinomial": multinomial_nll,
    "mse": weighted_mse,
    "logistic": logistic,
}


def get_loss(name: str, confidence: float = 0.0) -> LossFn:
    """The loss named ``name`` (a key of :data:`LOSSES`), with ``confidence`` bound for
    ``mse``."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    if name == "mse":
        return functools.partial(weighted_mse, confidence=confidence)
    return LOSSES[name]
