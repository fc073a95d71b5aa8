"""``trainer.fit`` in this very process (one rank, no Horovod): how it treats its reader."""
import threading

import pytest
from _data import GLOBAL_BATCH, TRAIN, prepared_dataset

from recoder_dist.config import load_config
from recoder_dist.distributed import Workers
from recoder_dist.trainer import fit


@pytest.fixture(scope="module")
def data(spark, tmp_path_factory):
    return prepared_dataset(spark, tmp_path_factory.getbasetemp())


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
        fit(config, str(data), Workers(rank=0, size=1, local_rank=0, local_size=1), on_epoch_end=fail_after_first)
    assert epochs_seen == [1]
    # ``raised`` keeps the traceback, and with it fit's frame, alive: only fit itself can have
    # stopped the threads (tqdm keeps one monitor thread per process, by design)
    started = [t.name for t in threading.enumerate() if t not in before and t.name != "tqdm_monitor"]
    assert started == [], f"threads fit left running: {started}"
    assert raised.traceback
