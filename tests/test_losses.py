import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recoder_dist.losses import (LOSSES, gaussian_kl, get_hidden_loss, get_loss, gramian, gramian_mse, logistic,
                                 multinomial_nll, union_log_inclusion, weighted_mse)
from recoder_dist.csr import column_order
from recoder_dist.models import RecoderAutoencoder

B, T = 5, 12


@pytest.fixture
def case():
    torch.manual_seed(0)
    logits = (3 * torch.randn(B, T, dtype=torch.float64)).requires_grad_()
    rows, cols = [], []
    for i, n in enumerate([3, 1, 0, 5, 2]):  # user 2 has no positives
        rows += [i] * n
        cols += torch.randperm(T)[:n].tolist()
    rows, cols = torch.tensor(rows), torch.tensor(cols)
    values = torch.rand(len(rows), dtype=torch.float64) * 4 + 0.5
    values[0] = 0.0  # an explicit zero is not a positive for mse / logistic
    target = torch.zeros(B, T, dtype=torch.float64)
    target[rows, cols] = values
    return logits, rows, cols, values, target


def check(loss, expected, logits):
    torch.testing.assert_close(loss, expected)
    (grad,) = torch.autograd.grad(loss, logits, retain_graph=True)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(grad, expected_grad)


def test_multinomial_matches_dense_log_softmax(case):
    logits, rows, cols, values, target = case
    expected = -(target * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    check(multinomial_nll(logits, rows, cols, values), expected, logits)


def test_multinomial_binary_hand_case():
    # logits (0, ln 3): softmax (1/4, 3/4); positive item 1 -> -log(3/4)
    logits = torch.tensor([[0.0, torch.log(torch.tensor(3.0))]])
    loss = multinomial_nll(logits, torch.tensor([0]), torch.tensor([1]), torch.tensor([1.0]))
    assert float(loss) == pytest.approx(-torch.log(torch.tensor(0.75)).item())


@pytest.mark.parametrize("confidence", [0.0, 2.5])
def test_weighted_mse_matches_dense(case, confidence):
    logits, rows, cols, values, target = case
    weight = 1.0 + confidence * (target > 0).double()
    expected = (weight * (target - logits) ** 2).sum(dim=1).mean()
    check(weighted_mse(logits, rows, cols, values, confidence), expected, logits)


def test_logistic_matches_bce_with_logits(case):
    logits, rows, cols, values, target = case
    expected = F.binary_cross_entropy_with_logits(
        logits, (target > 0).double(), reduction="none").sum(dim=1).mean()
    check(logistic(logits, rows, cols, values), expected, logits)


def test_get_loss_binds_confidence(case):
    logits, rows, cols, values, _ = case
    mse = get_loss("mse", confidence=3.0)
    torch.testing.assert_close(mse(logits, rows, cols, values),
                               weighted_mse(logits, rows, cols, values, confidence=3.0))
    assert get_loss("multinomial") is multinomial_nll
    assert set(LOSSES) == {"multinomial", "mse", "logistic"}
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        get_loss("hinge")


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_sum_bf16_logits_in_float32_and_return_bf16_gradients(case, name):
    logits, rows, cols, values, _ = case
    low = logits.detach().to(torch.bfloat16).requires_grad_()
    loss = LOSSES[name](low, rows, cols, values.float())
    assert loss.dtype == torch.float32
    (grad,) = torch.autograd.grad(loss, low)
    assert grad.dtype == torch.bfloat16
    # the same as the float32 loss of the same (rounded) logits, up to bf16's rounding of the gradient
    exact = low.detach().float().requires_grad_()
    expected = LOSSES[name](exact, rows, cols, values.float())
    torch.testing.assert_close(loss, expected)
    (expected_grad,) = torch.autograd.grad(expected, exact)
    torch.testing.assert_close(grad.float(), expected_grad, rtol=1e-2, atol=1e-3)


def test_multinomial_backward_runs_once():
    """Its backward scales the saved buffer in place: a second pass must fail, not be wrong."""
    logits = torch.randn(2, 4, requires_grad=True)
    loss = multinomial_nll(logits, torch.tensor([0, 1]), torch.tensor([3, 0]), torch.ones(2))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="already back-propagated"):
        loss.backward()


