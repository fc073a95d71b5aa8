"""``recoder_dist.schedule``: the learning-rate schedules against their formulas and torch's
MultiStepLR, and the early-stopping count over a history."""
import math

import pytest
import torch

from recoder_dist.config import ConfigError, load_config
from recoder_dist.schedule import evaluations_since_best, kl_weight, lr_factor, lr_scheduler, should_stop


def train_config(*overrides: str):
    return load_config(None, [*overrides, "mlflow.enabled=false"]).train


def rates(t, epochs: int) -> list[float]:
    """The learning rate the scheduler gives an optimizer in each epoch (stepped once per epoch)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=t.lr)
    scheduler = lr_scheduler(optimizer, t)
    seen = []
    for _ in range(epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_step_schedule_is_recoders_multistep_lr():
    t = train_config("train.lr_schedule=step", "train.lr=0.01", "train.milestones=[3,5]", "train.gamma=0.5",
                     "train.epochs=8")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=t.lr)
    reference = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[3, 5], gamma=0.5)
    expected = []
    for _ in range(8):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    assert rates(t, 8) == pytest.approx(expected)
    assert expected == pytest.approx([0.01] * 3 + [0.005] * 2 + [0.0025] * 3)


def test_warmup_cosine_against_its_formula():
    t = train_config("train.lr_schedule=warmup_cosine", "train.lr=0.02", "train.epochs=10", "train.warmup_epochs=2",
                     "train.lr_floor=0.1")
    expected = [0.5, 1.0] + [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert [lr_factor(t, e) for e in range(10)] == pytest.approx(expected)
    assert rates(t, 10) == pytest.approx([0.02 * f for f in expected])
    after = expected[1:]
    assert all(a > b for a, b in zip(after[1:], after[2:]))  # strictly down after the warm-up ...
    assert expected[-1] > 0.1 and lr_factor(t, 10) == pytest.approx(0.1)  # ... to the floor after the last epoch


def test_warmup_cosine_without_warmup_starts_at_the_full_rate():
    t = train_config("train.lr_schedule=warmup_cosine", "train.epochs=4", "train.warmup_epochs=0")
    assert [lr_factor(t, e) for e in range(5)] == pytest.approx([1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5,
                                                                 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0])


def test_the_scheduler_resumes_from_its_state():
    """An optimizer and scheduler restored from a checkpoint's states (as ``fit`` restores them) give
    the rates an uninterrupted run gives."""
    t = train_config("train.lr_schedule=warmup_cosine", "train.epochs=6", "train.warmup_epochs=2")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=t.lr)
    scheduler = lr_scheduler(optimizer, t)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    fresh = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=t.lr)
    restored = lr_scheduler(fresh, t)
    fresh.load_state_dict(optimizer.state_dict())
    restored.load_state_dict(scheduler.state_dict())
    seen = []
    for _ in range(3):
        seen.append(fresh.param_groups[0]["lr"])
        fresh.step()
        restored.step()
    assert seen == pytest.approx(rates(t, 6)[3:])


@pytest.mark.parametrize("override, message", [
    ("train.lr_schedule=onecycle", "train.lr_schedule must be step or warmup_cosine"),
    ("train.warmup_epochs=-1", "train.warmup_epochs must be >= 0"),
    ("train.lr_floor=1.5", "train.lr_floor must be in [0, 1]"),
    ("train.patience=-2", "train.patience must be >= 0"),
])
def test_bad_schedule_settings_are_refused(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, [override])


def test_early_stopping_counts_evaluations_since_the_best():
    history = [{"epoch": 1, "val_ndcg_at_100": 0.2}, {"epoch": 2, "val_ndcg_at_100": 0.3},
               {"epoch": 3},  # not evaluated (eval_every): does not count
               {"epoch": 4, "val_ndcg_at_100": 0.25}, {"epoch": 5, "val_ndcg_at_100": 0.3}]
    assert evaluations_since_best(history, 2) == 2
    assert should_stop(history, 2, 2) and not should_stop(history, 2, 3)
    assert not should_stop(history, 2, 0)  # 0: off
    assert evaluations_since_best(history, 5) == 0 and not should_stop(history, 5, 1)


def test_kl_weight_grows_linearly_to_its_cap():
    t = train_config("train.kl_max=0.2", "train.kl_anneal_steps=100")
    assert [kl_weight(t, s) for s in (0, 25, 50, 100, 101, 10_000)] == pytest.approx([0.0, 0.05, 0.1, 0.2, 0.2, 0.2])
    assert kl_weight(train_config("train.kl_max=0.3", "train.kl_anneal_steps=0"), 0) == pytest.approx(0.3)
    with pytest.raises(ConfigError, match="kl_max"):
        train_config("train.kl_max=-1")
