"""Optimizers whose item-table updates touch only the rows a step used.

A step of batch-union training reads a few thousand rows of each item table (the encoder rows of
the batch's items, the decoder rows and biases of the target set), so the model hands those tables
row-sparse gradients (``RecoderAutoencoder(sparse=True)``). Dense Adam would still read and write
every row of the table and of both moments on every step; the rules here cost ∝ the rows touched:

``lazy_adam``
    Adam with moments, a step count and bias correction per row (TensorFlow's ``LazyAdam``;
    torch's ``SparseAdam`` but with per-row counts and L2 weight decay). A row that a step does not
    touch is left exactly as it is: no momentum drift and no weight decay until it is used again.
``rowwise_adagrad``
    Adagrad with one accumulator per row (the mean of the row's squared gradient), as large-scale
    embedding trainers use (FBGEMM's ``EXACT_ROWWISE_ADAGRAD``): state of one float per row.

Every other parameter keeps Adam (fused on CPU and CUDA), so ``adam`` (dense Adam for everything,
the reference) and the row-sparse rules differ only on the item tables.

On CPU (float32 / float64 tables) each rule is one compiled pass over the touched rows
(:mod:`recoder_dist.row_kernels`), so it reads and writes each row of the weights and the state
once, as dense fused Adam does for every row; elsewhere (CUDA, bfloat16) the same rule runs as
torch operations on the gathered rows.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch.optim.adam import adam as adam_update

ITEM_OPTIMIZERS = ("adam", "lazy_adam", "rowwise_adagrad")
ROW_RULES = ("lazy_adam", "rowwise_adagrad")


def touched_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows a gradient touches and their values, ``(rows (r,), values (r, d))``.

    A sparse COO gradient (duplicates allowed: they are summed) gives its sorted unique rows; a
    dense one gives every row. ``d`` is the product of the table's trailing dimensions (1 for a
    bias vector).
    """
    if grad.is_sparse:
        rows, values = grad._indices()[0], grad._values()
        if not (grad.is_coalesced() or bool((rows[1:] > rows[:-1]).all())):  # autograd drops the flag
            grad = grad.coalesce()
            rows, values = grad.indices()[0], grad.values()
        return rows.contiguous(), values.reshape(rows.numel(), -1)  # contiguous: collectives need it
    return torch.arange(grad.shape[0], device=grad.device), grad.reshape(grad.shape[0], -1)


def row_blocks(table: torch.Tensor) -> torch.Tensor:
    """``table`` (n × d) viewed as n rows of the widest elements that tile a row (16 or 8 bytes).

    Row gathers and scatters then move a row as a few wide elements rather than ``d`` floats:
    ``index_copy_`` copies element by element, so this cuts a 12.8K × 200 fp32 scatter from ~1.0
    to ~0.4 ms (2 threads). The bytes are copied, never computed on, so every bit of a row is
    kept. A table that cannot be viewed so (a bias, ``d = 1``; a non-contiguous table) is
    returned as it is.
    """
    row_bytes = table.shape[1] * table.element_size()
    offset_bytes = table.storage_offset() * table.element_size()
    for wide in (torch.complex128, torch.int64):
        size = wide.itemsize
        if table.is_contiguous() and size > table.element_size() and row_bytes % size == 0 and offset_bytes % size == 0:
            return table.view(wide)
    return table


