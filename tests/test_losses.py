import pytest
import torch
import torch.nn.functional as F

from recoder_dist.losses import LOSSES, get_loss, logistic, multinomial_nll, weighted_mse

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
