"""`ImageService`: the plain object behind the API. It turns a checked `ImageRequest` into the CLI's own jobs
(`GenerationJob`, preflight), queues them fairly between callers, and makes their images one at a time on one
GPU worker thread with the CLI's `ImageGenerator` (remote embeddings, LoRAs, upsampling, marks).

A request's progress arrives as events (`Step`, `Partial`, `Completed`, then `Finished` or `Failed`), handed to
the ticket's `notify` from the worker thread; a ticket cancelled while it waits is dropped, and one cancelled
while it denoises stops after the current step.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from diffusion_client.errors import InputError
from diffusion_client.generation.generator import ImageGenerator
from diffusion_client.generation.jobs import GenerationJob
from diffusion_client.generation.pipeline import ModelKind
from diffusion_client.generation.preflight import PreparedJob
from diffusion_client.lora.specs import LoraSpec
from diffusion_client.serve.api_errors import ApiError, bad_request, from_failure, queue_full, unavailable
from diffusion_client.serve.fair_queue import FairQueue, QueueClosedError, QueueFullError
from diffusion_client.serve.fields import ImageRequest
from diffusion_client.serve.previews import decode_preview, preview_steps
from diffusion_client.studio.loras import lora_names

log = logging.getLogger("flux2-serve")

DEFAULT_SIZE = 1024  # `size: "auto"`: FLUX.2's own default, as flux2-generate's
RANDOM_SEEDS = 2**32  # a seed drawn for a request that names none: short enough to read back and retype
SUFFIXES = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}


class Cancelled(Exception):
    """The caller went away (or the server is stopping) before its image was done."""


@dataclass(frozen=True)
class Step:
    image: int  # which of the request's `n` images, from 0
    done: int
    total: int


@dataclass(frozen=True)
class Partial:
    image: int
    index: int  # which partial image of this image, from 0
    data: bytes  # a marked file in the request's output format


@dataclass(frozen=True)
class Completed:
    image: int
    data: bytes  # the marked file
    seed: int
    revised_prompt: str | None  # the server's rewrite, when the request upsampled
    seconds: float


@dataclass(frozen=True)
class Finished:
    pass


@dataclass(frozen=True)
class Failed:
    error: ApiError


Event = Step | Partial | Completed | Finished | Failed


@dataclass(eq=False)
class Ticket:
    """One request on its way through the queue and the GPU."""

    caller: str
    request: ImageRequest
    jobs: tuple[PreparedJob, ...]
    notify: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    started: bool = False

    def cancel(self) -> None:
        self.cancelled.set()

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled("cancelled")


@dataclass(frozen=True)
class ServiceLimits:
    max_queue: int = 64  # requests waiting, all callers together
    max_queue_per_caller: int = 4


class ImageService:
    """Generates checked requests on `generator`'s pipeline, one at a time, callers served round robin."""

    def __init__(
        self,
        generator: ImageGenerator,
        kind: ModelKind,
        *,
        out_dir: Path,
        lora_dir: Path | None = None,
        limits: ServiceLimits = ServiceLimits(),
        on_image: Callable[[str, float], None] = lambda caller, seconds: None,
    ) -> None:
        self.generator = generator
        self.kind = kind
        self.out_dir = out_dir
        self.lora_dir = lora_dir
        self.on_image = on_image
        self.queue: FairQueue[Ticket] = FairQueue(
            max_total=limits.max_queue, max_per_caller=limits.max_queue_per_caller
        )
        self._running: Ticket | None = None
        self._idle = threading.Event()
        self._idle.set()
        self._worker = threading.Thread(target=self._work, name="serve-gpu", daemon=True)
        self._worker.start()

    # What a request asks for, as the CLI's jobs, checked (call off the event loop: it decodes references).
    def prepare(self, request: ImageRequest, references: Sequence[Path] = ()) -> tuple[PreparedJob, ...]:
        """The request's `n` jobs (seeds `seed`, `seed + 1`, ...) through preflight; 400 for anything wrong."""
        if request.negative_prompt and not self.generator.runs_negative_prompt:
            raise bad_request(
                f"this model ({self.kind.pipeline}, guidance-distilled) uses no negative prompt; leave it out",
                param="negative_prompt",
                code="unsupported_parameter",
            )
        seed = request.seed if request.seed is not None else secrets.randbelow(RANDOM_SEEDS)
        suffix = SUFFIXES[request.output_format]
        base = GenerationJob(
            prompt=request.prompt,
            out=self.out_dir / f"image{suffix}",
            seed=seed,
            steps=request.steps if request.steps is not None else self.kind.steps,
            guidance=request.guidance if request.guidance is not None else self.kind.guidance,
            height=request.height or DEFAULT_SIZE,
            width=request.width or DEFAULT_SIZE,
            images=tuple(references),
            loras=self._loras(request),
            upsample=request.upsample,
        )
        jobs = [
            dataclasses.replace(base, seed=seed + index, out=self.out_dir / f"image-{index}{suffix}")
            for index in range(request.n)
        ]
        try:
            if request.negative_prompt:
                self.generator.encoder.check_prompts([request.negative_prompt])
            return tuple(self.generator.prepare(jobs))
        except Exception as error:
            failure = from_failure(error)
            for index, path in enumerate(references):  # the caller's `image` parts, not where this server kept them
                failure.message = failure.message.replace(f"reference image {path}", f"image {index}")
                failure.message = failure.message.replace(str(path), f"image {index}")
            raise failure from None

    def _loras(self, request: ImageRequest) -> tuple[LoraSpec, ...]:
        if not request.loras:
            return ()
        offered = set(lora_names(self.lora_dir))
        specs = []
        for choice in request.loras:
            if choice.name not in offered or self.lora_dir is None:
                raise bad_request(
                    f"no LoRA named {choice.name[:80]!r} on this server; GET /v1/models lists the LoRAs it offers",
                    param="loras",
                )
            try:
                specs.append(LoraSpec(self.lora_dir / choice.name, choice.scale))
            except InputError as error:
                raise bad_request(str(error).replace(str(self.lora_dir / choice.name), choice.name), "loras") from None
        return tuple(specs)

    def submit(
        self,
        caller: str,
        request: ImageRequest,
        jobs: tuple[PreparedJob, ...],
        notify: Callable[[Event], None],
        caller_limit: int | None = None,
    ) -> Ticket:
        """Queue prepared jobs; 429 when the caller's line or the whole queue is full, 503 while stopping."""
        ticket = Ticket(caller, request, jobs, notify)
        try:
            self.queue.put(caller, ticket, caller_limit)
        except QueueFullError as error:
            raise queue_full(f"{error}; try again when one has finished") from None
        except QueueClosedError:
            raise unavailable("the server is shutting down; send the request again (to another replica)") from None
        return ticket

    def withdraw(self, ticket: Ticket) -> None:
        """The caller left: a waiting ticket is dropped, a running one stops after its current step."""
        ticket.cancel()
        self.queue.remove(ticket.caller, ticket)

    @property
    def alive(self) -> bool:
        return self._worker.is_alive()

    @property
    def busy(self) -> bool:
        return self._running is not None

    def drain(self, timeout_s: float) -> bool:
        """Refuse new requests, refuse those waiting (503) and let the one running finish; False if it did not."""
        for ticket in self.queue.close():
            ticket.notify(Failed(unavailable("the server is shutting down; send the request again")))
        return self._idle.wait(timeout_s)

    def _work(self) -> None:
        while True:
            ticket = self.queue.take()
            if ticket is None:
                return
            if ticket.cancelled.is_set():
                continue  # its caller left while it waited
            self._idle.clear()
            self._running = ticket
            try:
                self._run(ticket)
            finally:
                self._running = None
                self._idle.set()

    def _run(self, ticket: Ticket) -> None:
        ticket.started = True
        try:
            for index, prepared in enumerate(ticket.jobs):
                ticket.check()
                completed = self._image(ticket, index, prepared)
                self.on_image(ticket.caller, completed.seconds)
                ticket.notify(completed)
        except Cancelled:
            log.info("request of %s cancelled: its caller went away", ticket.caller)
            ticket.notify(Failed(ApiError(499, "cancelled: the caller went away", code="cancelled")))
            return
        except Exception as error:  # the next request must still run: every failure is this request's own
            api_error = from_failure(error)
            if api_error.status >= 500 and api_error.code == "server_error":
                log.exception("a request of %s failed unexpectedly", ticket.caller)
            ticket.notify(Failed(api_error))
            return
        ticket.notify(Finished())

    def _image(self, ticket: Ticket, index: int, prepared: PreparedJob) -> Completed:
        started = time.perf_counter()
        request, generator = ticket.request, self.generator
        conditioning = generator.fetch_conditioning(prepared)
        negative = None
        if request.negative_prompt and generator.runs_negative_prompt:
            negative = generator.encoder.encode(
                [request.negative_prompt], device=generator.device, dtype=generator.dtype
            )
        ticket.check()
        job = prepared.job
        previews = preview_steps(job.steps, request.partial_images if request.stream else 0)
        quality = request.output_compression

        def on_step(done: int, total: int) -> None:
            ticket.notify(Step(index, done, total))
            ticket.check()

        def on_latents(done: int, latents: object) -> None:
            if done in previews:
                picture = decode_preview(generator.pipeline, latents, job.height, job.width)  # type: ignore[arg-type]
                marked = generator.mark(prepared, picture, conditioning.upsampled_prompt, quality=quality)
                ticket.notify(Partial(index, sorted(previews).index(done), marked.data))

        image: Image.Image = generator.generate(
            prepared,
            conditioning.prompt_embeds,
            on_step,
            on_latents=on_latents if previews else None,
            negative_embeds=negative,
        )
        marked = generator.mark(prepared, image, conditioning.upsampled_prompt, quality=quality)
        seconds = time.perf_counter() - started
        return Completed(index, marked.data, job.seed, conditioning.upsampled_prompt, seconds)