def gather_rows_of(table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``table[rows]`` (r × d), copied by :func:`row_blocks`."""
    return row_blocks(table).index_select(0, rows).view(table.dtype)


def scatter_rows_into(table: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> None:
    """``table[rows] = values`` in place (``rows`` unique), copied by :func:`row_blocks`."""
    blocks = row_blocks(table)
    blocks.index_copy_(0, rows, values if blocks is table else values.contiguous().view(blocks.dtype))


def runs_compiled(table: torch.Tensor) -> bool:
    """Whether the row rules update ``table`` with their compiled CPU kernel (else torch ops)."""
    return table.device.type == "cpu" and table.dtype in (torch.float32, torch.float64) and table.is_contiguous()


def lazy_adam_rows(table: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor, state: dict, *,
                   lr: float, beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
    """Adam on ``rows`` (unique) of ``table`` (n × d) in place, each row with its own step count.

    Same arithmetic as ``torch.optim.Adam``: L2 weight decay added to the gradient,
    ``m ← β1 m + (1 - β1) g``, ``v ← β2 v + (1 - β2) g²``,
    ``w ← w - lr / c1 · m / (√v / √c2 + ε)`` with ``c1 = 1 - β1^t``, ``c2 = 1 - β2^t`` and ``t``
    the row's count of updates; the bias corrections are folded into one scale and one ε per row,
    ``w ← w - m / ((√v + ε √c2) / (lr √c2 / c1))``, so that the update is four passes over the
    rows (square root, two per-row broadcasts, ``addcdiv_``); on CPU (:func:`runs_compiled`) it is
    one compiled pass. ``state`` holds ``moments`` (2 × n × d: ``m`` then ``v``, each half
    contiguous) and ``row_step`` (n,), created on first use.
    """
    if not state:
        state["moments"] = torch.zeros((2, *table.shape), dtype=table.dtype, device=table.device)
        state["row_step"] = torch.zeros(table.shape[0], dtype=torch.float32, device=table.device)
    all_m, all_v = state["moments"][0], state["moments"][1]
    if runs_compiled(table):
        from recoder_dist import row_kernels  # numba, only where it runs (the GPU hosts need not have it)
        row_kernels.lazy_adam(table.detach().numpy(), all_m.numpy(), all_v.numpy(), state["row_step"].numpy(),
                              rows.numpy(), grad.to(table.dtype).contiguous().numpy(), lr, beta1, beta2, eps,
                              weight_decay)
        return
    weights = gather_rows_of(table, rows)
    grad = grad.to(table.dtype)
    if weight_decay:
        grad = grad.add(weights, alpha=weight_decay)
    steps = state["row_step"].index_select(0, rows).add_(1)
    state["row_step"].index_copy_(0, rows, steps)
    exp_avg = gather_rows_of(all_m, rows).lerp_(grad, 1 - beta1)
    exp_avg_sq = gather_rows_of(all_v, rows).mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    scatter_rows_into(all_m, rows, exp_avg)
    scatter_rows_into(all_v, rows, exp_avg_sq)
    steps = steps.to(table.dtype).unsqueeze(1)
    root_correction2 = (1 - torch.pow(beta2, steps)).sqrt_()
    step_size = root_correction2.mul(lr).div_(1 - torch.pow(beta1, steps))
    denom = exp_avg_sq.sqrt_().add_(root_correction2.mul_(eps)).div_(step_size)  # v is stored: reuse its rows
    scatter_rows_into(table, rows, weights.addcdiv_(exp_avg, denom, value=-1.0))


def rowwise_adagrad_rows(table: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor, state: dict, *,
                         lr: float, eps: float, weight_decay: float) -> None:
    """Row-wise Adagrad on ``rows`` (unique) of ``table`` (n × d) in place: ``G_r += mean_j g_rj²``,
    ``w_r -= lr · g_r / (√G_r + ε)``; ``state["row_sum"]`` (n,) is created on first use. On CPU
    (:func:`runs_compiled`) it is one compiled pass."""
    if not state:
        state["row_sum"] = torch.zeros(table.shape[0], dtype=table.dtype, device=table.device)
    if runs_compiled(table):
        from recoder_dist import row_kernels  # numba, only where it runs (the GPU hosts need not have it)
        row_kernels.rowwise_adagrad(table.detach().numpy(), state["row_sum"].numpy(), rows.numpy(),
                                    grad.to(table.dtype).contiguous().numpy(), lr, eps, weight_decay)
        return
    weights = gather_rows_of(table, rows)
    grad = grad.to(table.dtype)
    if weight_decay:
        grad = grad.add(weights, alpha=weight_decay)
    sums = state["row_sum"].index_select(0, rows).add_(torch.linalg.vecdot(grad, grad), alpha=1 / grad.shape[1])
    state["row_sum"].index_copy_(0, rows, sums)
    scale = sums.sqrt_().add_(eps).reciprocal_().unsqueeze(1)
    scatter_rows_into(table, rows, weights.addcmul_(grad, scale, value=-lr))


class RowSparseOptimizer(torch.optim.Optimizer):
    """Adam for the dense parameter groups, a row-sparse rule for the item-table groups.

    Parameters
    ----------
    dense_groups, item_groups : iterable of dict
        Parameter groups (``{"params": [...], "weight_decay": ...}``, as
        ``RecoderAutoencoder.parameter_groups`` makes them); item-table gradients may be sparse COO
        (only the touched rows) or dense (every row touched).
    rule : str
        ``lazy_adam`` or ``rowwise_adagrad``, for the item groups.
    lr : float
        Learning rate of the dense groups (and of the item groups unless ``item_lr`` is given).
    item_lr : float, optional
        Learning rate of the item groups.
    betas, eps : Adam's (``eps`` is also the Adagrad rule's).
    fused : bool
        Use torch's fused Adam kernel for the dense groups (CPU and CUDA).
    """

    def __init__(self, dense_groups: Iterable[dict], item_groups: Iterable[dict], rule: str, lr: float,
                 item_lr: Optional[float] = None, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 fused: bool = True) -> None:
        if rule not in ROW_RULES:
            raise ValueError(f"unknown item-table rule {rule!r}; choose one of {', '.join(ROW_RULES)}")
        groups = [{**g, "rows": False} for g in dense_groups]
        groups += [{**g, "rows": True, "lr": lr if item_lr is None else item_lr} for g in item_groups]
        super().__init__(groups, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": 0.0, "rows": False,
                                  "rule": rule, "fused": fused})

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["rows"]:
                self._row_step(group)
            else:
                self._dense_step(group)
        return loss

    def _row_step(self, group: dict) -> None:
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            rows, grad = touched_rows(p.grad)
            table = p.view(p.shape[0], -1)
            if group["rule"] == "lazy_adam":
                lazy_adam_rows(table, rows, grad, self.state[p], lr=group["lr"], beta1=beta1, beta2=beta2,
                               eps=group["eps"], weight_decay=group["weight_decay"])
            else:
                rowwise_adagrad_rows(table, rows, grad, self.state[p], lr=group["lr"], eps=group["eps"],
                                     weight_decay=group["weight_decay"])

    def _dense_step(self, group: dict) -> None:
        """``torch.optim.Adam``'s update (same state layout, same kernel)."""
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        fused = group["fused"] and all(p.device.type in {"cpu", "cuda"} for p in group["params"])
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("a dense parameter got a sparse gradient; list it among the item tables")
            state = self.state[p]
            if not state:
                state["step"] = (torch.zeros((), dtype=torch.float32, device=p.device) if fused
                                 else torch.tensor(0.0, dtype=torch.float32))
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        beta1, beta2 = group["betas"]
        adam_update(params, grads, exp_avgs, exp_avg_sqs, [], steps, fused=fused or None, amsgrad=False,
                    beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
                    maximize=False)


