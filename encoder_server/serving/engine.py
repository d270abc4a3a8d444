"""The serving engine: loads the model, answers from the cache or batches requests, and builds replies.

A prompt's trip: a handler (gRPC or HTTP) hands a plain `EncodeRequest` to `EncoderEngine.encode`, which
validates it against bounds built once at load and reserves its reply's bytes. Each prompt is then served
from the `ReplyCache`, or joins an identical computation already in flight (single flight), or is
queued on the `DynamicBatcher` with the request's other misses. The batcher's forward thread runs
`PromptEncoder.encode_many` and copies results to host memory, holding its device's forward lock (models sharing a
GPU take turns); a finisher thread frames and checksums each prompt's row for the wire (`shared.wire.encode_row`),
once, so the cache and every caller share the same bytes. The reservation is given back when the caller has sent
the reply or given up, so replies held in memory, however slowly they are read, never exceed
`ServerConfig.max_pending_reply_bytes`. Nothing here imports grpc.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TypeVar

import torch

from encoder_server.config import MIB, ModelConfig, ServerConfig
from encoder_server.errors import NotEnabledError, NotReadyError, OverloadedError, StalledReaderError
from encoder_server.model.loaded_models import LoadedModels
from encoder_server.model.prompt_encoder import PromptEncoder
from encoder_server.model.request import EncodeRequest, RequestBounds, validate_request
from encoder_server.model.upsampler import PromptUpsampler, UpsampleRequest, validate_upsample_request
from encoder_server.observability.metrics import ServerMetrics
from encoder_server.serving.batcher import BatcherStats, DynamicBatcher
from encoder_server.serving.cache import CacheStats, ReplyCache, ScopedKey
from encoder_server.serving.forward_lock import forward_lock
from encoder_server.serving.info import served_model, server_info
from encoder_server.serving.warm_up import warm_up
from shared.lru import CacheKey
from shared.server_info import ServedModel, ServerInfo
from shared.tokens import ANONYMOUS
from shared.wire import WireRow, encode_row, reply_frames, rows_to_tensor

log = logging.getLogger(__name__)

EncoderLoader = Callable[[], "PromptEncoder | LoadedModels"]
Computed = tuple[list[WireRow], int]  # one request's rows, and the prompts in the pass that computed them
T = TypeVar("T")


@dataclass(frozen=True)
class EncodeResult:
    """One request's embeddings, a `WireRow` per prompt, and how they were obtained."""

    request: EncodeRequest
    rows: Sequence[WireRow]
    dtype: str
    width: int  # len(hidden_state_layers) * hidden_size
    cached: int  # prompts served by the cache or by an identical computation in flight
    batch: int  # prompts in the largest pass this request's misses ran in; 0 when nothing was computed

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.rows), self.request.max_sequence_length, self.width)

    def frames(self) -> list[bytes]:
        """The whole `Encode` reply as serialized messages: a header, then the rows' chunks (no copies)."""
        return reply_frames(
            self.rows,
            dtype=self.dtype,
            shape=self.shape,
            hidden_state_layers=self.request.hidden_state_layers,
            max_sequence_length=self.request.max_sequence_length,
        )

    def tensor(self) -> torch.Tensor:
        """`prompt_embeds` `[B, max_sequence_length, width]` on the CPU (one copy), for the HTTP endpoint."""
        return rows_to_tensor(self.rows, self.dtype, self.shape)


