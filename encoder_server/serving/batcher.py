"""Dynamic batching: concurrent requests that arrive within a short window share one forward pass.

The batcher lives on the gRPC event loop but never runs the model there: each batch goes to a
single forward thread, so the loop keeps accepting requests while the GPU is busy. Each result is
then finished (serialised for the wire) on a separate pool, so the next forward pass starts while
the previous batch's bytes are still being checksummed and chunked. Requests with different
`max_sequence_length` pad differently and so never share a pass.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from encoder_server.config import BatchingConfig
from encoder_server.errors import NotReadyError, OverloadedError
from encoder_server.model.request import EncodeRequest

log = logging.getLogger(__name__)

Computed = TypeVar("Computed")
Result = TypeVar("Result")


@dataclass
class _Pending(Generic[Result]):
    request: EncodeRequest
    future: asyncio.Future[Result]
    arrived_at: float


@dataclass
class BatcherStats:
    requests: int = 0
    prompts: int = 0
    batches: int = 0
    largest_batch: int = 0
    batch_sizes: collections.Counter[int] = field(default_factory=collections.Counter)


class DynamicBatcher(Generic[Computed, Result]):
    """Queues requests, runs them in batches through `run_batch`, then each result through `finish`."""

    def __init__(
        self,
        run_batch: Callable[[Sequence[EncodeRequest]], list[Computed]],
        finish: Callable[[Computed], Result],
        config: BatchingConfig,
    ) -> None:
        self._run_batch = run_batch
        self._finish = finish
        self._config = config
        self._queue: collections.deque[_Pending[Result]] = collections.deque()
        self._queued_prompts = 0
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder-forward")
        self._finishers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="encoder-finish")
        self._finishing: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.stats = BatcherStats()

    @property
    def queued_prompts(self) -> int:
        return self._queued_prompts

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve(), name="dynamic-batcher")
        self._task.add_done_callback(self._stop_on_crash)

    def _stop_on_crash(self, task: asyncio.Task[None]) -> None:
        """A bug in the serving loop must not leave callers waiting forever: fail them and refuse new work."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("batcher stopped", exc_info=task.exception())
        self._closed = True
        self._fail_queued("the encoder's batcher stopped; see the server log")

    async def submit(self, request: EncodeRequest) -> Result:
        """Queue `request` and wait for its result; cancelling the wait drops it from its batch."""
        if self._closed or self._task is None:
            raise NotReadyError("the encoder is shutting down; retry on another replica or later")
        prompts = len(request.prompts)
        if self._queued_prompts + prompts > self._config.max_queued_prompts:
            raise OverloadedError(
                f"the server has {self._queued_prompts} prompts queued (limit {self._config.max_queued_prompts}); "
                "retry with backoff"
            )
        loop = asyncio.get_running_loop()
        pending: _Pending[Result] = _Pending(request, loop.create_future(), loop.time())
        self._queue.append(pending)
        self._queued_prompts += prompts
        self._arrived.set()
        try:
            return await pending.future
        except asyncio.CancelledError:
            self._forget(pending)  # a caller that went away must not hold queue space
            raise

    def _forget(self, pending: _Pending[Result]) -> None:
        with contextlib.suppress(ValueError):  # already taken into a batch
            self._queue.remove(pending)
            self._queued_prompts -= len(pending.request.prompts)
            self._arrived.set()  # the batch being gathered may have lost its oldest request

    async def close(self) -> None:
        """Finish the batch in flight, fail what is still queued, and stop the worker."""
        self._closed = True
        self._arrived.set()  # wake the serving loop so it sees `_closed`
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._fail_queued("the encoder shut down before this request ran")
        if self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)
        self._executor.shutdown(wait=False)  # idle by now: the pass in flight was awaited above
        self._finishers.shutdown(wait=False)

    def _fail_queued(self, reason: str) -> None:
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(NotReadyError(reason))
        self._queued_prompts = 0

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            batch = await self._next_batch()
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, [p.request for p in batch])
            except Exception as error:  # a failed pass fails its requests, not the server
                log.exception("forward pass failed for %d requests", len(batch))
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                continue
            for pending, computed in zip(batch, results, strict=True):
                task = loop.create_task(self._deliver(pending, computed))
                self._finishing.add(task)
                task.add_done_callback(self._finishing.discard)

    async def _deliver(self, pending: _Pending[Result], computed: Computed) -> None:
        """Finish one request's result off the forward thread and hand it to its caller."""
        if pending.future.done():
            return
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._finishers, self._finish, computed)
        except Exception as error:
            log.exception("finishing a result failed")
            if not pending.future.done():
                pending.future.set_exception(error)
            return
        if not pending.future.done():
            pending.future.set_result(result)

    async def _next_batch(self) -> list[_Pending[Result]]:
        """Wait for work, then for the batch to fill or the oldest request's window to close."""
        loop = asyncio.get_running_loop()
        wait_s = self._config.batch_wait_ms / 1000
        while not self._closed:
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            # Re-read the oldest each time round: callers may leave the queue while we wait.
            remaining = self._queue[0].arrived_at + wait_s - loop.time()
            if remaining <= 0 or self._compatible_prompts() >= self._config.max_batch_size:
                return self._take_batch()
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        return []  # closing: queued requests are failed by close(), not started

    def _compatible_prompts(self) -> int:
        length = self._queue[0].request.max_sequence_length
        return sum(len(p.request.prompts) for p in self._queue if p.request.max_sequence_length == length)

    def _take_batch(self) -> list[_Pending[Result]]:
        """Pop, in arrival order, the requests that fit one pass with the oldest; skip cancelled ones."""
        length = self._queue[0].request.max_sequence_length
        batch: list[_Pending[Result]] = []
        kept: collections.deque[_Pending[Result]] = collections.deque()
        prompts = 0
        while self._queue:
            pending = self._queue.popleft()
            size = len(pending.request.prompts)
            if pending.future.done():  # the caller went away while queued
                self._queued_prompts -= size
            elif pending.request.max_sequence_length == length and prompts + size <= self._config.max_batch_size:
                batch.append(pending)
                prompts += size
                self._queued_prompts -= size
            else:
                kept.append(pending)
        self._queue = kept
        if batch:
            self.stats.requests += len(batch)
            self.stats.prompts += prompts
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, prompts)
            self.stats.batch_sizes[prompts] += 1
        return batch
