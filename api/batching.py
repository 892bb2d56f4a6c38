"""The batching queue in front of the gist engines.

Requests wait in an asyncio queue; one collector takes the first, gathers more until the
batch holds `max_batch` blocks or `max_wait_s` has passed, and runs one forward per engine
on a single worker thread (so the event loop stays free and forwards never overlap).
While a forward runs, new requests queue up and form the next batch. Waiting blocks are
bounded: beyond `capacity` a request is refused at once rather than left to wait forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from api.engine import GistEngine

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More blocks are waiting than the queue holds."""


@dataclass
class _Pending:
    engine: GistEngine
    blocks: np.ndarray  # (n, T) int64
    future: asyncio.Future
    queued_at: float  # the event loop's clock when the request joined the queue


@dataclass(frozen=True)
class Forward:
    """What one forward did, for the metrics: how many blocks, how long the engine took,
    and how long each request it carried had waited for it."""

    blocks: int
    compute_s: float
    waits_s: list[float]


class GistBatcher:
    def __init__(
        self,
        *,
        max_batch: int,
        max_wait_s: float,
        capacity: int,
        on_forward: Callable[[Forward], None] | None = None,
    ):
        self.max_batch, self.max_wait_s, self.capacity = max_batch, max_wait_s, capacity
        # Told of every forward (the metrics' batch-size, queue-wait and compute histograms).
        self.on_forward = on_forward
        self.waiting_blocks = 0
        # Forwards run and blocks they carried, for /health and the benchmark.
        self.forwards = 0
        self.blocks_done = 0
        self._queue: asyncio.Queue[_Pending] | None = None
        self._carry: _Pending | None = None
        self._collector: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gist-forward")
        self._collector = asyncio.create_task(self._collect_forever(), name="gist-batcher")

    async def stop(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
            try:
                await self._collector
            except asyncio.CancelledError:
                pass
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def encode(self, engine: GistEngine, blocks: np.ndarray) -> np.ndarray:
        """Gists for `blocks`, computed in a batch with whatever else is waiting."""
        n = len(blocks)
        if self.waiting_blocks + n > self.capacity:
            raise QueueFull(
                f"{self.waiting_blocks} blocks are already waiting (the queue holds "
                f"{self.capacity}); retry shortly"
            )
        self.waiting_blocks += n
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put_nowait(_Pending(engine, blocks, future, loop.time()))
        return await future

    async def _next(self, timeout: float | None) -> _Pending | None:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        if timeout is None:
            return await self._queue.get()
        if not self._queue.empty():
            return self._queue.get_nowait()
        if timeout <= 0:
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    async def _collect_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next(None)
            batch, size = [first], len(first.blocks)
            deadline = loop.time() + self.max_wait_s
            while size < self.max_batch:
                item = await self._next(deadline - loop.time())
                if item is None:
                    break
                if size + len(item.blocks) > self.max_batch:
                    self._carry = item  # it opens the next batch instead of overfilling this one
                    break
                batch.append(item)
                size += len(item.blocks)
            self.waiting_blocks -= size
            await self._run(batch)

    async def _run(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        by_engine: dict[int, list[_Pending]] = {}
        for item in batch:
            by_engine.setdefault(id(item.engine), []).append(item)
        for items in by_engine.values():
            blocks = np.concatenate([item.blocks for item in items])
            started = loop.time()
            try:
                gists = await loop.run_in_executor(self._executor, items[0].engine.encode, blocks)
            except Exception as exc:
                log.exception("gist forward failed")
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            self.forwards += 1
            self.blocks_done += len(blocks)
            if self.on_forward is not None:
                waits = [started - item.queued_at for item in items]
                self.on_forward(Forward(len(blocks), loop.time() - started, waits))
            offset = 0
            for item in items:
                n = len(item.blocks)
                if not item.future.done():  # its client may have gone away
                    item.future.set_result(gists[offset : offset + n])
                offset += n


class RefineLane:
    """Refined gists (gistnet.refine), one request at a time on a thread of their own.

    A refinement costs about samples x steps teacher passes per block, seconds where a
    plain gist costs milliseconds: refinements run one after another, not in the batching
    queue, so plain gists do not wait behind them (on a CPU they share its cores, and slow
    down while one runs). At most `capacity` requests wait or run; more are refused at
    once (QueueFull) rather than left waiting.
    """

    def __init__(self, *, capacity: int):
        self.capacity = capacity
        self.waiting = 0
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gist-refine")

    async def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    async def encode(self, engine: GistEngine, blocks: np.ndarray, refine) -> np.ndarray:
        """Refined gists of `blocks` with `refine` (a RefineSettings)."""
        if self.waiting >= self.capacity:
            raise QueueFull(
                f"{self.waiting} refinements are waiting or running, the most this server "
                f"holds (GISTNET_GIST_REFINE_QUEUE; they run one at a time): try again shortly"
            )
        self.waiting += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._executor, lambda: engine.encode(blocks, refine=refine)
            )
        finally:
            self.waiting -= 1


class ContextLane:
    """Scoring and generation (POST /score, POST /generate), on a thread of their own.

    A request takes a place in the lane (`place()`) for as long as it runs: a score for
    its one teacher pass, a generation for its prefill and every token after it. At most
    `capacity` requests hold a place; more are refused at once (QueueFull). Their teacher
    passes take turns on the one thread (`run`), so generations that run together advance
    a token each in turn, and none waits for another to finish.
    """

    def __init__(self, *, capacity: int):
        self.capacity = capacity
        self.holding = 0
        # Teacher passes run since start-up (prefills, scores and tokens), for /health.
        self.passes = 0
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="context")

    async def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def place(self) -> _Place:
        """A place in the lane, taken now (QueueFull when there is none), given back when
        the `with` block (or `release()`) ends."""
        if self.holding >= self.capacity:
            raise QueueFull(
                f"{self.holding} scoring or generating requests are waiting or running, the "
                f"most this server holds (GISTNET_CONTEXT_QUEUE): try again shortly"
            )
        self.holding += 1
        return _Place(self)

    async def run(self, work: Callable[[], object]):
        """`work()` on the lane's thread; the event loop goes on meanwhile."""
        result = await asyncio.get_running_loop().run_in_executor(self._executor, work)
        self.passes += 1
        return result


class _Place:
    def __init__(self, lane: ContextLane):
        self._lane, self._held = lane, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._lane.holding -= 1

    def __enter__(self) -> _Place:
        return self

    def __exit__(self, *_) -> None:
        self.release()
