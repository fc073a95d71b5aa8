"""Kill a ``horovodrun -np 2`` training run after its first checkpoint, resume it, compare it
with an uninterrupted run; refuse to resume a checkpoint written with other settings."""
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from _data import GLOBAL_BATCH, ROOT, TRAIN, command, environment, prepared_dataset, train

from recoder_dist import checkpoint

RANKS = 2
EPOCHS = int(next(o for o in TRAIN if o.startswith("train.epochs=")).split("=")[1])


@pytest.fixture(scope="module")
def data(spark, tmp_path_factory):
    return prepared_dataset(spark, tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted run (the same one the Horovod trainer contract checks)."""
    return train(RANKS, data, tmp_path_factory.getbasetemp(), "contract")


def _kill_after_first_checkpoint(args: list[str], checkpoint_dir, log_path, timeout: float = 180) -> None:
    """Start ``args`` in a new session, wait for ``last.pt``, kill the whole job (SIGKILL)."""
    last = checkpoint_dir / checkpoint.LAST
    with open(log_path, "w") as log:
        job = subprocess.Popen(args, cwd=ROOT, env=environment(RANKS), stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not last.exists():
            assert job.poll() is None, f"training ended ({job.returncode}) before a checkpoint:\n" \
                                       f"{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.02)
    finally:
        ranks = psutil.Process(job.pid).children(recursive=True) if job.poll() is None else []
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)  # horovodrun and what shares its process group
        job.wait()
        # horovodrun puts each rank in a session of its own and stops them when it dies; make sure
        _, alive = psutil.wait_procs(ranks, timeout=15)
        for process in alive:
            process.kill()
        psutil.wait_procs(alive, timeout=5)


@pytest.fixture(scope="module")
def interrupted(data, tmp_path_factory):
    """Checkpoint folder and last state of a run killed after its first checkpoint."""
    base = tmp_path_factory.getbasetemp()
    out, checkpoint_dir = base / "run-interrupted", base / "resume-checkpoints"
    out.mkdir()
    overrides = [*TRAIN, f"train.batch_size={GLOBAL_BATCH // RANKS}", f"train.checkpoint_dir={checkpoint_dir}"]
    _kill_after_first_checkpoint(command(RANKS, data, out, overrides), checkpoint_dir, base / "interrupted.log")
    state = checkpoint.load(checkpoint_dir / checkpoint.LAST)
    assert not (out / "rank-0.json").exists(), "the run finished before it was killed"
    return checkpoint_dir, state


@pytest.fixture(scope="module")
def resumed(data, tmp_path_factory, interrupted):
    checkpoint_dir, _ = interrupted
    return train(RANKS, data, tmp_path_factory.getbasetemp(), "resumed", resume=True, checkpoint_dir=checkpoint_dir)


def test_killed_mid_run(interrupted):
    _, state = interrupted
    assert 1 <= state["epoch"] < EPOCHS
    assert [h["epoch"] for h in state["history"]] == list(range(1, state["epoch"] + 1))


def test_resumed_run_ends_where_an_uninterrupted_one_does(resumed, reference, interrupted):
    _, state = interrupted
    result, expected = resumed.root["result"], reference.root["result"]
    assert result["epochs"] == expected["epochs"] == EPOCHS
    assert [h["epoch"] for h in result["history"]] == list(range(1, EPOCHS + 1))
    assert result["history"][:state["epoch"]] == state["history"]  # the killed run's epochs, kept
    # only the epochs after the checkpoint were trained again, in step on both ranks
    digests = [r["digests"] for r in resumed.reports]
    assert list(digests[0]) == [str(e) for e in range(state["epoch"] + 1, EPOCHS + 1)]
    assert digests[0] == digests[1]
    assert result["steps_per_epoch"] == expected["steps_per_epoch"]


def test_resumed_metrics_match_within_noise(resumed, reference):
    result, expected = resumed.root["result"], reference.root["result"]
    final, final_expected = result["history"][-1], expected["history"][-1]
    assert abs(final["val_ndcg_at_100"] - final_expected["val_ndcg_at_100"]) < 0.05
    assert abs(final["train_loss"] - final_expected["train_loss"]) / final_expected["train_loss"] < 0.05
    assert abs(result["test"]["ndcg_at_100"] - expected["test"]["ndcg_at_100"]) < 0.05


def test_resume_with_other_settings_fails_clearly(data, interrupted, resumed):
    checkpoint_dir, _ = interrupted
    saved = torch.load(checkpoint_dir / checkpoint.LAST, weights_only=True)["epoch"]
    args = [sys.executable, "-m", "recoder_dist.train", "--data", str(data), "--resume", *TRAIN,
            f"train.batch_size={GLOBAL_BATCH // RANKS}", f"train.checkpoint_dir={checkpoint_dir}", "train.lr=0.02"]
    done = subprocess.run(args, cwd=ROOT, env=environment(1), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "was written for other data or settings" in done.stderr
    assert "train.lr: 0.01 in the checkpoint, 0.02 now" in done.stderr
    assert torch.load(checkpoint_dir / checkpoint.LAST, weights_only=True)["epoch"] == saved  # left alone
