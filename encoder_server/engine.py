"""The serving engine: loads the model, batches requests, and turns each result into its reply messages.

A prompt's trip: the servicer hands a plain `EncodeRequest` to `EncoderEngine.encode`, which validates it
against bounds built once at load, reserves its reply's bytes, and queues it on the `DynamicBatcher`. The
batcher's forward thread runs `PromptEncoder.encode_many` and copies results to host memory; a finisher
thread turns each result into wire messages (`shared.wire.tensor_to_responses`). The reservation is given
back when the caller has sent the reply or given up, so replies held in memory, however slowly they are
read, never exceed `ServerConfig.max_pending_reply_bytes`. Nothing here imports grpc.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

from encoder_server import __version__
from encoder_server.batcher import BatcherStats, DynamicBatcher
from encoder_server.config import MIB, ServerConfig
from encoder_server.errors import NotEnabledError, NotReadyError, OverloadedError
from encoder_server.models import LoadedModels
from encoder_server.prompt_encoder import PromptEncoder
from encoder_server.request import EncodeRequest, RequestBounds, validate_request
from encoder_server.upsampler import PromptUpsampler, UpsampleRequest, validate_upsample_request
from shared.defaults import DEFAULT_HIDDEN_STATE_LAYERS, DEFAULT_MAX_SEQUENCE_LENGTH
from shared.info import ServerInfo
from shared.protocol import encoder_pb2
from shared.wire import tensor_to_responses

log = logging.getLogger(__name__)

EncoderLoader = Callable[[], "PromptEncoder | LoadedModels"]
Reply = list[encoder_pb2.EncodeResponse]
T = TypeVar("T")


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

    def __init__(self, models: LoadedModels, config: ServerConfig) -> None:
        self.encoder = encoder = models.encoder
        self.upsampler = models.upsampler
        self.bounds: RequestBounds = encoder.bounds(config.limits)
        self.batcher: DynamicBatcher[tuple[torch.Tensor, EncodeRequest], Reply] = DynamicBatcher(
            self._forward, _to_reply, config.batching
        )
        self.info = _server_info(models, config)

    def _forward(self, requests: Sequence[EncodeRequest]) -> list[tuple[torch.Tensor, EncodeRequest]]:
        """Forward-thread work for one batch: the pass, then each result copied to host memory."""
        results = self.encoder.encode_many(requests)
        return [(embeds.to("cpu"), request) for embeds, request in zip(results, requests, strict=True)]


def _to_reply(computed: tuple[torch.Tensor, EncodeRequest]) -> Reply:
    embeds, request = computed
    return tensor_to_responses(
        embeds, hidden_state_layers=request.hidden_state_layers, max_sequence_length=request.max_sequence_length
    )


def _server_info(models: LoadedModels, config: ServerConfig) -> ServerInfo:
    model, limits, upsampling = models.encoder.info, config.limits, config.upsampling
    available = models.upsampler is not None
    return ServerInfo(
        model_name=model.model_name,
        model_path=model.model_path,
        hidden_size=model.hidden_size,
        num_layers=model.num_layers,
        max_layer=model.max_layer,
        default_hidden_state_layers=DEFAULT_HIDDEN_STATE_LAYERS,
        default_max_sequence_length=DEFAULT_MAX_SEQUENCE_LENGTH,
        max_sequence_length=limits.max_sequence_length,
        dtype=model.dtype,
        device=model.device,
        fingerprint=model.fingerprint,
        server_version=__version__,
        max_prompts_per_request=limits.max_prompts,
        max_prompt_chars=limits.max_prompt_chars,
        max_hidden_state_layers=limits.max_hidden_state_layers,
        max_reply_bytes=limits.max_reply_bytes,
        quantization=model.quantization,
        weight_bytes=model.weight_bytes,
        upsampling_available=available,
        max_upsample_prompts=upsampling.max_prompts if available else 0,
        max_upsample_images=upsampling.max_images if available else 0,
        max_upsample_image_bytes=upsampling.max_image_bytes if available else 0,
        max_upsample_image_pixels=upsampling.max_image_pixels if available else 0,
        max_new_tokens=upsampling.max_new_tokens if available else 0,
    )


class EncoderEngine:
    """Loading state, request admission, batching and reply building for one model."""

    def __init__(self, config: ServerConfig, loader: EncoderLoader) -> None:
        self.config = config
        self._loader = loader
        self._ready: _Ready | None = None
        self.budget = ReplyBudget(config.max_pending_reply_bytes)
        # Generation runs beside encoding, one at a time: the seed is torch's global generator, as in diffusers.
        self._generator = ThreadPoolExecutor(max_workers=1, thread_name_prefix="upsample")
        self._upsamples = 0  # admitted and not finished

    async def load(self) -> PromptEncoder:
        """Load the model off the event loop, then start batching; raises the load error if it fails."""
        started = time.perf_counter()
        loaded = await _run_in_daemon_thread(self._loader)
        models = loaded if isinstance(loaded, LoadedModels) else LoadedModels(loaded)
        ready = _Ready(models, self.config)
        ready.batcher.start()
        self._ready = ready
        log.info("model loaded in %.1f s", time.perf_counter() - started)
        return models.encoder

    def _get(self) -> _Ready:
        if self._ready is None:
            raise NotReadyError("the encoder model is still loading; retry when health reports SERVING")
        return self._ready

    def info(self) -> ServerInfo:
        return self._get().info

    @property
    def upsampler(self) -> PromptUpsampler | None:
        return self._get().upsampler

    @property
    def stats(self) -> BatcherStats:
        return self._get().batcher.stats

    @property
    def queued_prompts(self) -> int:
        return self._get().batcher.queued_prompts

    @contextlib.asynccontextmanager
    async def encode(self, request: EncodeRequest) -> AsyncIterator[Reply]:
        """Validate, queue and compute `request`; the reply's bytes stay reserved until the block exits."""
        ready = self._get()
        validate_request(request, ready.bounds)
        size = ready.bounds.reply_bytes(request)
        self.budget.reserve(size)
        try:
            yield await ready.batcher.submit(request)
        finally:
            self.budget.release(size)

    async def upsample(self, request: UpsampleRequest) -> list[str]:
        """Rewrite prompts on the generation thread; cancelling the wait stops the generation at its next token."""
        ready = self._get()
        if ready.upsampler is None:
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
