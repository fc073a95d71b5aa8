"""The row rules of :mod:`recoder_dist.optim` as compiled CPU kernels: one pass over the touched rows.

Each kernel reads a touched row of the weights, its gradient and its optimizer state once and
writes the weights and the state once, parallel over rows (``rows`` are unique, so no two threads
share a row). That is the memory traffic of dense fused Adam for a row, paid only for the rows a
step touched, where the same rule as torch operations (gather, ~8 elementwise passes, scatter)
costs ~6× that per row. Compiled by numba on first use and cached next to this file (or in
numba's user cache where that is read-only): ~1 s once per machine, ~0.4 s to load per process.
The arrays are numpy views of the torch tensors, updated in place; float32 tables compute in
float32, float64 tables in float64, as torch's kernels do.
"""
from __future__ import annotations

import numba
import numpy as np
import torch


def _use_torch_threads() -> None:
    """As many threads as torch uses (one per rank under Horovod, both cores in one process)."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


@numba.njit(parallel=True, cache=True)
def _lazy_adam(weights, all_m, all_v, row_step, rows, grad, lr, beta1, beta2, eps, weight_decay):
    dtype = weights.dtype.type
    decay, keep_m, keep_v = dtype(weight_decay), dtype(beta1), dtype(beta2)
    gain_m, gain_v = dtype(1 - beta1), dtype(1 - beta2)
    log_beta1, log_beta2, rate, epsilon = dtype(np.log(beta1)), dtype(np.log(beta2)), dtype(lr), dtype(eps)
    for i in numba.prange(rows.shape[0]):
        r = rows[i]
        t = row_step[r] + 1
        row_step[r] = t
        t = dtype(t)  # 1 - β^t as -expm1(t log β): one exp per correction, exact for small t too
        root_correction2 = np.sqrt(-np.expm1(t * log_beta2))
        step_size = rate * root_correction2 / -np.expm1(t * log_beta1)
        row_eps = epsilon * root_correction2
        for j in range(weights.shape[1]):
            g = grad[i, j] + decay * weights[r, j]
            m = keep_m * all_m[r, j] + gain_m * g
            v = keep_v * all_v[r, j] + gain_v * g * g
            all_m[r, j] = m
            all_v[r, j] = v
            weights[r, j] -= step_size * m / (np.sqrt(v) + row_eps)


@numba.njit(parallel=True, cache=True)
def _rowwise_adagrad(weights, row_sum, rows, grad, lr, eps, weight_decay):
    dtype = weights.dtype.type
    decay, rate, epsilon, width = dtype(weight_decay), dtype(lr), dtype(eps), weights.shape[1]
    for i in numba.prange(rows.shape[0]):
        r = rows[i]
        squares = dtype(0)
        for j in range(width):
            g = grad[i, j] + decay * weights[r, j]
            squares += g * g
        total = row_sum[r] + squares / width
        row_sum[r] = total
        scale = rate / (np.sqrt(total) + epsilon)
        for j in range(width):
            weights[r, j] -= scale * (grad[i, j] + decay * weights[r, j])


def lazy_adam(weights: np.ndarray, all_m: np.ndarray, all_v: np.ndarray, row_step: np.ndarray, rows: np.ndarray,
              grad: np.ndarray, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
    """:func:`recoder_dist.optim.lazy_adam_rows`'s update of ``weights[rows]`` (n × d) in place, with
    the moments ``all_m``/``all_v`` (n × d), the per-row counts ``row_step`` (n,) and ``grad`` (r × d)
    the gradient rows; ``w ← w - lr √c2 / c1 · m / (√v + ε √c2)`` per row."""
    _use_torch_threads()
    _lazy_adam(weights, all_m, all_v, row_step, rows, grad, lr, beta1, beta2, eps, weight_decay)


def rowwise_adagrad(weights: np.ndarray, row_sum: np.ndarray, rows: np.ndarray, grad: np.ndarray, lr: float,
                    eps: float, weight_decay: float) -> None:
    """:func:`recoder_dist.optim.rowwise_adagrad_rows`'s update of ``weights[rows]`` in place, with the
    per-row accumulators ``row_sum`` (n,)."""
    _use_torch_threads()
    _rowwise_adagrad(weights, row_sum, rows, grad, lr, eps, weight_decay)
