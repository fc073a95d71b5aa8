"""The Petastorm train stream on a small prepared dataset, the prefetch thread, held-out reads."""
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from _data import prepared_dataset, train_table

from recoder_dist.feed import HeldoutRows, prefetch, read_heldout, train_rows

CHUNK = 64  # does not divide the shards' sizes: the stream must still cut exact chunks
BUFFER = 256


@pytest.fixture(scope="module")
def data(spark, tmp_path_factory) -> Path:
    return prepared_dataset(spark, tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def table(data):
    return train_table(data)


def expected_shard(data: Path, rank: int, size: int) -> set[int]:
    """Users of the row groups Petastorm gives ``rank``: group ``i`` of the sorted files goes to
    rank ``i % size`` (the prepare job writes one row group per file)."""
    files = sorted((data / "train").glob("*.parquet"))
    assert all(pq.ParquetFile(f).num_row_groups == 1 for f in files)
    return {int(u) for f in files[rank::size] for u in pq.read_table(f, columns=["user_idx"])["user_idx"].to_pylist()}


def read_stream(data: Path, rank: int, size: int, users: int, seed: int = 3) -> list:
    """Chunks of the endless stream until at least ``users`` users were read."""
    chunks, seen = [], 0
    for chunk in train_rows(data, rank, size, seed=seed, num_sampling_users=CHUNK,
                            shuffle_buffer_users=BUFFER, reader_pool="thread", reader_pool_size=2):
        chunks.append(chunk)
        seen += len(chunk)
        if seen >= users:
            break
    return chunks


@pytest.mark.parametrize("rank,size", [(0, 1), (0, 2), (1, 2)])
def test_stream_covers_the_shard_in_exact_chunks_decoded_exactly(data, table, rank, size):
    shard = expected_shard(data, rank, size)
    # two passes plus the shuffle buffer: every user of the shard must have come out by then
    chunks = read_stream(data, rank, size, users=2 * len(shard) + BUFFER + CHUNK)
    assert all(len(chunk) == CHUNK for chunk in chunks)
    seen = np.concatenate([chunk.user_idx for chunk in chunks])
    assert set(seen.tolist()) == shard
    for chunk in chunks:
        assert chunk.offsets[0] == 0 and chunk.offsets[-1] == len(chunk.items)
        for i, user in enumerate(chunk.user_idx.tolist()):
            items, values = table[user]
            lo, hi = chunk.offsets[i], chunk.offsets[i + 1]
            np.testing.assert_array_equal(chunk.items[lo:hi], items)
            np.testing.assert_array_equal(chunk.values[lo:hi], values)


def test_two_shards_are_disjoint_cover_train_and_are_balanced(data, table):
    shards = [expected_shard(data, rank, 2) for rank in range(2)]
    assert not shards[0] & shards[1]
    assert shards[0] | shards[1] == set(table)
    largest_group = max(pq.ParquetFile(f).metadata.num_rows for f in (data / "train").glob("*.parquet"))
    assert abs(len(shards[0]) - len(shards[1])) <= largest_group
    # and the stream agrees with the expected shards (checked per rank above): what rank 0 reads
    # is never a rank 1 user
    chunks = read_stream(data, 0, 2, users=len(shards[0]))
    assert not set(np.concatenate([c.user_idx for c in chunks]).tolist()) & shards[1]


def test_a_buffer_of_one_shard_gives_one_pass_of_distinct_users(data, table):
    """What the trainer relies on (it caps the buffer at a rank's share): an epoch's chunks come
    from one pass, so no user repeats before every user was seen."""
    n = len(table)
    chunks = []
    for chunk in train_rows(data, 0, 1, seed=5, num_sampling_users=CHUNK, shuffle_buffer_users=n):
        chunks.append(chunk)
        if len(chunks) == n // CHUNK:
            break
    users = np.concatenate([c.user_idx for c in chunks])
    assert len(users) == n // CHUNK * CHUNK and len(set(users.tolist())) == len(users)


def test_stream_order_depends_on_seed(data):
    first = [np.concatenate([c.user_idx for c in read_stream(data, 0, 1, users=4 * CHUNK, seed=s)])
             for s in (1, 2)]
    assert not np.array_equal(first[0], first[1])


# --- prefetch -------------------------------------------------------------------------------

def _feed_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "recoder-feed" and t.is_alive()]


def _wait_no_feed_threads(timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while _feed_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    return not _feed_threads()


def test_prefetch_passes_items_in_order():
    assert list(prefetch(iter(range(200)), depth=3)) == list(range(200))
    assert _wait_no_feed_threads()


def test_prefetch_reraises_the_source_exception():
    def source():
        yield 1
        yield 2
        raise RuntimeError("reader broke on row group 7")

    stream = prefetch(source(), depth=4)
    assert next(stream) == 1 and next(stream) == 2
    with pytest.raises(RuntimeError, match="row group 7"):
        next(stream)
    assert _wait_no_feed_threads()


def test_prefetch_close_stops_the_thread_and_closes_the_source():
    closed = threading.Event()
    produced = []

    def endless():
        try:
            i = 0
            while True:
                produced.append(i)
                yield i
                i += 1
        finally:
            closed.set()

    stream = prefetch(endless(), depth=2)
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    assert _feed_threads()
    stream.close()
    assert not _feed_threads()  # close() returns only once the thread has ended
    assert closed.is_set()
    count = len(produced)
    time.sleep(0.2)
    assert len(produced) == count  # nothing runs ahead any more


# --- held-out splits ------------------------------------------------------------------------

def _lists(rows: HeldoutRows) -> dict[int, tuple[list, list, list]]:
    f = rows.foldin
    return {int(u): (f.items[f.offsets[i]:f.offsets[i + 1]].tolist(), f.values[f.offsets[i]:f.offsets[i + 1]].tolist(),
                     rows.heldout_items[rows.heldout_offsets[i]:rows.heldout_offsets[i + 1]].tolist())
            for i, u in enumerate(f.user_idx)}


@pytest.mark.parametrize("split", ["validation", "test"])
def test_read_heldout_matches_the_parquet(data, split):
    rows = read_heldout(data, split)
    frame = pq.read_table(data / split).to_pydict()
    assert len(rows) == len(frame["user_idx"]) > 0
    assert rows.heldout_items.dtype == np.int64
    expected = {u: (list(i), [float(x) for x in v], list(h))
                for u, i, v, h in zip(frame["user_idx"], frame["items"], frame["values"], frame["heldout_items"])}
    assert _lists(rows) == expected
    assert read_heldout(f"file://{data}", split).foldin.user_idx.tolist() == rows.foldin.user_idx.tolist()


def test_heldout_shard_and_take(data):
    rows = read_heldout(data, "validation")
    whole = _lists(rows)
    shards = [rows.shard(rank, 3) for rank in range(3)]
    assert sum(len(s) for s in shards) == len(rows)
    assert [len(s) for s in shards] == [len(range(r, len(rows), 3)) for r in range(3)]
    merged = {}
    for s in shards:
        part = _lists(s)
        assert not merged.keys() & part.keys()
        merged.update(part)
    assert merged == whole
    pick = np.array([len(rows) - 1, 0, 2])
    taken = rows.take(pick)
    assert taken.foldin.user_idx.tolist() == rows.foldin.user_idx[pick].tolist()
    assert _lists(taken) == {u: whole[u] for u in taken.foldin.user_idx.tolist()}
    assert len(rows.take(np.array([], dtype=np.int64))) == 0