class ReplyBudget:
    """Bytes of replies admitted and not yet released; touched only on the event loop."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.reserved_bytes = 0

    def reserve(self, size: int) -> None:
        if self.reserved_bytes + size > self.limit_bytes:
            raise OverloadedError(
                f"the server holds {self.reserved_bytes / MIB:.0f} MiB of replies (limit "
                f"{self.limit_bytes / MIB:.0f} MiB); retry with backoff"
            )
        self.reserved_bytes += size

    def release(self, size: int) -> None:
        self.reserved_bytes -= size


class _Ready:
    """What serving needs once the model has loaded."""

    def __init__(self, models: LoadedModels, config: ServerConfig, metrics: ServerMetrics, name: str | None) -> None:
        self.encoder = encoder = models.encoder
        self.upsampler = models.upsampler
        self.metrics = metrics
        self.bounds: RequestBounds = encoder.bounds(config.limits)
        self.batcher: DynamicBatcher[tuple[torch.Tensor, int], Computed] = DynamicBatcher(
            self._forward, _to_rows, config.batching
        )
        self.served = served_model(models, name)
        self.info = server_info(models, config, self.served)
        self.device_lock = forward_lock(encoder.info.device)  # models on one device take turns

    def _forward(self, requests: Sequence[EncodeRequest]) -> list[tuple[torch.Tensor, int]]:
        """Forward-thread work for one batch: the pass, then each result copied to host memory."""
        with self.device_lock:
            started = time.perf_counter()
            results = self.encoder.encode_many(requests)
            prompts = sum(len(request.prompts) for request in requests)
            hosted = [(embeds.to("cpu"), prompts) for embeds in results]
        self.metrics.batch_finished(prompts, time.perf_counter() - started)
        return hosted


def _to_rows(computed: tuple[torch.Tensor, int]) -> Computed:
    embeds, batch = computed  # [B, max_sequence_length, width]
    return [encode_row(row) for row in embeds], batch


@dataclass
class _Flight:
    """A prompt being computed; identical requests arriving meanwhile wait on `future` instead of queuing."""

    key: ScopedKey
    future: asyncio.Future[tuple[WireRow, int]]
    waiters: int = 0
    siblings: list[_Flight] = field(default_factory=list)  # every flight of the same queued request
    task: asyncio.Task[Computed] | None = None


class EncoderEngine:
    """Loading state, request admission, batching and reply building for one model.

    A server with several models has one engine each, sharing one `ReplyBudget` and one `ServerMetrics`, each
    with `cache_bytes` of its own (`serving.models.ServedEngines` builds them).
    """

    def __init__(
        self,
        config: ServerConfig,
        loader: EncoderLoader,
        metrics: ServerMetrics | None = None,
        *,
        model: ModelConfig | None = None,
        name: str | None = None,
        budget: ReplyBudget | None = None,
        cache_bytes: int | None = None,
    ) -> None:
        """`model` defaults to `config.model`, `name` to the loaded model's, `budget` to one of this engine's own
        and `cache_bytes` to `config.cache_bytes`."""
        self.config = config
        self.model = model or config.model
        self.name = name
        self._loader = loader
        self._ready: _Ready | None = None
        self.budget = budget or ReplyBudget(config.max_pending_reply_bytes)
        self.metrics = metrics or ServerMetrics()
        cache_bytes = config.cache_bytes if cache_bytes is None else cache_bytes
        # Off (0 bytes) also turns off single flight: every request is computed, as before the cache existed.
        self.cache = ReplyCache(cache_bytes, config.shared_cache) if cache_bytes > 0 else None
        self._flights: dict[ScopedKey, _Flight] = {}
        self.metrics.watch(lambda: self._ready.batcher.queued_prompts if self._ready else 0, self.cache_stats)
        # Generation runs beside encoding, one at a time: the seed is torch's global generator, as in diffusers.
        self._generator = ThreadPoolExecutor(max_workers=1, thread_name_prefix="upsample")
        self._upsamples = 0  # admitted and not finished
        self.warm_up_s: float | None = None  # how long the warm-up pass took; None until run, or when turned off

    async def load(self) -> PromptEncoder:
        """Load the model off the event loop, then start batching; raises the load error if it fails."""
        started = time.perf_counter()
        loaded = await _run_in_daemon_thread(self._loader)
        models = loaded if isinstance(loaded, LoadedModels) else LoadedModels(loaded)
        if self.config.warm_up:
            self.warm_up_s = await _run_in_daemon_thread(lambda: warm_up(models, self.config))
        ready = _Ready(models, self.config, self.metrics, self.name)
        ready.batcher.start()
        self._ready = ready
        log.info("model %s loaded in %.1f s", ready.served.name, time.perf_counter() - started)
        return models.encoder

    @property
    def loaded(self) -> bool:
        return self._ready is not None

    def _get(self) -> _Ready:
        if self._ready is None:
            raise NotReadyError("the encoder model is still loading; retry when health reports SERVING")
        return self._ready

    def info(self) -> ServerInfo:
        return self._get().info

    def served(self) -> ServedModel:
        """This model as `GetInfo` lists it among those a server serves."""
        return self._get().served

    @property
    def upsampler(self) -> PromptUpsampler | None:
        return self._get().upsampler

    @property
    def stats(self) -> BatcherStats:
        return self._get().batcher.stats

    @property
    def queued_prompts(self) -> int:
        return self._get().batcher.queued_prompts

    def set_callers(self, names: Sequence[str]) -> None:
        """The callers now allowed: the cache shares its budget between them."""
        if self.cache is not None:
            self.cache.set_callers(names)

    def cache_stats(self) -> CacheStats | None:
        return None if self.cache is None else self.cache.stats()

    @contextlib.asynccontextmanager
    async def encode(self, request: EncodeRequest, caller: str = ANONYMOUS) -> AsyncIterator[EncodeResult]:
        """Validate, then serve `request` from `caller`'s cache or a forward pass; its bytes stay reserved in the
        block."""
        ready = self._get()
        request = request.with_layers(ready.info.default_hidden_state_layers)
        validate_request(request, ready.bounds)
        size = ready.bounds.reply_bytes(request)
        self.budget.reserve(size)
        try:
            if self.cache is None:
                rows, batch = await ready.batcher.submit(request)
                cached = 0
            else:
                rows, cached, batch = await self._cached_rows(ready, request, self.cache, caller)
            width = len(request.hidden_state_layers) * ready.info.hidden_size
            yield EncodeResult(request, rows, ready.info.dtype, width, cached, batch)
        finally:
            self.budget.release(size)

    async def _cached_rows(
        self, ready: _Ready, request: EncodeRequest, cache: ReplyCache, caller: str
    ) -> tuple[list[WireRow], int, int]:
        """Each prompt's row from the cache, from a computation in flight, or from one pass over the misses."""
        layers, length = request.hidden_state_layers, request.max_sequence_length
        keys = [cache.scope(caller, CacheKey(ready.info.fingerprint, p, length, layers)) for p in request.prompts]
        found: dict[ScopedKey, WireRow] = {}
        waiting: dict[ScopedKey, _Flight] = {}
        missing: list[ScopedKey] = []
        for key in dict.fromkeys(keys):  # a prompt repeated within the request is looked up once
            if key in self._flights:
                waiting[key] = self._flights[key]
                cache.coalesced += 1
            elif (row := cache.get(key)) is not None:
                found[key] = row
            else:
                missing.append(key)
        if missing:
            waiting.update(self._compute(ready, request, missing, cache, caller))
        cached = len(request.prompts) - sum(1 for key in keys if key in missing)
        batch = 0
        for flight in waiting.values():
            flight.waiters += 1
        try:
            for key, flight in waiting.items():
                found[key], computed_in = await asyncio.shield(flight.future)
                batch = max(batch, computed_in)
        finally:
            for flight in waiting.values():
                flight.waiters -= 1
                if flight.task is not None and not flight.task.done() and all(o.waiters == 0 for o in flight.siblings):
                    self._abandon(flight)
        return [found[key] for key in keys], cached, batch

    def _abandon(self, flight: _Flight) -> None:
        """Everyone waiting went away: nobody new may join, and the request leaves the queue if not yet run."""
        for sibling in flight.siblings:
            if self._flights.get(sibling.key) is sibling:
                del self._flights[sibling.key]
        assert flight.task is not None
        flight.task.cancel()

    def _compute(
        self, ready: _Ready, request: EncodeRequest, missing: list[ScopedKey], cache: ReplyCache, caller: str
    ) -> dict[ScopedKey, _Flight]:
        """Queue the missing prompts as one request; their rows go to the cache (charged to `caller`) and to
        everyone waiting."""
        loop = asyncio.get_running_loop()
        flights = {key: _Flight(key, loop.create_future()) for key in missing}
        siblings = list(flights.values())
        prompts = tuple(key.prompt for _, key in missing)
        task = loop.create_task(ready.batcher.submit(replace(request, prompts=prompts)))
        for flight in siblings:
            flight.siblings, flight.task = siblings, task
            flight.future.add_done_callback(_retrieve)  # a failure nobody waits for must not be logged as lost
        self._flights.update(flights)

        def settle(done: asyncio.Task[Computed]) -> None:
            for key, flight in flights.items():
                if self._flights.get(key) is flight:
                    del self._flights[key]
            if done.cancelled():
                for flight in siblings:
                    flight.future.cancel()
                return
            error = done.exception()
            if error is not None:
                for flight in siblings:
                    flight.future.set_exception(error)
                return
            rows, batch = done.result()
            for (key, flight), row in zip(flights.items(), rows, strict=True):
                cache.put(key, row, caller)
                flight.future.set_result((row, batch))

        task.add_done_callback(settle)
        return flights

    async def upsample(self, request: UpsampleRequest) -> list[str]:
        """Rewrite prompts on the generation thread; cancelling the wait stops the generation at its next token."""
        ready = self._get()
        if ready.upsampler is None:
            family = ready.encoder.info.family
            if not family.can_upsample:
                raise NotEnabledError(
                    f"{ready.info.model_name} ({family.name}, for {family.pipeline}) does not upsample prompts; "
                    "upsampling needs FLUX.2-dev's Mistral3: serve a FLUX.2-dev snapshot with --enable-upsampling"
                )
            raise NotEnabledError("this server does not upsample prompts; start it with --enable-upsampling")
        limits = self.config.upsampling
        validate_upsample_request(request, limits, self.config.limits)
        if self._upsamples >= limits.max_queued:
            raise OverloadedError(f"{self._upsamples} upsample requests are waiting (limit {limits.max_queued}); retry")
        cancelled = threading.Event()
        self._upsamples += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._generator, ready.upsampler.upsample, request, cancelled.is_set)
        finally:
            cancelled.set()  # a no-op once finished; stops a generation whose caller went away
            self._upsamples -= 1

    async def close(self) -> None:
        """Finish the pass in flight and fail what is still queued; stop generating."""
        if self._ready is not None:
            await self._ready.batcher.close()
        self._generator.shutdown(wait=False, cancel_futures=True)