def build_optimizer(model: torch.nn.Module, item_optimizer: str, lr: float, weight_decay: float,
                    item_lr: Optional[float] = None) -> torch.optim.Optimizer:
    """The optimizer of a training run.

    ``adam``: dense (fused) Adam over every parameter, today's reference. ``lazy_adam`` /
    ``rowwise_adagrad``: :class:`RowSparseOptimizer`, the row rule on ``model.item_parameter_names()``
    (which must then produce row-sparse gradients, ``RecoderAutoencoder(sparse=True)``).
    Weights decay, biases do not (``model.parameter_groups``).
    """
    fused = all(p.device.type in {"cpu", "cuda"} for p in model.parameters())
    if item_optimizer == "adam":
        return torch.optim.Adam(model.parameter_groups(weight_decay), lr=lr, **({"fused": True} if fused else {}))
    if item_optimizer not in ROW_RULES:
        raise ValueError(f"unknown item optimizer {item_optimizer!r}; choose one of {', '.join(ITEM_OPTIMIZERS)}")
    items = model.item_parameter_names()
    dense = [name for name, _ in model.named_parameters() if name not in items]
    return RowSparseOptimizer(model.parameter_groups(weight_decay, names=dense),
                              model.parameter_groups(weight_decay, names=items), item_optimizer, lr,
                              item_lr=item_lr, fused=fused)
