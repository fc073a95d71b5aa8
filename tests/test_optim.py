"""Row-sparse item tables: the gradients the model hands over, and the optimizers over them."""
import copy
import math

import numpy as np
import pytest
import torch

from recoder_dist import optim
from recoder_dist.losses import get_hidden_loss, multinomial_nll
from recoder_dist.models import RecoderAutoencoder, gather_rows
from recoder_dist.optim import (RowSparseOptimizer, build_optimizer, gather_rows_of, row_blocks,
                                scatter_rows_into, touched_rows)

N, D = 12, 3
LR, BETAS, EPS, WD = 0.01, (0.9, 0.999), 1e-8, 0.05
# rows touched by each step (uncoalesced: row 5 twice in step 3): rows 9-11 never, 0/1 often, 8 only first
STEPS = [[0, 1, 2, 8], [0, 1, 3], [0, 4, 5], [5, 1, 5, 6], [0, 1, 2, 7]]


def sparse_grad(rows: list[int], step: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(step)
    values = torch.randn(len(rows), D, generator=gen, dtype=torch.float64)
    return torch.sparse_coo_tensor(torch.tensor([rows]), values, (N, D), check_invariants=True)


def coalesced(rows: list[int], step: int) -> tuple[list[int], np.ndarray]:
    grad = sparse_grad(rows, step).coalesce()
    return grad.indices()[0].tolist(), grad.values().numpy()


def reference_lazy_adam(table: np.ndarray) -> np.ndarray:
    """Adam written out row by row (float64), each row with its own step count."""
    w, m, v, t = table.copy(), np.zeros_like(table), np.zeros_like(table), np.zeros(N)
    for step, rows in enumerate(STEPS):
        for row, g in zip(*coalesced(rows, step)):
            g = g + WD * w[row]
            t[row] += 1
            m[row] = BETAS[0] * m[row] + (1 - BETAS[0]) * g
            v[row] = BETAS[1] * v[row] + (1 - BETAS[1]) * g * g
            m_hat = m[row] / (1 - BETAS[0] ** t[row])
            v_hat = v[row] / (1 - BETAS[1] ** t[row])
            w[row] = w[row] - LR * m_hat / (np.sqrt(v_hat) + EPS)
    return w


def reference_rowwise_adagrad(table: np.ndarray) -> np.ndarray:
    """Row-wise Adagrad written out row by row (float64): one accumulator per row."""
    w, acc = table.copy(), np.zeros(N)
    for step, rows in enumerate(STEPS):
        for row, g in zip(*coalesced(rows, step)):
            g = g + WD * w[row]
            acc[row] += np.mean(g * g)
            w[row] = w[row] - LR * g / (math.sqrt(acc[row]) + EPS)
    return w


def run_rule(rule: str, initial: torch.Tensor) -> torch.Tensor:
    table = torch.nn.Parameter(initial.clone())
    optimizer = RowSparseOptimizer([], [{"params": [table], "weight_decay": WD}], rule, LR, betas=BETAS, eps=EPS)
    for step, rows in enumerate(STEPS):
        table.grad = sparse_grad(rows, step)
        optimizer.step()
    return table.detach()


@pytest.fixture(params=["compiled", "torch"])
def row_kernel(request, monkeypatch):
    """Each row rule twice: its compiled CPU kernel, and the torch operations CUDA and bfloat16 use."""
    if request.param == "torch":
        monkeypatch.setattr(optim, "runs_compiled", lambda table: False)
    return request.param


@pytest.mark.parametrize("rule,reference", [("lazy_adam", reference_lazy_adam),
                                            ("rowwise_adagrad", reference_rowwise_adagrad)])
def test_row_rules_match_a_row_by_row_reference_and_leave_other_rows_alone(rule, reference, row_kernel):
    assert optim.runs_compiled(torch.zeros(N, D, dtype=torch.float64)) == (row_kernel == "compiled")
    initial = torch.randn(N, D, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    updated = run_rule(rule, initial)
    expected = torch.from_numpy(reference(initial.numpy()))
    torch.testing.assert_close(updated, expected, rtol=1e-12, atol=1e-12)
    touched = sorted({r for rows in STEPS for r in rows})
    untouched = [r for r in range(N) if r not in touched]
    assert untouched == [9, 10, 11]
    assert torch.equal(updated[untouched], initial[untouched])  # bit-identical, no decay, no drift
    assert not torch.isclose(updated[touched], initial[touched]).any()


@pytest.mark.parametrize("shape,dtype,wide", [((7, 200), torch.float32, torch.complex128),
                                              ((7, 6), torch.float32, torch.int64),
                                              ((7, 8), torch.bfloat16, torch.complex128),
                                              ((7, 1), torch.float32, torch.float32),
                                              ((7, 3), torch.float32, torch.float32)])
def test_row_copies_keep_every_bit_of_the_rows(shape, dtype, wide):
    """Gathers and scatters move rows as wide elements (row_blocks) and copy their bytes exactly,
    NaN payloads included; tables that cannot be viewed so are copied as they are."""
    gen = torch.Generator().manual_seed(0)
    bits = torch.randint(-2**15, 2**15, (shape[0], shape[1] * dtype.itemsize // 2), generator=gen, dtype=torch.int16)
    table, rows = bits.view(dtype), torch.tensor([0, 3, 6])
    assert row_blocks(table).dtype == wide
    block = gather_rows_of(table, rows)
    assert block.dtype == dtype and torch.equal(block.view(torch.int16), bits[rows])
    target = torch.zeros_like(table)
    scatter_rows_into(target, rows, block)
    assert torch.equal(target.view(torch.int16)[rows], bits[rows])
    assert not target.view(torch.int16)[[1, 2, 4, 5]].any()  # other rows untouched
    offset = table.view(-1)[shape[1]:].view(shape[0] - 1, shape[1])  # a view starting one row in
    assert torch.equal(gather_rows_of(offset, rows[:2]).view(torch.int16), bits[rows[:2] + 1])
    strided = table.t().contiguous().t()  # the same rows, not contiguous: copied as they are
    assert torch.equal(gather_rows_of(strided, rows).contiguous().view(torch.int16), bits[rows])


def test_lazy_adam_equals_adam_when_every_row_is_touched_every_step(row_kernel):
    gen = torch.Generator().manual_seed(3)
    initial = torch.randn(N, D, generator=gen)
    lazy, dense = torch.nn.Parameter(initial.clone()), torch.nn.Parameter(initial.clone())
    rows = RowSparseOptimizer([], [{"params": [lazy], "weight_decay": WD}], "lazy_adam", LR)
    adam = torch.optim.Adam([dense], lr=LR, weight_decay=WD)
    for _ in range(6):
        grad = torch.randn(N, D, generator=gen)
        lazy.grad = torch.sparse_coo_tensor(torch.arange(N)[None], grad, (N, D), check_invariants=True)
        dense.grad = grad.clone()
        rows.step()
        adam.step()
    torch.testing.assert_close(lazy, dense, rtol=1e-5, atol=1e-6)


def test_dense_groups_step_exactly_as_fused_adam():
    """One step from the same gradients (later steps differ through the item tables)."""
    torch.manual_seed(0)
    a, b = RecoderAutoencoder(20, (6, 4), sparse=True), RecoderAutoencoder(20, (6, 4))
    b.load_state_dict(a.state_dict())
    rows = build_optimizer(a, "lazy_adam", 0.01, WD)
    adam = torch.optim.Adam(b.parameter_groups(WD), lr=0.01, fused=True)
    items, values, offsets = torch.tensor([1, 4, 7, 0, 19]), torch.ones(5), torch.tensor([0, 3, 5])
    targets = torch.tensor([0, 1, 4, 7, 9, 19])
    for model, optimizer in ((a, rows), (b, adam)):
        model.eval()  # no dropout: both models see the same input
        model(items, values, offsets, targets).square().sum().backward()
        optimizer.step()
    dense = [n for n, _ in a.named_parameters() if n not in a.item_parameter_names()]
    assert dense
    for name in dense:
        assert torch.equal(a.get_parameter(name), b.get_parameter(name)), name


def test_optimizer_state_survives_a_state_dict_round_trip():
    torch.manual_seed(0)
    model = RecoderAutoencoder(20, (6,), sparse=True, input_dropout=0.0)
    optimizer = build_optimizer(model, "lazy_adam", 0.01, WD)
    items, values, offsets = torch.tensor([1, 4, 7, 0, 19]), torch.ones(5), torch.tensor([0, 3, 5])
    targets = torch.tensor([0, 1, 4, 7, 9, 19])

    def step(m, o):
        o.zero_grad()
        m(items, values, offsets, targets).square().sum().backward()
        o.step()

    step(model, optimizer)
    clone = RecoderAutoencoder(20, (6,), sparse=True, input_dropout=0.0)
    clone.load_state_dict(model.state_dict())
    clone_optimizer = build_optimizer(clone, "lazy_adam", 0.01, WD)
    clone_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # as from a checkpoint file
    step(model, optimizer)
    step(clone, clone_optimizer)
    for (name, p), q in zip(model.named_parameters(), clone.parameters()):
        assert torch.equal(p, q), name
    row_step = optimizer.state[model.output_weight]["row_step"]
    assert row_step[targets].tolist() == [2.0] * len(targets) and row_step.sum() == 2 * len(targets)


@pytest.fixture
def batch():
    # 3 users over a catalogue of 50 items; the target set is their union plus two negatives
    items = torch.tensor([1, 4, 7, 0, 29, 4, 41])
    values = torch.tensor([2.0, 1.0, 2.0, 1.0, 3.0, 1.0, 1.0])
    offsets = torch.tensor([0, 3, 5, 7])
    targets = torch.tensor([0, 1, 4, 7, 12, 29, 33, 41])
    rows = torch.repeat_interleave(torch.arange(3), offsets.diff())
    cols = torch.searchsorted(targets, items)
    return items, values, offsets, targets, rows, cols


@pytest.mark.parametrize("tied", [False, True])
def test_item_tables_get_gradients_of_the_touched_rows_only(batch, tied):
    items, values, offsets, targets, rows, cols = batch
    torch.manual_seed(0)
    sparse = RecoderAutoencoder(50, (8,), tied=tied, sparse=True, input_dropout=0.0)
    dense = RecoderAutoencoder(50, (8,), tied=tied, input_dropout=0.0)
    dense.load_state_dict(sparse.state_dict())
    for model in (sparse, dense):
        multinomial_nll(model(items, values, offsets, targets), rows, cols, values).backward()
    encoder_rows = torch.unique(items)
    expected_rows = {"item_embedding.weight": targets if tied else encoder_rows, "output_weight": targets,
                     "output_bias": targets}
    for name in sparse.item_parameter_names():
        grad = sparse.get_parameter(name).grad
        # the layout and the size: no 50 × 8 buffer behind the gradient, only the touched rows
        assert grad.layout == torch.sparse_coo, name
        touched, block = touched_rows(grad)
        assert touched.tolist() == expected_rows[name].tolist(), name
        assert block.numel() == touched.numel() * (1 if name == "output_bias" else 8), name
        torch.testing.assert_close(grad.to_dense(), dense.get_parameter(name).grad, msg=name)
    for name, p in sparse.named_parameters():
        if name not in sparse.item_parameter_names():
            assert p.grad.layout == torch.strided
            torch.testing.assert_close(p.grad, dense.get_parameter(name).grad)


def test_gramian_loss_gets_row_sparse_decoder_gradients(batch):
    items, values, offsets, targets, rows, cols = batch
    torch.manual_seed(0)
    sparse = RecoderAutoencoder(50, (8,), sparse=True, input_dropout=0.0)
    dense = RecoderAutoencoder(50, (8,), input_dropout=0.0)
    dense.load_state_dict(sparse.state_dict())
    loss = get_hidden_loss("mse", 3.0)
    for model in (sparse, dense):
        weight, bias = model.target_rows(targets)
        loss(model.hidden(items, values, offsets), weight, bias, rows, cols, values).backward()
    for name in ("output_weight", "output_bias"):
        grad = sparse.get_parameter(name).grad
        assert grad.layout == torch.sparse_coo and touched_rows(grad)[0].tolist() == targets.tolist()
        torch.testing.assert_close(grad.to_dense(), dense.get_parameter(name).grad)


def test_scoring_without_autograd_gathers_nothing(batch):
    items, values, offsets, targets, _, _ = batch
    model = RecoderAutoencoder(50, (8,), sparse=True).eval()
    with torch.no_grad():
        scored = model(items, values, offsets, targets)
    assert scored.grad_fn is None
    torch.testing.assert_close(scored, RecoderAutoencoder.forward(model, items, values, offsets, None)[:, targets])


def test_gather_rows_backward_is_coalesced_rows():
    table = torch.randn(10, 4, requires_grad=True)
    rows = torch.tensor([2, 5, 9])
    (gather_rows(table, rows) * torch.arange(12.0).reshape(3, 4)).sum().backward()
    assert table.grad.is_sparse and table.grad._nnz() == 3
    rows_seen, values = touched_rows(table.grad)
    assert rows_seen.tolist() == rows.tolist() and values.data_ptr() == table.grad._values().data_ptr()  # no copy
    assert torch.equal(table.grad.to_dense()[rows], torch.arange(12.0).reshape(3, 4))


def test_unknown_item_optimizer_is_named():
    with pytest.raises(ValueError, match="rowwise_adagrad"):
        build_optimizer(RecoderAutoencoder(5, (2,)), "sgd", 0.1, 0.0)
