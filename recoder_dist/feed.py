"""Reading prepared splits: the train split streamed with Petastorm, held-out splits whole.

Petastorm's ``make_batch_reader`` refuses ragged list columns, so a module-level transform
packs each row group's users into one CSR record of raw bytes (user ids, list lengths, items,
values) and :func:`_unpack` decodes it with ``np.frombuffer``: Petastorm then converts one
record per row group instead of one per user. Petastorm shards by row group
(``cur_shard``/``shard_count``) and permutes this rank's row groups once per reader (seeded),
then repeats that order on every pass. The trainer keeps one reader for the whole run (a reader
per epoch made epochs ~1.5× slower: start, shutdown and a refilled buffer each time), so what
changes from epoch to epoch is the shuffle buffer's mixing: users of the row groups that share
the buffer (a few groups of the default's size; within one group when groups are larger than
the buffer), across pass boundaries too.
"""
from __future__ import annotations

import queue
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, TypeVar

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.manifest import local_path
from recoder_dist.csr import offsets_of, take_rows
from recoder_dist.sampling import UserRows

if TYPE_CHECKING:
    import pandas

T = TypeVar("T")
# petastorm 0.13 still uses pyarrow's legacy dataset API; its deprecation warnings are noise here
warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm\.")
TRAIN_FIELDS = ("user_idx", "items", "values")


def pack_row_group(frame: "pandas.DataFrame") -> "pandas.DataFrame":
    """Petastorm transform: a row group's users as one record of raw bytes (module level for
    process pools): ``user_idx`` int64, ``lengths`` int64, ``items`` int32, ``values`` float32."""
    import numpy  # the process pool pickles this function by reference
    import pandas
    items, values = frame["items"].to_numpy(), frame["values"].to_numpy()
    lengths = numpy.fromiter(map(len, items), dtype=numpy.int64, count=len(items))
    flat_items = numpy.concatenate([numpy.zeros(0, numpy.int32), *items]).astype(numpy.int32, copy=False)
    flat_values = numpy.concatenate([numpy.zeros(0, numpy.float32), *values]).astype(numpy.float32, copy=False)
    return pandas.DataFrame({"user_idx": [frame["user_idx"].to_numpy(numpy.int64).tobytes()],
                             "lengths": [lengths.tobytes()], "items": [flat_items.tobytes()],
                             "values": [flat_values.tobytes()]})


PACKED_FIELDS = [(name, np.bytes_, (), False) for name in ("user_idx", "lengths", "items", "values")]


def _unpack(batch) -> UserRows:
    """The packed record(s) of one Petastorm read as CSR ``UserRows``."""
    def column(name: str, dtype: type) -> np.ndarray:
        return np.frombuffer(b"".join(getattr(batch, name)), dtype=dtype)

    return UserRows(column("user_idx", np.int64), offsets_of(column("lengths", np.int64)), column("items", np.int32),
                    column("values", np.float32))


def split_url(data_dir: str | Path, split: str) -> str:
    """``file://`` URL of a split of a local dataset folder (Petastorm wants URLs)."""
    return f"file://{(local_path(data_dir) / split).resolve()}"


def train_rows(data_dir: str | Path, rank: int, size: int, seed: int, num_sampling_users: int,
               shuffle_buffer_users: int, reader_pool: str = "thread",
               reader_pool_size: int = 2) -> Iterator[UserRows]:
    """An endless, shuffled stream of this rank's train users, ``num_sampling_users`` at a time
    (one sampling group each: ``sampling.make_batches``).

    ``reader_pool`` (thread | process) and ``reader_pool_size`` are Petastorm's reader pool.

    Reads with ``num_epochs=None`` (a finite reader occasionally returns no rows under a
    thread race) so the caller decides how many steps an epoch has; every rank must take
    the same number.
    """
    from petastorm import make_batch_reader
    from petastorm.transform import TransformSpec

    spec = TransformSpec(pack_row_group, edit_fields=PACKED_FIELDS)
    rng = np.random.default_rng(seed)
    with make_batch_reader(split_url(data_dir, "train"), schema_fields=list(TRAIN_FIELDS),
                           cur_shard=rank if size > 1 else None, shard_count=size if size > 1 else None,
                           shuffle_row_groups=True, seed=seed, num_epochs=None, transform_spec=spec,
                           reader_pool_type=reader_pool, workers_count=reader_pool_size) as reader:
        buffer: list[UserRows] = []
        buffered = 0
        for batch in reader:
            rows = _unpack(batch)
            buffer.append(rows)
            buffered += len(rows)
            if buffered < shuffle_buffer_users:
                continue
            buffered_rows = UserRows.concat(buffer)
            mixed = buffered_rows.take(rng.permutation(len(buffered_rows)))
            whole = len(mixed) // num_sampling_users * num_sampling_users
            for start in range(0, whole, num_sampling_users):
                yield mixed.slice(start, start + num_sampling_users)
            rest = mixed.slice(whole, len(mixed))
            buffer, buffered = ([rest], len(rest)) if len(rest) else ([], 0)


def prefetch(source: Iterator[T], depth: int) -> Iterator[T]:
    """Run ``source`` in a background thread, ``depth`` items ahead (reading overlaps compute).

    Closing the returned generator stops the thread; an exception in ``source`` is re-raised.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    break
            items.put(done)
        except BaseException as error:  # handed to the consumer
            items.put(error)
        finally:
            close = getattr(source, "close", None)
            if close:
                close()

    thread = threading.Thread(target=work, name="recoder-feed", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                items.get(timeout=0.1)
            except queue.Empty:
                pass


@dataclass(frozen=True)
class HeldoutRows:
    """Validation/test users: fold-in interactions (the input) and held-out items (to predict)."""

    foldin: UserRows
    heldout_offsets: np.ndarray
    heldout_items: np.ndarray

    def __len__(self) -> int:
        return len(self.foldin)

    def shard(self, rank: int, size: int) -> "HeldoutRows":
        """Every ``size``-th user starting at ``rank`` (evaluation is split by row, not row group)."""
        pick = np.arange(rank, len(self), size)
        return self.take(pick)

    def take(self, pick: np.ndarray) -> "HeldoutRows":
        """The users at positions ``pick``."""
        heldout_offsets, index = take_rows(self.heldout_offsets, pick)
        return HeldoutRows(self.foldin.take(pick), heldout_offsets, self.heldout_items[index])


def read_heldout(data_dir: str | Path, split: str) -> HeldoutRows:
    """A whole validation/test split with pyarrow (small; row counts checked, no thread races)."""
    path = local_path(data_dir) / split
    table = pq.read_table(path, columns=["user_idx", "items", "values", "heldout_items"])

    def csr(column: str) -> tuple[np.ndarray, np.ndarray]:
        array = table[column].combine_chunks()
        lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
        return offsets_of(lengths), pc.list_flatten(array).to_numpy(zero_copy_only=False)

    offsets, items = csr("items")
    _, values = csr("values")
    heldout_offsets, heldout_items = csr("heldout_items")
    user_idx = table["user_idx"].to_numpy()
    return HeldoutRows(UserRows(user_idx, offsets, items, values), heldout_offsets,
                       heldout_items.astype(np.int64))
