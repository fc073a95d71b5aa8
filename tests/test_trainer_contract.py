"""One behavioural contract for the trainer, held by one process, by ``horovodrun -np 2``, by
``torchrun --nproc-per-node 2`` and by two single-rank torchrun nodes rendezvousing on loopback.

Each class below runs ``trainer.fit`` once (through ``tests/_train_worker.py``, in a subprocess)
on the session's small synthetic dataset and inherits the same assertions, in the spirit of
implicit's model test mixins. The two-rank classes use half the per-rank batch, so every run
takes the same global batch and the same number of steps per epoch.
"""
import math

import pytest
import torch
from _data import GLOBAL_BATCH, Run, item_counts, prepared_dataset, run_folder, train

from pipeline.manifest import read_manifest
from recoder_dist import checkpoint
from recoder_dist.evaluation import means, metric_sums, popularity_scorer
from recoder_dist.feed import read_heldout
from recoder_dist.trainer import steps_per_epoch


@pytest.fixture(scope="module")
def data(spark, tmp_path_factory):
    return prepared_dataset(spark, tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def popularity(data) -> dict:
    """Validation metrics of the popularity baseline (training counts from ``<data>/items``)."""
    return means(metric_sums(popularity_scorer(item_counts(data)), read_heldout(data, "validation"), 500))


class TrainerContract:
    """What every way of running the trainer must do; subclasses set ``ranks``, ``launcher``
    (``tests/_data.py``'s :func:`launch`) and ``extra``."""

    ranks = 1
    launcher = "horovodrun"
    extra: tuple = ()

    @pytest.fixture(scope="class")
    def run(self, data, tmp_path_factory) -> Run:
        return train(self.ranks, data, tmp_path_factory.getbasetemp(), "contract", self.extra,
                     launcher=self.launcher)

    def test_every_rank_reports_every_epoch(self, run):
        assert [(r["rank"], r["size"]) for r in run.reports] == [(i, self.ranks) for i in range(self.ranks)]
        history = run.root["result"]["history"]
        epochs = run.root["result"]["epochs"]
        assert [h["epoch"] for h in history] == list(range(1, epochs + 1))
        assert all(math.isfinite(h["train_loss"]) and h["users_per_s"] > 0 for h in history)

    def test_loss_falls_over_epochs(self, run):
        losses = [h["train_loss"] for h in run.root["result"]["history"]]
        assert losses[-1] < losses[0]
        assert min(losses[1:]) < losses[0]

    def test_ranks_hold_identical_weights(self, run):
        digests = [r["digests"] for r in run.reports]
        assert len(digests[0]) == run.root["result"]["epochs"]
        assert all(d == digests[0] for d in digests), "ranks diverged"
        assert len(set(digests[0].values())) == len(digests[0]), "weights did not change between epochs"

    def test_validation_beats_popularity(self, run, popularity):
        best = run.root["result"]["best_validation"]
        for metric in ("recall_at_20", "recall_at_50", "ndcg_at_100"):
            assert best[metric] > popularity[metric] * 1.1, (metric, best[metric], popularity[metric])
        test = run.root["result"]["test"]
        assert all(0 < test[m] <= 1 for m in ("recall_at_20", "recall_at_50", "ndcg_at_100"))

    def test_steps_per_epoch_follow_the_global_batch(self, run, data):
        n_train = read_manifest(data)["num_users"]["train"]
        steps = run.root["result"]["steps_per_epoch"]
        assert steps == steps_per_epoch(n_train, run.batch_size, self.ranks) == math.ceil(n_train / GLOBAL_BATCH)
        for record in run.root["result"]["history"]:  # users trained per epoch, all ranks together
            assert round(record["users_per_s"] * record["epoch_s"]) == steps * GLOBAL_BATCH


class TestOneProcess(TrainerContract):
    ranks = 1


class TestOneProcessDenseAdam(TrainerContract):
    ranks = 1
    extra = ("train.item_optimizer=adam",)


class TestOneProcessVariationalLogQ(TrainerContract):
    """The Mult-VAE option (a sampled latent, the annealed KL term) with the batch union's logQ
    correction, under the multinomial likelihood both were made for (Liang et al. 2018; a sampled
    softmax): the same contract as the plain model."""
    ranks = 1
    extra = ("model.hidden_sizes=[64,32]", "model.variational=true", "train.kl_anneal_steps=20",
             "train.logq_correction=true", "train.loss=multinomial")


class TestHorovodDense(TrainerContract):
    ranks = 2


class TestHorovodSparse(TrainerContract):
    ranks = 2
    extra = ("train.grad_exchange=sparse",)


class TestHorovodSyncUnion(TrainerContract):
    ranks = 2
    extra = ("train.grad_exchange=sync_union",)


class TestTorchrun(TrainerContract):
    ranks = 2
    launcher = "torchrun"


class TestTorchrunTwoNodesSyncUnion(TrainerContract):
    ranks = 2
    launcher = "torchrun-nodes"
    extra = ("train.grad_exchange=sync_union",)


class TestHorovodDenseAdam(TrainerContract):
    ranks = 2
    extra = ("train.item_optimizer=adam",)


class TestHorovodDenseAdamSyncUnion(TrainerContract):
    ranks = 2
    extra = ("train.item_optimizer=adam", "train.grad_exchange=sync_union")


def test_one_process_and_horovod_agree_on_the_epoch(data, tmp_path_factory):
    """Same global batch, same steps and users per epoch, whether 1 × 100 or 2 × 50 users."""
    base = tmp_path_factory.getbasetemp()
    one, two = train(1, data, base, "contract"), train(2, data, base, "contract")
    assert one.batch_size == 2 * two.batch_size
    assert one.root["result"]["steps_per_epoch"] == two.root["result"]["steps_per_epoch"]
    users = [[round(h["users_per_s"] * h["epoch_s"]) for h in r.root["result"]["history"]] for r in (one, two)]
    assert users[0] == users[1]


def test_torchrun_trains_exactly_as_horovodrun(data, tmp_path_factory):
    """Same ranks, seeds and settings: torch.distributed and Horovod give the same weights after
    every epoch, the same records and the same best checkpoint, bit for bit (two ranks sum in
    either order; both average by halving)."""
    base = tmp_path_factory.getbasetemp()
    horovod, torchrun = train(2, data, base, "contract"), train(2, data, base, "contract", launcher="torchrun")
    assert torchrun.root["digests"] == horovod.root["digests"]
    assert torchrun.root["result"]["steps_per_epoch"] == horovod.root["result"]["steps_per_epoch"]
    timing = {"users_per_s", "epoch_s"}
    assert [{k: v for k, v in h.items() if k not in timing} for h in torchrun.root["result"]["history"]] == \
        [{k: v for k, v in h.items() if k not in timing} for h in horovod.root["result"]["history"]]
    assert torchrun.root["result"]["test"] == horovod.root["result"]["test"]
    best = [checkpoint.load(run_folder(run.checkpoint_dir) / checkpoint.BEST) for run in (horovod, torchrun)]
    assert best[0]["epoch"] == best[1]["epoch"]
    assert best[0]["model"].keys() == best[1]["model"].keys()
    assert all(torch.equal(best[0]["model"][k], best[1]["model"][k]) for k in best[0]["model"])
