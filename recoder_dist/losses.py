"""Reconstruction losses over target-restricted logits, without a dense target matrix.

Each logits loss (:data:`LOSSES`) takes ``logits`` (B × T, any float dtype; low-precision logits are summed in
float32) and the batch's positives in COO form inside them (``rows``, ``cols``, ``values``:
:attr:`Batch.rows`, :attr:`Batch.target_cols`, :attr:`Batch.values`) and returns the sum over
the target columns, averaged over the B users.
Entries outside the positives are zeros of the target; the sums over them are taken as
"sum over all columns" minus "the positives' share", so no B × T target is built.

The weighted MSE also has a form that never builds the logits (:func:`gramian_mse`): it takes
the output layer's input ``z`` and the target rows ``(D_T, b_T)`` instead, and costs
``O((B + T)·h² + nnz·h)`` instead of ``O(B·T·h)``; :func:`get_hidden_loss` picks it.
"""
from __future__ import annotations

import functools
import warnings
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from recoder_dist.csr import ColumnOrder, column_order, offsets_of

# the CSR pattern of a batch's positives (gramian_mse) is a plain input of sampled_addmm
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state", category=UserWarning)

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# (z, weight, bias, rows, cols, values, *, offsets=None, by_col=None) -> loss: a loss of the logits
# z @ weight.T + bias (the keywords as gramian_mse's: what the caller already knows of the positives)
HiddenLossFn = Callable[..., torch.Tensor]


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


def gramian_mse(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, rows: torch.Tensor,
                cols: torch.Tensor, values: torch.Tensor, confidence: float = 0.0,
                offsets: Optional[torch.Tensor] = None, by_col: Optional[ColumnOrder] = None) -> torch.Tensor:
    """:func:`weighted_mse` of the logits ``y = z weightᵀ + bias``, without building them.

    The sum of squares over all B × T logits is a function of two h × h Gramians (the identity
    behind implicit ALS, Hu, Koren & Volinsky 2008, "Collaborative Filtering for Implicit
    Feedback Datasets"; Krichene et al. 2019, "Efficient Training on Very Large Corpora via
    Gramian Estimation", ICLR)::

        Σ_ij y_ij² = ⟨zᵀz, weightᵀweight⟩_F + 2 (Σ_i z_i)·(weightᵀ bias) + B ‖bias‖²

    and the positives' correction ``Σ_pos [w (y - x)² - y²]`` needs the logits at the
    positives only, ``y = z_row · weight_col + bias_col``. Cost ``O((B + T)·h² + nnz·h)``
    forward and backward (against ``O(B·T·h)`` for the logits), memory ``O((B + T)·h + nnz)``
    beyond the inputs; exact (equal to :func:`weighted_mse` up to rounding). The backward is
    hand-written (see :class:`_GramianMSE`). Low-precision inputs are computed in float32.

    Parameters
    ----------
    z : torch.Tensor, shape (B, h)
        What the output layer reads (:meth:`RecoderAutoencoder.hidden`).
    weight : torch.Tensor, shape (T, h)
        Output rows of the target items (:meth:`RecoderAutoencoder.target_rows`).
    bias : torch.Tensor, shape (T,)
        Output biases of the target items.
    rows, cols : torch.Tensor of int64, shape (nnz,)
        Position of each positive inside the B × T logits; unique pairs, ``rows``
        non-decreasing (CSR order, as :attr:`Batch.rows`; other orders are sorted first).
    values : torch.Tensor, shape (nnz,)
        Target values ``x`` of the positives.
    confidence : float
        Extra weight ``c`` of the positive entries: ``w = 1 + c·[x > 0]``.
    offsets : torch.Tensor of int64, shape (B + 1,), optional
        The CSR offsets of ``rows`` (:attr:`Batch.offsets`), when the caller has them; ``rows``
        is then taken to be in CSR order, unchecked.
    by_col : ColumnOrder, optional
        The positives in column order (:func:`~recoder_dist.csr.column_order` of ``cols``, or of
        any columns that ``cols`` increase with, e.g. the batch's items), when the caller has it;
        else the backward sorts them. Only with ``offsets``.

    Returns
    -------
    torch.Tensor
        Scalar, mean over users (float32, or float64 for float64 inputs).
    """
    dtype = torch.float64 if torch.float64 in (z.dtype, weight.dtype) else torch.float32
    z, weight, bias = z.to(dtype), weight.to(dtype), bias.to(dtype)
    if offsets is None:
        by_col = None  # it would name the entries in an order about to change
        if rows.numel() > 1 and bool((rows[1:] < rows[:-1]).any()):
            order = torch.argsort(rows, stable=True)
            rows, cols, values = rows[order], cols[order], values[order]
        offsets = offsets_of(torch.bincount(rows, minlength=z.shape[0]))
    return _GramianMSE.apply(z, weight, bias, rows, cols, values.to(dtype), float(confidence), offsets, by_col)


