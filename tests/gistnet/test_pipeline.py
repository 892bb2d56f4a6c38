"""gistnet.pipeline: reading ahead and writing behind in threads, in order, within bounds,
with every error reaching the caller and no thread left running."""

from __future__ import annotations

import threading
import time

import pytest

from gistnet.pipeline import BackgroundWriter, prefetched


def _threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


def test_prefetched_yields_in_order_and_runs_ahead_only_within_its_budget():
    made = []

    def source():
        for i in range(50):
            made.append(i)
            yield i

    seen = []
    for item in prefetched(source(), budget=12, size=lambda i: 3):  # 4 items of 3 ahead
        time.sleep(0.002)  # a slow consumer: the producer fills the budget and waits
        seen.append(item)
        # made: what was read; seen: what was taken; the rest waits (+1 in the producer's hand)
        assert len(made) - len(seen) <= 4 + 1
    assert seen == list(range(50))
    assert not _threads("gistnet-prefetch")


def test_one_item_larger_than_the_budget_still_passes_alone():
    assert list(prefetched(iter([5, 100, 7]), budget=10, size=lambda i: i)) == [5, 100, 7]


def test_the_producers_error_reaches_the_consumer_after_the_items_before_it():
    def source():
        yield 1
        yield 2
        raise OSError("disk gone")

    seen = []
    with pytest.raises(OSError, match="disk gone"):
        for item in prefetched(source(), budget=8):
            seen.append(item)
    assert seen == [1, 2] and not _threads("gistnet-prefetch")


def test_a_consumer_that_stops_early_closes_the_source_in_its_thread():
    closed = []

    def source():
        try:
            yield from range(1000)
        finally:
            closed.append(threading.current_thread().name)

    items = prefetched(source(), budget=4)
    assert [next(items), next(items)] == [0, 1]
    items.close()
    assert closed == ["gistnet-prefetch"] and not _threads("gistnet-prefetch")


def test_the_writer_writes_everything_in_order_and_ends_its_thread():
    written = []
    with BackgroundWriter(lambda item: (time.sleep(0.001), written.append(item)), depth=2) as w:
        for i in range(30):
            w.submit(i)
    assert written == list(range(30)) and not _threads("gistnet-writer")


def test_the_writers_error_is_raised_to_the_caller_and_stops_it():
    def write(item):
        if item == 3:
            raise OSError(28, "No space left on device")

    writer = BackgroundWriter(write, depth=2)
    with pytest.raises(OSError, match="No space left"):
        for i in range(100):
            writer.submit(i)
        writer.close()
    assert not _threads("gistnet-writer")


def test_leaving_by_an_exception_drops_what_is_queued():
    written, gate = [], threading.Event()

    def write(item):
        gate.wait(1)
        written.append(item)

    with pytest.raises(KeyError):
        with BackgroundWriter(write, depth=4) as w:
            for i in range(4):
                w.submit(i)
            raise KeyError("caller failed")
    gate.set()
    assert len(written) <= 1 and not _threads("gistnet-writer")


def test_a_shard_written_behind_onto_a_full_disk_fails_saying_so_and_leaves_nothing(tmp_path):
    from gistnet.config import validate_dataset_config
    from gistnet.data import prepare_dataset
    from gistnet.errors import DiskFullError
    from tests.conftest import small_dataset_config
    from tests.small_disk import small_disk

    # teacher states of 40 documents: some MB, written batch by batch by the writer thread
    with small_disk(tmp_path / "disk") as disk:
        with pytest.raises(DiskFullError, match="is full: the train shard train.arrow"):
            prepare_dataset(validate_dataset_config(small_dataset_config()), output_dir=disk)
        assert not any(p.suffix == ".arrow" for p in disk.rglob("*"))
    assert not _threads("gistnet-writer") and not _threads("gistnet-prefetch")
