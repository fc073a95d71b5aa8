"""Early stopping (``train.patience``) in real training runs on the small prepared dataset.

The learning rate drops to 0 at a milestone (``gamma=0``): from then on the weights, and so the
validation metrics, stay exactly as they were, and no later evaluation can beat the best one. So
a run must stop ``patience`` evaluations after its best epoch, wherever that falls."""
import pyarrow.parquet as pq
import pytest
import torch
from _data import GLOBAL_BATCH, TRAIN, prepared_dataset, train

from recoder_dist import checkpoint, trainer
from recoder_dist.config import load_config
from recoder_dist.distributed import Workers

FROZEN_AFTER = ["train.lr_schedule=step", "train.milestones=[3]", "train.gamma=0.0"]  # epochs 1-3 learn


@pytest.fixture(scope="module")
def data(spark, tmp_path_factory):
    return prepared_dataset(spark, tmp_path_factory.getbasetemp())


def one_rank() -> Workers:
    return Workers(rank=0, size=1, local_rank=0, local_size=1)


def fit(data, folder, *overrides: str, **kwargs) -> trainer.TrainResult:
    config = load_config(None, [*TRAIN, f"train.batch_size={GLOBAL_BATCH}", f"train.checkpoint_dir={folder}",
                                *FROZEN_AFTER, *overrides])
    return trainer.fit(config, str(data), one_rank(), **kwargs)


def best_of(history: list[dict]) -> dict:
    """The first record with the highest validation NDCG@100."""
    evaluated = [h for h in history if "val_ndcg_at_100" in h]
    return max(evaluated, key=lambda h: (h["val_ndcg_at_100"], -h["epoch"]))


@pytest.fixture(scope="module")
def stopped(data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("early-stop")
    return folder, fit(data, folder, "train.epochs=12", "train.patience=2")


def test_it_stops_patience_evaluations_after_the_best_epoch(stopped):
    _, result = stopped
    best = best_of(result.history)
    assert result.best_epoch == best["epoch"] <= 3  # nothing changes after epoch 3
    assert result.stopped_early and result.epochs == result.best_epoch + 2 < 12
    assert [h["epoch"] for h in result.history] == list(range(1, result.epochs + 1))


def test_it_keeps_the_best_epoch(stopped, data):
    folder, result = stopped
    best = checkpoint.load(result.best_checkpoint)
    assert best["epoch"] == result.best_epoch
    assert best["validation"] == result.best_validation == {k: best_of(result.history)[f"val_{k}"]
                                                             for k in result.best_validation}
    # the test metrics are those of the best weights
    model = trainer.build_model(best["num_items"], load_config(None, [*TRAIN]))
    model.load_state_dict(best["model"])
    from recoder_dist.evaluation import means, metric_sums, model_scorer
    from recoder_dist.feed import read_heldout
    test = means(metric_sums(model_scorer(model), read_heldout(str(data), "test"), 500, torch.device("cpu")))
    assert test == pytest.approx(result.test)
    # fit hands back those very weights with the dataset's item ids: what tracking logs and registers
    assert result.model.settings == load_config(None, [*TRAIN]).model
    returned = result.model.network.state_dict()
    assert returned.keys() == best["model"].keys()
    for name, tensor in best["model"].items():
        assert torch.equal(returned[name], tensor), name
    items = pq.read_table(data / "items").to_pandas().sort_values("item_idx")
    assert result.model.items.ids.tolist() == items["item_id"].tolist()
    assert result.model.items.counts.tolist() == items["count"].tolist()


def test_patience_zero_trains_every_epoch(data, tmp_path):
    result = fit(data, tmp_path, "train.epochs=6", "train.patience=0")
    assert not result.stopped_early and result.epochs == 6 and len(result.history) == 6


def test_a_resumed_run_keeps_counting_from_its_checkpoint(data, tmp_path, stopped):
    """Killed after epoch 4 (one evaluation past the best already counted), resumed: it stops
    where the uninterrupted run stopped, not ``patience`` evaluations after the resume."""
    _, reference = stopped

    def stop_after_4(epoch, model, record) -> None:
        if epoch == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(data, tmp_path, "train.epochs=12", "train.patience=2", on_epoch_end=stop_after_4)
    [last] = tmp_path.glob(f"*/{checkpoint.LAST}")  # the run's own folder under train.checkpoint_dir
    assert checkpoint.load(last)["epoch"] == 4
    trained = []
    result = fit(data, tmp_path, "train.epochs=12", "train.patience=2", resume=True,
                 on_epoch_end=lambda epoch, model, record: trained.append(epoch))
    assert result.stopped_early and result.epochs == reference.epochs
    assert trained == list(range(5, reference.epochs + 1))  # possibly none: it may have stopped already
    assert result.best_epoch == reference.best_epoch


def test_every_rank_stops_after_the_same_epoch(data, tmp_path_factory):
    run = train(2, data, tmp_path_factory.getbasetemp(), "early-stop",
                ["train.epochs=12", "train.patience=2", *FROZEN_AFTER])
    results = [r["result"] for r in run.reports]
    assert results[0]["stopped_early"] and results[0]["epochs"] < 12
    assert results[0]["epochs"] == results[1]["epochs"] == results[0]["best_epoch"] + 2
    assert run.reports[0]["digests"] == run.reports[1]["digests"]  # the same epochs, in step
    assert list(run.reports[0]["digests"]) == [str(e) for e in range(1, results[0]["epochs"] + 1)]
