"""``trainer.fit`` in this very process (one rank, no Horovod): how it treats its reader."""
import threading

import pytest
from _data import GLOBAL_BATCH, TRAIN, prepared_dataset

from recoder_dist import trainer
from recoder_dist.config import load_config
from recoder_dist.distributed import Workers


@pytest.fixture(scope="module")
def data(spark, tmp_path_factory):
    return prepared_dataset(spark, tmp_path_factory.getbasetemp())


def leftover_threads(before: set) -> list[str]:
    """Threads started since ``before`` still running (tqdm keeps one monitor thread per process, by design)."""
    return [t.name for t in threading.enumerate() if t not in before and t.name != "tqdm_monitor"]


def test_a_failed_epoch_stops_the_reader_before_the_error_leaves_fit(data, tmp_path):
    """One Petastorm reader (and its prefetch thread) serves every epoch; an error must not leave
    them running while the caller still holds the traceback, and with it fit's frame."""
    config = load_config(None, [*TRAIN, "train.epochs=3", f"train.batch_size={GLOBAL_BATCH}",
                                f"train.checkpoint_dir={tmp_path}"])
    before = set(threading.enumerate())
    epochs_seen = []

    def fail_after_first(epoch, model, record) -> None:
        epochs_seen.append(epoch)
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here") as raised:
        trainer.fit(config, str(data), Workers(rank=0, size=1, local_rank=0, local_size=1),
                    on_epoch_end=fail_after_first)
    assert epochs_seen == [1]
    # ``raised`` keeps the traceback, and with it fit's frame, alive: only fit itself can have
    # stopped the threads
    assert any(entry.name == "fit" for entry in raised.traceback)
    assert leftover_threads(before) == []


def test_an_error_in_sampling_stops_the_reader_too(data, tmp_path, monkeypatch):
    """The failure starts inside the batch stream (on the prefetch thread), not in the loop."""
    config = load_config(None, [*TRAIN, "train.epochs=2", f"train.batch_size={GLOBAL_BATCH}",
                                f"train.checkpoint_dir={tmp_path}"])

    def broken_sampler(*args, **kwargs):
        raise ValueError("sampler broke")
        yield  # a generator, like make_batches

    monkeypatch.setattr(trainer, "make_batches", broken_sampler)
    before = set(threading.enumerate())
    with pytest.raises(ValueError, match="sampler broke") as raised:
        trainer.fit(config, str(data), Workers(rank=0, size=1, local_rank=0, local_size=1))
    assert any(entry.name == "_batches" for entry in raised.traceback)
    assert leftover_threads(before) == []


@pytest.mark.parametrize("full", [False, True])
def test_a_gramian_mse_step_makes_the_dense_mse_step_update(full):
    """train.mse_form=gramian (model.hidden + target_rows + the Gramian loss) and =dense (logits +
    weighted_mse): the same losses and weights over a few Adam steps, batch union and full mode."""
    import numpy as np
    import torch

    from recoder_dist.sampling import UserRows, make_batches

    rng = np.random.default_rng(3)
    num_items, lengths = 60, [0, 1, 9, 4, 17, 2, 6, 1]  # ragged, one user without items
    lists = [rng.choice(num_items, n, replace=False) for n in lengths]
    rows = UserRows.from_lists(np.arange(len(lists)), lists, [rng.uniform(1, 5, n) for n in lengths])
    batches = list(make_batches(rows, 4, 8, num_items, 3, full, np.random.default_rng(0)))
    assert len(batches) == 2 and (batches[0].target_items is None) == full

    def run(form: str) -> tuple[list[float], dict]:
        config = load_config(None, ["model.hidden_sizes=[12,5]", "train.loss=mse", "train.confidence=3",
                                    f"train.mse_form={form}", "train.item_optimizer=adam", "mlflow.enabled=false"])
        torch.manual_seed(0)
        model = trainer.build_model(num_items, config)  # dense item gradients, for torch's Adam
        optimizer = torch.optim.Adam(model.parameter_groups(1e-3), lr=0.01)
        step = trainer.Step(model, optimizer, trainer.get_loss("mse", 3.0), model.item_parameter_names(), config,
                            Workers(rank=0, size=1, local_rank=0, local_size=1),
                            torch.autocast("cpu", enabled=False), torch.device("cpu"), trainer.hidden_loss(config.train))
        assert (step.hidden_loss_fn is None) == (form == "dense")
        model.train()
        losses = []
        for i in range(4):
            torch.manual_seed(100 + i)  # the same input-dropout masks for both forms
            losses.append(step(batches[i % 2])[0])
        return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}

    gramian_losses, gramian_weights = run("gramian")
    dense_losses, dense_weights = run("dense")
    assert gramian_losses == pytest.approx(dense_losses, rel=1e-5)
    for name, weight in dense_weights.items():
        torch.testing.assert_close(gramian_weights[name], weight, rtol=1e-4, atol=1e-5, msg=name)


def test_the_default_step_moves_only_the_rows_of_the_batch_union():
    """The shipped default (lazy Adam on row-sparse item tables): a step's gradients and updates
    touch the batch's encoder rows and its target set's decoder rows, never the rest of the
    catalogue, whose weights stay bit-identical."""
    import numpy as np
    import torch

    from recoder_dist.optim import touched_rows
    from recoder_dist.sampling import UserRows, make_batches

    num_items, rng = 5000, np.random.default_rng(5)
    lists = [rng.choice(80, n, replace=False) for n in (3, 7, 12, 5)]  # every item below 80
    batch = next(make_batches(UserRows.from_lists(np.arange(4), lists), 4, 4, num_items))
    config = load_config(None, ["mlflow.enabled=false"])
    assert config.train.item_optimizer == "lazy_adam"
    torch.manual_seed(0)
    step = trainer.build_step(config, num_items, Workers(rank=0, size=1, local_rank=0, local_size=1),
                              torch.device("cpu"), "float32")
    model = step.model.train()
    before = {name: model.get_parameter(name).detach().clone() for name in model.item_parameter_names()}
    step(batch)
    encoder_rows = np.unique(np.concatenate(lists))
    moved_rows = {"item_embedding.weight": encoder_rows, "output_weight": batch.target_items.numpy(),
                  "output_bias": batch.target_items.numpy()}
    assert batch.target_items.numel() < 80
    for name, rows in moved_rows.items():
        weight = model.get_parameter(name).detach()
        changed = np.flatnonzero((weight != before[name]).reshape(num_items, -1).any(dim=1).numpy())
        assert set(changed) <= set(rows) and len(changed) > 0, name
        grad = model.get_parameter(name).grad  # kept until the next step's zero_grad
        assert grad.layout == torch.sparse_coo and set(touched_rows(grad)[0].tolist()) <= set(rows), name
