"""Reconstruction losses over target-restricted logits, without a dense target matrix.

Each loss takes ``logits`` (B × T) and the batch's positives in COO form inside them
(``rows``, ``cols``, ``values``: :attr:`Batch.rows`, :attr:`Batch.target_cols`,
:attr:`Batch.values`) and returns the sum over the target columns, averaged over the B users.
Entries outside the positives are zeros of the target; the sums over them are taken as
"sum over all columns" minus "the positives' share", so no B × T target is built.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def multinomial_nll(logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                    values: torch.Tensor) -> torch.Tensor:
    """Multinomial negative log-likelihood (Liang et al. 2018, "Variational Autoencoders for
    Collaborative Filtering"), softmax over the target set.

    ``-Σ_i Σ_j x_ij log_softmax(y_i)_j = Σ_i n_i lse(y_i) - Σ_ij x_ij y_ij`` with
    ``n_i = Σ_j x_ij``.

    Parameters
    ----------
    logits : torch.Tensor, shape (B, T)
    rows, cols : torch.Tensor of int64, shape (nnz,)
        Position of each positive inside ``logits``.
    values : torch.Tensor, shape (nnz,)
        Target values ``x`` of the positives.

    Returns
    -------
    torch.Tensor
        Scalar, mean over users.
    """
    values = values.to(logits.dtype)
    n = torch.zeros(logits.shape[0], dtype=logits.dtype, device=logits.device)
    n = n.index_add(0, rows, values)
    total = (n * torch.logsumexp(logits, dim=1)).sum() - (values * logits[rows, cols]).sum()
    return total / logits.shape[0]


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