def gramian(x: torch.Tensor) -> torch.Tensor:
    """``xᵀx`` (h × h for ``x`` of shape (n, h)) as two products, the top half of the rows and the
    bottom-right block, the bottom-left block mirrored: 3/4 of the multiply-adds of ``x.t() @ x``
    (torch has no symmetric rank-k product); ~15 % faster on CPU for n = 3.6K–27K, h = 200."""
    h = x.shape[1]
    half = h // 2
    out = torch.empty(h, h, dtype=x.dtype, device=x.device)
    torch.mm(x[:, :half].t(), x, out=out[:half])
    torch.mm(x[:, half:].t(), x[:, half:], out=out[half:, half:])
    out[half:, :half] = out[:half, half:].t()
    return out


class _GramianMSE(torch.autograd.Function):
    """:func:`gramian_mse` with a hand-written backward. The positives' terms run on sparse
    kernels instead of gathering ``nnz × h`` copies of ``z`` and ``weight``: the logits at the
    positives are a sampled matmul (SDDMM, ``torch.sparse.sampled_addmm`` over the batch's CSR
    pattern, the target biases as its input), their gradient into ``z`` an embedding-bag of the
    target rows per user, and into ``weight`` an embedding-bag of ``z`` per target column; the
    Gramian terms are added onto those bags in place (``addmm_``'s ``beta``, ``addr_``), so each
    ``T × h`` gradient is written about twice. Loss + backward on 2 shared CPU cores, B = 500,
    h = 200, ~150 positives per user: 12 / 22 / 49 ms at T = 3.7K / 11.6K / 26.7K, against
    218 / 223 / 265 ms for autograd over gathered copies and 18 / 54 / 123 ms for
    :func:`weighted_mse` over the logits (2026-12-01; ``benchmarks/gramian.py`` measures whole
    steps)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, rows: torch.Tensor,
                cols: torch.Tensor, values: torch.Tensor, confidence: float, offsets: torch.Tensor,
                by_col: Optional[ColumnOrder]) -> torch.Tensor:
        n_users, n_targets = z.shape[0], weight.shape[0]
        gram_z, gram_w = gramian(z), gramian(weight)
        z_sum, w_bias = z.sum(dim=0), weight.t() @ bias
        pattern = torch.sparse_csr_tensor(offsets, cols, bias.index_select(0, cols), (n_users, n_targets),
                                          check_invariants=False)
        y = torch.sparse.sampled_addmm(pattern, z, weight.t()).values()  # z_row · weight_col + bias_col
        r = y - values
        wr = torch.where(values > 0, r * (1.0 + confidence), r) if confidence else r  # w (y - x)
        total = (torch.dot(gram_z.view(-1), gram_w.view(-1)) + 2 * z_sum.dot(w_bias) + n_users * bias.dot(bias)
                 + wr.dot(r) - y.dot(y))  # Σ_all y² + Σ_pos [w (y - x)² - y²]
        half_grad_y = wr - y  # ½ d/dy of w (y - x)² - y²
        ctx.save_for_backward(z, weight, bias, rows, cols, offsets, gram_z, gram_w, z_sum, w_bias, half_grad_y)
        ctx.by_col = by_col
        return total / n_users

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total: torch.Tensor):
        z, weight, bias, rows, cols, offsets, gram_z, gram_w, z_sum, w_bias, half_grad_y = ctx.saved_tensors
        n_users, n_targets = z.shape[0], weight.shape[0]
        scale = float(grad_total) * 2.0 / n_users  # d/dy of Σ y² is 2y; the mean over users
        grad_z = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:  # 2 (Σ_pos ½grad_y weight_col + z Gw + 1 uᵀ), per user
            grad_z = F.embedding_bag(cols, weight, offsets, mode="sum", per_sample_weights=half_grad_y,
                                     include_last_offset=True)
            grad_z.addmm_(z, gram_w, beta=scale, alpha=scale).add_(w_bias, alpha=scale)
        if ctx.needs_input_grad[1]:  # 2 (Σ_pos ½grad_y z_row + weight Gz + bias sᵀ), per column
            by_col = column_order(cols, rows, n_targets) if ctx.by_col is None else ctx.by_col
            col_offsets = offsets_of(torch.bincount(cols, minlength=n_targets))
            grad_weight = F.embedding_bag(by_col.rows, z, col_offsets, mode="sum",
                                          per_sample_weights=half_grad_y.index_select(0, by_col.order),
                                          include_last_offset=True)
            grad_weight.addmm_(weight, gram_z, beta=scale, alpha=scale).addr_(bias, z_sum, alpha=scale)
        if ctx.needs_input_grad[2]:  # 2 (Σ_pos ½grad_y + weight s + B bias), per column
            grad_bias = torch.addmv(bias, weight, z_sum, beta=n_users).index_add_(0, cols, half_grad_y).mul_(scale)
        return grad_z, grad_weight, grad_bias, None, None, None, None, None, None


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
MSE_FORMS = ("gramian", "dense")  # train.mse_form: get_hidden_loss's Gramian form, or the logits'


def get_loss(name: str, confidence: float = 0.0) -> LossFn:
    """The loss named ``name`` (a key of :data:`LOSSES`), with ``confidence`` bound for
    ``mse``."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    if name == "mse":
        return functools.partial(weighted_mse, confidence=confidence)
    return LOSSES[name]


