"""Two background stages for dataset preparation, so that reading and tokenizing text and
writing Arrow batches run while the teacher computes (on a GPU those two took most of a
cached preparation's time): `prefetched` runs an iterator in a thread a few items ahead,
`BackgroundWriter` hands batches to a thread that writes them in order. Each holds a
bounded amount (`prefetched` a budget of bytes, the writer `depth` items), and each hands
its thread's exception to the caller, at the next item or at close: nothing fails silently
and no thread outlives the call that started it.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_DONE = object()
_POLL_SECONDS = 0.1  # how often a blocked stage looks whether it was told to stop


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put `item`, waiting while the queue is full; False once `stop` is set."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_SECONDS)
            return True
        except queue.Full:
            continue
    return False


def prefetched(
    items: Iterator[T], *, budget: int, size: Callable[[T], int] = lambda item: 1
) -> Iterator[T]:
    """The items of `items`, in order, produced by a thread that runs ahead while the
    items waiting hold less than `budget` by `size` (one item at least, however large).

    The thread owns `items`: it closes it (running its `finally` blocks, closing its
    files) when it ends, whether the consumer read everything, stopped early or failed.
    """
    waiting: collections.deque = collections.deque()
    held = 0  # the size of the items waiting
    changed = threading.Condition()
    stop = threading.Event()

    def offer(item, weight: int) -> bool:
        nonlocal held
        with changed:
            while waiting and held + weight > budget and not stop.is_set():
                changed.wait(_POLL_SECONDS)
            if stop.is_set():
                return False
            waiting.append((item, weight))
            held += weight
            changed.notify_all()
            return True

    def produce() -> None:
        try:
            for item in items:
                if not offer(item, size(item)):
                    return
            offer(_DONE, 0)
        except BaseException as err:  # handed to the consumer, raised there
            offer(_Failed(err), 0)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="gistnet-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            with changed:
                while not waiting:
                    if not thread.is_alive():  # it always posts an end first; never hang
                        raise RuntimeError("the prefetch thread ended without its last item")
                    changed.wait(_POLL_SECONDS)
                item, weight = waiting.popleft()
                held -= weight
                changed.notify_all()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        with changed:
            changed.notify_all()
        thread.join()


class BackgroundWriter(Generic[T]):
    """`write(item)` runs in one thread, item after item in the order given; `submit`
    waits while `depth` items are queued. `close()` waits for the rest and raises the
    thread's error if it had one; after an error `submit` raises it at once. Use it as a
    context manager: leaving the block by an exception stops the thread without writing
    what is still queued."""

    def __init__(self, write: Callable[[T], None], *, depth: int = 2):
        self._write = write
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="gistnet-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if item is _DONE or self._stop.is_set():
                return
            try:
                self._write(item)
            except BaseException as err:
                self._error = err
                self._stop.set()
                return

    def submit(self, item: T) -> None:
        if self._error is not None:
            raise self._error
        if not _put(self._queue, item, self._stop) and self._error is not None:
            raise self._error

    def close(self) -> None:
        """Write what is queued, end the thread, raise its error if it had one."""
        _put(self._queue, _DONE, self._stop)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abandon(self) -> None:
        """End the thread without writing what is still queued (the write in progress
        finishes first)."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> BackgroundWriter[T]:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if kind is None:
                self.close()
        finally:  # even when close() is interrupted: the thread must not outlive the block
            self.abandon()
