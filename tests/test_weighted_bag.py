"""The encoder's embedding-bag with the per-item backward (models.weighted_bag) against ATen's
embedding-bag, float64, dense and row-sparse gradients; the input dropout's statistics."""
import pytest
import torch
import torch.nn.functional as F

from recoder_dist.csr import column_order, sort_order
from recoder_dist.models import RecoderAutoencoder, gather_rows, input_dropout, weighted_bag


def ragged_bags(g: torch.Generator, n_items: int = 17):
    """Users with 0, 1 and many items (an item repeated across users, never within one)."""
    counts = [4, 0, 1, 9, 3]
    items = torch.cat([torch.randperm(n_items, generator=g)[:n] for n in counts])
    offsets = torch.zeros(len(counts) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor(counts).cumsum(0)
    rows = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    weights = torch.randn(items.numel(), dtype=torch.float64, generator=g)
    return items, offsets, rows, weights


@pytest.mark.parametrize("given_order", [False, True])
@pytest.mark.parametrize("row_sparse", [False, True])
def test_weighted_bag_equals_embedding_bag_and_its_table_gradient(row_sparse, given_order):
    """Its own sort in the backward, or the caller's column_order (as the trainer passes it)."""
    g = torch.Generator().manual_seed(11)
    items, offsets, rows, weights = ragged_bags(g)
    table = torch.randn(17, 6, dtype=torch.float64, generator=g, requires_grad=True)
    upstream = torch.randn(offsets.numel() - 1, 6, dtype=torch.float64, generator=g)

    by_item = column_order(items, rows, 17) if given_order else None
    out = weighted_bag(table, items, offsets, weights, rows, row_sparse, by_item)
    expected = F.embedding_bag(items, table, offsets, mode="sum", per_sample_weights=weights, include_last_offset=True)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad((out * upstream).sum(), table)
    (expected_grad,) = torch.autograd.grad((expected * upstream).sum(), table)
    assert grad.is_sparse == row_sparse
    if row_sparse:  # just the rows the batch holds, sorted and unique
        assert grad.is_coalesced()
        assert grad.indices()[0].tolist() == torch.unique(items).tolist()
        grad = grad.to_dense()
    assert expected_grad.abs().max() > 0
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-12)


def test_weighted_bag_without_entries_has_a_zero_gradient():
    table = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    none = torch.zeros(0, dtype=torch.int64)
    out = weighted_bag(table, none, torch.zeros(3, dtype=torch.int64), torch.zeros(0, dtype=torch.float64), none)
    assert out.shape == (2, 3) and not out.any()
    (grad,) = torch.autograd.grad(out.sum(), table)
    assert grad.shape == (5, 3) and not grad.any()


@pytest.mark.parametrize("row_sparse", [False, True])
def test_weighted_bag_falls_back_when_the_weights_need_a_gradient(row_sparse):
    g = torch.Generator().manual_seed(12)
    items, offsets, rows, weights = ragged_bags(g)
    table = torch.randn(17, 4, dtype=torch.float64, generator=g, requires_grad=True)
    weights.requires_grad_()
    out = weighted_bag(table, items, offsets, weights, rows, row_sparse)
    expected = F.embedding_bag(items, table, offsets, mode="sum", per_sample_weights=weights, include_last_offset=True)
    got, want = torch.autograd.grad(out.sum(), (table, weights)), torch.autograd.grad(expected.sum(), (table, weights))
    assert got[0].is_sparse == row_sparse
    torch.testing.assert_close(got[0].to_dense() if row_sparse else got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


@pytest.mark.parametrize("sparse", [False, True])
def test_model_encoder_gradient_equals_the_embedding_bag_one(sparse):
    """The model's encoder table gradient, dense and row-sparse, against ATen's embedding-bag on the
    same normalised input (no noise)."""
    g = torch.Generator().manual_seed(13)
    torch.manual_seed(13)
    model = RecoderAutoencoder(17, (6,), input_dropout=0.0, sparse=sparse).double().train()
    items, offsets, rows, _ = ragged_bags(g)
    values = torch.rand(items.numel(), dtype=torch.float64, generator=g) + 0.5
    z = model.hidden(items, values, offsets)
    (grad,) = torch.autograd.grad(z.square().sum(), model.item_embedding.weight)
    norm = torch.zeros(offsets.numel() - 1, dtype=torch.float64).index_add(0, rows, values * values).sqrt()
    table = model.item_embedding.weight.detach().clone().requires_grad_()
    bag = F.embedding_bag(items, table, offsets, mode="sum", per_sample_weights=values / norm[rows],
                          include_last_offset=True)
    (expected,) = torch.autograd.grad(torch.tanh(bag + model.encoder_bias.detach()).square().sum(), table)
    assert grad.is_sparse == sparse
    torch.testing.assert_close(grad.to_dense() if sparse else grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bound", [4, 2**15, 2**15 + 1, 2**31 + 1])  # sorted as int16, int16, int32, int64
def test_sort_order_is_stable_and_sorted(bound):
    keys = torch.tensor([3, 1, 3, 0, 1, 3]) + (bound - 4)
    found, order = sort_order(keys, bound)
    assert (found.to(torch.int64) - (bound - 4)).tolist() == [0, 1, 1, 3, 3, 3] and order.tolist() == [3, 1, 4, 0, 2, 5]


def test_column_order_names_each_entry_and_its_row_in_column_order():
    g = torch.Generator().manual_seed(16)
    items, _, rows, _ = ragged_bags(g)
    found = column_order(items, rows, 17)
    assert torch.equal(found.order, torch.argsort(items, stable=True))
    assert torch.equal(found.rows, rows[found.order])


def test_input_dropout_keeps_a_share_1_minus_p_scaled_by_its_inverse():
    torch.manual_seed(14)
    out = input_dropout(torch.full((200_000,), 2.0), 0.25)
    assert out.unique().tolist() == pytest.approx([0.0, 2.0 / 0.75])
    assert abs(float((out > 0).double().mean()) - 0.75) < 0.005  # ~10 std of the share


def test_dense_gather_rows_gradient_equals_the_embedding_one():
    g = torch.Generator().manual_seed(15)
    table = torch.randn(12, 5, dtype=torch.float64, generator=g, requires_grad=True)
    rows = torch.tensor([0, 3, 4, 11])
    upstream = torch.randn(4, 5, dtype=torch.float64, generator=g)
    out = gather_rows(table, rows, sparse=False)
    torch.testing.assert_close(out, table[rows], rtol=0, atol=0)
    (grad,) = torch.autograd.grad((out * upstream).sum(), table)
    (expected,) = torch.autograd.grad((F.embedding(rows, table) * upstream).sum(), table)
    assert not grad.is_sparse
    torch.testing.assert_close(grad, expected, rtol=0, atol=0)