def get_hidden_loss(name: str, confidence: float = 0.0) -> Optional[HiddenLossFn]:
    """The form of the loss named ``name`` (a key of :data:`LOSSES`) that reads the output
    layer's input and target rows instead of the logits (``mse``: :func:`gramian_mse`, with
    ``confidence`` bound); None for the losses that need every logit."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    if name == "mse":
        return functools.partial(gramian_mse, confidence=confidence)
    return None


def union_log_inclusion(item_share: torch.Tensor, sampling_users: int) -> torch.Tensor:
    """``log q_j``: the log-probability that item ``j`` is in a batch union of ``sampling_users``
    users, ``q_j = 1 - (1 - p_j)^B`` for an item held by the share ``p_j`` of the train users
    (users drawn independently; the logQ correction of sampled-softmax trainers, Bengio & Senécal
    2008, Yi et al. 2019, "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item
    Recommendations"). Subtracting it from the union's logits in training
    (``train.logq_correction``) keeps the rarely sampled items from being under-trained as
    negatives; scoring the full catalogue uses the plain logits.

    Computed as ``log(-expm1(B · log1p(-p)))``, accurate for tiny ``p`` and for ``q`` near 1.

    Parameters
    ----------
    item_share : torch.Tensor, shape (num_items,)
        ``p_j`` in ``(0, 1]``: train users holding the item / train users.
    sampling_users : int
        ``B``, the users whose items form one union (``train.num_sampling_users``; × the ranks
        under ``grad_exchange=sync_union``).

    Returns
    -------
    torch.Tensor, shape (num_items,)
        ``log q_j`` (≤ 0), in ``item_share``'s floating dtype.
    """
    if sampling_users < 1:
        raise ValueError(f"sampling_users must be >= 1, got {sampling_users}")
    p = item_share if item_share.is_floating_point() else item_share.double()
    if bool(((p <= 0) | (p > 1)).any()):
        raise ValueError("item_share must lie in (0, 1] for every item (an item no train user holds is "
                         "never in a union)")
    return torch.log(-torch.expm1(sampling_users * torch.log1p(-p)))


def gaussian_kl(mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean, diag(exp(log_variance))) ‖ N(0, I))`` summed over the latent dimensions and
    averaged over the users (rows): the regulariser of Mult-VAE (Liang et al. 2018),
    ``½ Σ_k (exp(log σ²_k) + μ_k² - 1 - log σ²_k)``, on the same per-user scale as the
    reconstruction losses here. Computed in float32 (or float64).

    Parameters
    ----------
    mean, log_variance : torch.Tensor, shape (B, k)

    Returns
    -------
    torch.Tensor
        Scalar, mean over users.
    """
    mean, log_variance = _full_precision(mean), _full_precision(log_variance)
    per_user = 0.5 * (log_variance.exp() + mean.square() - 1.0 - log_variance).sum(dim=1)
    return per_user.mean()