async def send_within(sending: Awaitable[object], timeout_s: float) -> None:
    """Wait for one piece of a reply to be taken by the transport, which parks it while the reader is not reading;
    past `timeout_s` the reply is dropped (`StalledReaderError`), so a stalled reader cannot pin it."""
    try:
        await asyncio.wait_for(sending, timeout_s)
    except TimeoutError:
        raise StalledReaderError(
            f"the reply could not be sent for {timeout_s:g} s (the client stopped reading); it was dropped"
        ) from None


def _retrieve(future: asyncio.Future[tuple[WireRow, int]]) -> None:
    if not future.cancelled():
        future.exception()


async def _run_in_daemon_thread(work: Callable[[], T]) -> T:
    """Run `work` on a daemon thread: a stop signal during a minutes-long load must not wait for it to end."""
    loop = asyncio.get_running_loop()
    result: asyncio.Future[T] = loop.create_future()

    def settle(outcome: T | None, error: BaseException | None) -> None:
        if result.done():
            return
        if error is not None:
            result.set_exception(error)
        else:
            result.set_result(outcome)  # type: ignore[arg-type]

    def run() -> None:
        try:
            outcome: T | None = work()
            error: BaseException | None = None
        except BaseException as failure:  # delivered to the awaiting task, which reports it
            outcome, error = None, failure
        with contextlib.suppress(RuntimeError):  # the loop is gone: the server stopped while loading
            loop.call_soon_threadsafe(settle, outcome, error)

    threading.Thread(target=run, name="load-encoder", daemon=True).start()
    return await result
