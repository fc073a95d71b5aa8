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