# --- the Gramian form of the weighted MSE ------------------------------------------------------

def assert_relative(actual, expected, tol=1e-9):
    """Equal to ``tol`` relative to the largest entry of ``expected`` (entries that cancel to ~0
    cannot be compared relative to themselves)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    scale = expected.abs().max().clamp_min(1e-300)
    error = (actual - expected).abs().max()
    assert error <= tol * scale, f"max error {float(error):.3g} vs scale {float(scale):.3g}"


def ragged_positives(counts, n_targets, generator):
    """COO positives in CSR order, ``counts[i]`` distinct columns for user ``i``."""
    rows, cols = [], []
    for i, n in enumerate(counts):
        rows += [i] * n
        cols += torch.randperm(n_targets, generator=generator)[:n].tolist()
    values = torch.rand(len(rows), dtype=torch.float64, generator=generator) * 4 + 0.5
    if len(rows) > 1:
        values[1] = 0.0  # an explicit zero: weight 1, like the implicit negatives
    return torch.tensor(rows, dtype=torch.int64), torch.tensor(cols, dtype=torch.int64), values


COUNTS = [3, 1, 0, 7, 2, 12]  # ragged: users with 0, 1 and many positives


@pytest.mark.parametrize("confidence", [0.0, 3.0])
@pytest.mark.parametrize("learned_bias", [False, True])
def test_gramian_mse_equals_dense_weighted_mse_and_its_gradients(confidence, learned_bias):
    g = torch.Generator().manual_seed(4)
    n_users, n_targets, h = len(COUNTS), 15, 6
    z = torch.randn(n_users, h, dtype=torch.float64, generator=g).requires_grad_()
    weight = torch.randn(n_targets, h, dtype=torch.float64, generator=g).requires_grad_()
    bias = (torch.randn(n_targets, dtype=torch.float64, generator=g) if learned_bias
            else torch.zeros(n_targets, dtype=torch.float64)).requires_grad_()
    rows, cols, values = ragged_positives(COUNTS, n_targets, g)

    loss = gramian_mse(z, weight, bias, rows, cols, values, confidence)
    logits = z @ weight.t() + bias
    target = torch.zeros(n_users, n_targets, dtype=torch.float64)
    target[rows, cols] = values
    w = 1.0 + confidence * (target > 0).double()
    expected = (w * (target - logits) ** 2).sum(dim=1).mean()
    assert_relative(loss, expected)
    assert_relative(loss, weighted_mse(logits, rows, cols, values, confidence))
    grads = torch.autograd.grad(loss, (z, weight, bias))
    expected_grads = torch.autograd.grad(expected, (z, weight, bias))
    for name, grad, expected_grad in zip(("z", "weight", "bias"), grads, expected_grads):
        assert grad.abs().max() > 0, name
        assert_relative(grad, expected_grad)


@pytest.mark.parametrize("shared_order", [False, True])
@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("hidden_sizes,tied", [((8,), False), ((8, 5), False), ((8, 5), True)])
@pytest.mark.parametrize("confidence,learned_bias", [(0.0, False), (3.0, True)])
def test_gramian_mse_through_the_model_gives_every_parameter_the_dense_gradient(full, hidden_sizes, tied,
                                                                                confidence, learned_bias,
                                                                                shared_order):
    """Union (a target subset) and full mode (the whole catalogue): model.hidden + target_rows + the
    Gramian loss against the dense logits + weighted_mse, every parameter's gradient compared; each
    backward sorting on its own, or both given the batch's order by item and its offsets, as
    trainer.Step passes them (in union mode the loss's columns are then not the items sorted)."""
    g = torch.Generator().manual_seed(5)
    num_items = 23
    torch.manual_seed(5)
    model = RecoderAutoencoder(num_items, hidden_sizes, tied=tied, input_dropout=0.0).double().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in model.bias_parameter_names() and (learned_bias or name != "output_bias"):
                param.normal_(generator=g)  # zero-initialised: make bias mix-ups visible
    targets = None if full else torch.sort(torch.randperm(num_items, generator=g)[:14]).values
    n_targets = num_items if full else len(targets)
    rows, target_cols, values = ragged_positives(COUNTS, n_targets, g)
    item_of = torch.arange(num_items) if full else targets
    items = item_of[target_cols]
    offsets = torch.zeros(len(COUNTS) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor(COUNTS).cumsum(0)
    values_in = values.clamp_min(0.25)  # the encoder's input: an all-zero user cannot be normalised

    weight, bias = model.target_rows(targets)
    if shared_order:
        by_item = column_order(items, rows, num_items)
        z = model.hidden_kl(items, values_in, offsets, by_item)[0]
        loss = gramian_mse(z, weight, bias, rows, target_cols, values, confidence, offsets=offsets, by_col=by_item)
    else:
        loss = gramian_mse(model.hidden(items, values_in, offsets), weight, bias, rows, target_cols, values,
                           confidence)
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    expected = weighted_mse(model(items, values_in, offsets, targets), rows, target_cols, values, confidence)
    expected_grads = torch.autograd.grad(expected, list(model.parameters()), allow_unused=True)
    assert_relative(loss, expected)
    for (name, _), grad, expected_grad in zip(model.named_parameters(), grads, expected_grads):
        assert grad is not None and expected_grad is not None, name
        assert_relative(grad, expected_grad)


def test_gramian_mse_sorts_positives_given_out_of_row_order():
    g = torch.Generator().manual_seed(6)
    z = torch.randn(4, 3, dtype=torch.float64, generator=g).requires_grad_()
    weight = torch.randn(9, 3, dtype=torch.float64, generator=g).requires_grad_()
    bias = torch.randn(9, dtype=torch.float64, generator=g).requires_grad_()
    rows, cols, values = ragged_positives([2, 0, 3, 1], 9, g)
    shuffled = torch.randperm(len(rows), generator=g)
    assert (rows[shuffled][1:] < rows[shuffled][:-1]).any()
    loss = gramian_mse(z, weight, bias, rows[shuffled], cols[shuffled], values[shuffled], 2.0)
    expected = weighted_mse(z @ weight.t() + bias, rows, cols, values, 2.0)
    assert_relative(loss, expected)
    for grad, expected_grad in zip(torch.autograd.grad(loss, (z, weight, bias)),
                                   torch.autograd.grad(expected, (z, weight, bias))):
        assert_relative(grad, expected_grad)


def test_gramian_mse_without_positives_is_the_sum_of_squares():
    g = torch.Generator().manual_seed(7)
    z = torch.randn(3, 4, dtype=torch.float64, generator=g).requires_grad_()
    weight = torch.randn(5, 4, dtype=torch.float64, generator=g)
    bias = torch.randn(5, dtype=torch.float64, generator=g)
    none = torch.zeros(0, dtype=torch.int64)
    loss = gramian_mse(z, weight, bias, none, none, torch.zeros(0, dtype=torch.float64), 3.0)
    expected = (z @ weight.t() + bias).square().sum() / 3
    assert_relative(loss, expected)
    assert_relative(torch.autograd.grad(loss, z)[0], torch.autograd.grad(expected, z)[0])


def test_gramian_mse_of_bf16_z_sums_in_float32_and_returns_a_bf16_gradient():
    g = torch.Generator().manual_seed(8)
    z = torch.randn(4, 3, generator=g).to(torch.bfloat16).requires_grad_()
    weight = torch.randn(6, 3, generator=g).requires_grad_()
    bias = torch.randn(6, generator=g).requires_grad_()
    rows, cols, values = ragged_positives([2, 1, 0, 3], 6, g)
    loss = gramian_mse(z, weight, bias, rows, cols, values.float(), 3.0)
    assert loss.dtype == torch.float32
    grad_z, grad_weight = torch.autograd.grad(loss, (z, weight))
    assert grad_z.dtype == torch.bfloat16 and grad_weight.dtype == torch.float32
    exact = z.detach().float()
    expected = weighted_mse(exact @ weight.detach().t() + bias.detach(), rows, cols, values.float(), 3.0)
    torch.testing.assert_close(loss, expected)


def test_get_hidden_loss_names_the_gramian_mse_only():
    g = torch.Generator().manual_seed(9)
    z, weight, bias = torch.randn(2, 3, generator=g), torch.randn(4, 3, generator=g), torch.randn(4, generator=g)
    rows, cols, values = torch.tensor([0, 1]), torch.tensor([3, 0]), torch.tensor([1.0, 2.0])
    torch.testing.assert_close(get_hidden_loss("mse", confidence=3.0)(z, weight, bias, rows, cols, values),
                               gramian_mse(z, weight, bias, rows, cols, values, confidence=3.0))
    assert get_hidden_loss("multinomial") is None and get_hidden_loss("logistic") is None
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        get_hidden_loss("hinge")


# --- logQ correction and the VAE's KL term ------------------------------------------------------

@pytest.mark.parametrize("users", [1, 7, 500])
def test_union_log_inclusion_is_log_of_one_minus_the_miss_probability(users):
    p = torch.tensor([1e-9, 1e-4, 0.01, 0.2, 0.5, 0.97, 1.0], dtype=torch.float64)
    expected = [math.log(1.0 - (1.0 - float(x)) ** users) for x in p]
    torch.testing.assert_close(union_log_inclusion(p, users), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-6, atol=0.0)
    assert float(union_log_inclusion(p, users)[-1]) == 0.0  # an item every user holds is always in


def test_union_log_inclusion_matches_simulated_unions():
    """Users holding each item independently with probability p_j: the share of B-user unions
    holding item j is q_j."""
    rng = np.random.default_rng(0)
    p = np.array([0.002, 0.01, 0.05, 0.3])
    users, trials = 50, 20_000
    held = rng.random((trials, users, len(p))) < p
    observed = held.any(axis=1).mean(axis=0)
    q = union_log_inclusion(torch.tensor(p), users).exp().numpy()
    np.testing.assert_allclose(observed, q, rtol=0.05)


def test_union_log_inclusion_refuses_items_no_user_holds():
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        union_log_inclusion(torch.tensor([0.1, 0.0]), 10)
    with pytest.raises(ValueError, match="sampling_users"):
        union_log_inclusion(torch.tensor([0.1]), 0)


def test_gaussian_kl_is_the_closed_form_against_the_standard_normal():
    torch.manual_seed(1)
    mean, log_variance = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    direct = sum(0.5 * (math.exp(float(s)) + float(m) ** 2 - 1.0 - float(s))
                 for m, s in zip(mean.flatten(), log_variance.flatten())) / 6
    torch.testing.assert_close(gaussian_kl(mean, log_variance), torch.tensor(direct, dtype=torch.float64))
    posterior = torch.distributions.Normal(mean, (0.5 * log_variance).exp())
    prior = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    torch.testing.assert_close(gaussian_kl(mean, log_variance),
                               torch.distributions.kl_divergence(posterior, prior).sum(dim=1).mean())
    assert float(gaussian_kl(torch.zeros(3, 2), torch.zeros(3, 2))) == 0.0


@pytest.mark.parametrize("h", [1, 2, 7, 200])
def test_gramian_is_x_transposed_times_x(h):
    x = torch.randn(37, h, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    found = gramian(x)
    assert_relative(found, x.t() @ x, tol=1e-12)
    half = h // 2
    assert torch.equal(found[half:, :half], found[:half, half:].t())  # the mirrored block
