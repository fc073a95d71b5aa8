"""Run folders, which run ``--resume`` picks, atomic writes, and the checkpoint identity (no Spark, no training)."""
from __future__ import annotations

import os
import time

import pytest
import torch

from recoder_dist import checkpoint
from recoder_dist.checkpoint import ResumeError
from recoder_dist.config import load_config
from recoder_dist.trainer import run_identity

MANIFEST = {"source": {"fingerprint": "f" * 64}, "created_at": "2026-12-01T00:00:00+00:00"}


def a_run(root, epoch: int = 1, finished: bool = False, age: float = 0.0):
    """A run folder with a ``last.pt`` written ``age`` seconds ago."""
    run_dir = checkpoint.new_run_dir(root)
    checkpoint.save(run_dir / checkpoint.LAST, {"epoch": epoch})
    stamp = time.time() - age
    os.utime(run_dir / checkpoint.LAST, (stamp, stamp))
    if finished:
        checkpoint.mark_finished(run_dir, {"epochs": epoch, "best_epoch": epoch})
    return run_dir


def test_every_run_gets_a_folder_of_its_own(tmp_path):
    folders = {checkpoint.new_run_dir(tmp_path) for _ in range(20)}
    assert len(folders) == 20 and all(f.parent == tmp_path and f.is_dir() for f in folders)


def test_resume_picks_the_latest_unfinished_idle_run(tmp_path):
    older = a_run(tmp_path, age=300)
    newer = a_run(tmp_path, age=200)
    a_run(tmp_path, finished=True, age=100)  # the newest, but finished
    assert checkpoint.resume_target(tmp_path) == newer
    with checkpoint.hold(newer):  # a live run holds it: the next one is picked
        assert checkpoint.resume_target(tmp_path) == older
    assert checkpoint.resume_target(tmp_path) == newer


def test_resume_without_any_run_starts_afresh(tmp_path):
    assert checkpoint.resume_target(tmp_path / "missing") is None
    checkpoint.new_run_dir(tmp_path)  # a run killed before its first checkpoint
    assert checkpoint.resume_target(tmp_path) is None


def test_resume_refuses_when_every_run_is_finished_or_live(tmp_path):
    done = a_run(tmp_path, finished=True, age=100)
    live = a_run(tmp_path)
    with checkpoint.hold(live), pytest.raises(ResumeError) as refused:
        checkpoint.resume_target(tmp_path)
    message = str(refused.value)
    assert f"no unfinished run to continue in {tmp_path}: 1 finished ({done.name}), 1 still running" in message
    assert "--resume continues only unfinished runs; to train more, start a new run" in message


def test_resume_from_a_finished_live_or_empty_folder_is_refused(tmp_path):
    done = a_run(tmp_path, epoch=3, finished=True)
    with pytest.raises(ResumeError, match=f"{done} is a finished run \\(trained 3 epochs, finished 20"):
        checkpoint.resume_target(tmp_path, done)
    live = a_run(tmp_path)
    with checkpoint.hold(live), pytest.raises(ResumeError, match=f"{live} is in use by a training run that is still "
                                                                 f"alive \\(pid {os.getpid()} on "):
        checkpoint.resume_target(tmp_path, live)
    with pytest.raises(ResumeError, match="no last.pt there"):
        checkpoint.resume_target(tmp_path, checkpoint.new_run_dir(tmp_path))
    assert checkpoint.resume_target(tmp_path, live / checkpoint.LAST) == live  # its last.pt names it too


def test_a_failed_save_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    path = tmp_path / checkpoint.LAST
    checkpoint.save(path, {"epoch": 1, "weights": torch.ones(1000)})

    def torn(state, target):
        with open(target, "wb") as handle:
            handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, {"epoch": 2, "weights": torch.zeros(1000)})
    state = checkpoint.load(path)
    assert state["epoch"] == 1 and torch.equal(state["weights"], torch.ones(1000))
    assert [p.name for p in tmp_path.iterdir()] == [checkpoint.LAST]  # the torn temporary file is gone


def identity(*overrides: str, ranks: int = 2) -> dict:
    return run_identity(load_config(None, list(overrides)), MANIFEST, ranks)


@pytest.mark.parametrize("override", ["train.threads=3", "train.reader_pool=process", "train.reader_pool_size=5",
                                      "train.eval_every=4", "train.eval_batch_size=17", "train.epochs=7",
                                      "train.checkpoint_dir=elsewhere"])
def test_settings_that_cannot_change_the_weights_are_not_identity(override):
    assert identity(override) == identity()


@pytest.mark.parametrize("override", ["train.lr=0.5", "train.batch_size=50", "train.seed=5", "train.loss=multinomial",
                                      "train.num_sampling_users=400", "train.num_neg_samples=3", "train.full=true",
                                      "train.milestones=[1]", "train.gamma=0.5", "train.weight_decay=0.1",
                                      "train.grad_exchange=sync_union", "train.dtype=bfloat16",
                                      "model.hidden_sizes=[8]", "model.input_dropout=0.1"])
def test_settings_that_change_the_optimisation_are_identity(override):
    assert identity(override) != identity()


def test_the_ranks_and_the_global_batch_are_identity():
    two, one = identity("train.batch_size=50"), identity("train.batch_size=50", ranks=1)
    assert (two["ranks"], two["global_batch"]) == (2, 100) and (one["ranks"], one["global_batch"]) == (1, 50)
    assert identity("train.batch_size=100", ranks=1)["global_batch"] == two["global_batch"]
    assert identity("train.batch_size=100", ranks=1) != two  # the same global batch on other ranks: other shards
