"""`Studio`: the plain object behind the page. It turns a checked `PageRequest` into a `GenerationJob` and makes
the image with the CLI's own `ImageGenerator` (preflight, remote embeddings, LoRAs, marks, atomic write), one
job at a time on one worker thread, since the pipeline and its LoRA adapters belong to one GPU.

The studio keeps the queue: jobs wait in the order submitted, each knows how many are ahead of it, and one page,
one user (or one address without logins) and everyone together may each have only so many waiting. A job
reports its denoising steps as they finish and can be cancelled while it waits (it is then dropped unrun) or
between steps.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from diffusion_client.errors import ClientError, InputError, failure_text, printable_line
from diffusion_client.generation.generator import Conditioning, ImageGenerator
from diffusion_client.generation.jobs import GenerationJob
from diffusion_client.generation.preflight import PreparedJob
from diffusion_client.studio.form import PageRequest

MESSAGE_LIMIT = 500  # characters of a message shown on the page
logger = logging.getLogger("flux2-studio")


class Cancelled(Exception):
    """The page's Cancel button, or the page closed, while the job waited or denoised."""


class QueueFull(Exception):
    """A page, a user or everyone together has as many jobs waiting as allowed; `str()` says which."""


@dataclass(frozen=True)
class QueueLimits:
    """Jobs waiting or running at once: per page session, per user (per address without logins), in all."""

    per_session: int = 2
    per_account: int = 4
    total: int = 64


@dataclass(frozen=True)
class StudioImage:
    """A finished image: the marked file and what made it, as the page shows and reuses it."""

    path: Path
    request: PageRequest
    upsampled_prompt: str | None
    notes: tuple[str, ...]
    started: float  # wall-clock times (time.time()), to show when it was made and in which order
    finished: float

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    def settings(self) -> dict[str, Any]:
        """The settings to show beside the image and to put back into the form."""
        request = self.request
        return {
            "prompt": request.prompt,
            "rewritten_prompt": self.upsampled_prompt,
            "seed": request.seed,
            "steps": request.steps,
            "guidance": request.guidance,
            "width": request.width,
            "height": request.height,
            "reference_images": len(request.references),
            "loras": [{"name": spec.path.name, "scale": spec.scale} for spec in request.loras],
            "file": self.path.name,
            "started": datetime.fromtimestamp(self.started).isoformat(timespec="milliseconds"),
            "finished": datetime.fromtimestamp(self.finished).isoformat(timespec="milliseconds"),
            "seconds": round(self.seconds, 3),
        }


@dataclass(eq=False)  # a job is itself: the queue finds and removes it by identity
class StudioJob:
    """One request on its way through the worker: progress to show, a flag to cancel, the outcome."""

    request: PageRequest
    owner: str  # the page session that asked; closing that page cancels its jobs
    number: int  # in the order submitted, for the log
    account: str = ""  # whose share of the queue it counts against: "user NAME" or "address HOST"
    future: Future[StudioImage] = field(default_factory=Future)
    steps_done: int = 0
    started: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)
    why_cancelled: str = "cancelled"

    def cancel(self, why: str = "cancelled") -> None:
        if not self.cancelled.is_set():
            self.why_cancelled = why
        self.cancelled.set()

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled("cancelled")

    def on_step(self, done: int, total: int) -> None:
        self.steps_done = done
        self.check()  # raising here stops the pipeline's loop after this step


def as_listed(message: str, request: PageRequest, lora_dir: Path | None) -> str:
    """`message` naming each upload by its file name and each LoRA as the page lists it, never by where the
    server keeps them."""
    for path in request.references:
        message = message.replace(str(path), path.name)
    if lora_dir is not None:
        for spec in request.loras:
            if spec.path.is_relative_to(lora_dir):
                message = message.replace(str(spec.path), spec.path.relative_to(lora_dir).as_posix())
        for folder in {str(lora_dir.resolve()), str(lora_dir)}:
            message = message.replace(folder, "the LoRA folder")
    return message


def page_message(error: BaseException) -> str:
    """A failure as the one line the page shows: ours say what to fix, others say what they are."""
    plain = isinstance(error, Cancelled | QueueFull)
    return printable_line(str(error) if plain else failure_text(error), MESSAGE_LIMIT)


class Studio:
    """Runs page requests on a loaded pipeline, writing each marked image into `out_dir`."""

    def __init__(
        self,
        generator: ImageGenerator,
        out_dir: Path,
        log: Callable[[str], None] = lambda _: None,
        *,
        limits: QueueLimits = QueueLimits(),  # noqa: B008 (frozen)
        lora_dir: Path | None = None,
    ) -> None:
        self.generator = generator
        self.out_dir = out_dir
        self.log = log  # one line per job: written, cancelled, dropped or failed
        self.limits = limits
        self.lora_dir = lora_dir  # messages name LoRAs as listed under it
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="studio-gpu")
        self._jobs: list[StudioJob] = []  # unfinished, in the order submitted: the queue
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)

    def submit(self, request: PageRequest, owner: str, account: str = "") -> StudioJob:
        """Queue `request` for page session `owner` of `account`; the job's future holds the image or the failure.
        Raises `QueueFull` when the page, the account or everyone has as many jobs as allowed."""
        limits = self.limits
        with self._lock:
            if sum(job.owner == owner for job in self._jobs) >= limits.per_session:
                raise QueueFull(
                    f"this page has {limits.per_session} images queued already, the most a page may have; "
                    "wait for one to finish, or Cancel"
                )
            if account and sum(job.account == account for job in self._jobs) >= limits.per_account:
                who = "you have" if account.startswith("user ") else "this address has"
                raise QueueFull(
                    f"{who} {limits.per_account} images queued already on all your pages, the most allowed; "
                    "wait for one to finish"
                )
            if len(self._jobs) >= limits.total:
                raise QueueFull(f"the queue is full ({limits.total} images waiting); try again in a while")
            job = StudioJob(request, owner, next(self._numbers), account)
            self._jobs.append(job)
        self._worker.submit(self._run, job)
        return job

    def ahead_of(self, job: StudioJob) -> int:
        """How many jobs run or wait before `job` (0 once it runs)."""
        with self._lock:
            return self._jobs.index(job) if job in self._jobs else 0

    def cancel_owner(self, owner: str, why: str = "cancelled") -> int:
        """Cancel every unfinished job of one page session; how many there were."""
        with self._lock:
            mine = [job for job in self._jobs if job.owner == owner]
        for job in mine:
            job.cancel(why)
        return len(mine)

    def message(self, error: BaseException, request: PageRequest) -> str:
        """The one line the page shows for a failure of `request`."""
        return as_listed(page_message(error), request, self.lora_dir)

    def rewrite(self, request: PageRequest) -> str:
        """The server's rewrite of the prompt, seeded with the request's seed, looking at its reference images."""
        # preflight checks an output it could write: one in --out-dir, which is writable (nothing is written).
        prepared = self._prepare(
            dataclasses.replace(request, upsample=True, rewrite=None), self.out_dir / "rewrite.png"
        )
        try:
            return self.generator.upsample_prompt(prepared)
        except InputError as error:
            raise InputError(as_listed(str(error), request, self.lora_dir)) from None

    def close(self) -> None:
        with self._lock:
            jobs = list(self._jobs)
        for job in jobs:
            job.cancel()
        self._worker.shutdown(wait=True, cancel_futures=False)

    def _run(self, job: StudioJob) -> None:
        what = f"job {job.number} (seed {job.request.seed})"
        try:
            if job.cancelled.is_set():
                self.log(f"{what}: dropped before it started: {job.why_cancelled}")
                job.future.set_exception(Cancelled("cancelled"))
                return
            job.started = True
            self.log(f"{what}: started, {job.request.steps} steps at {job.request.width}x{job.request.height}")
            image = self._make(job)
        except Cancelled:
            self.log(f"{what}: cancelled after {job.steps_done} of {job.request.steps} steps")
            job.future.set_exception(Cancelled("cancelled"))
        except BaseException as error:  # the page shows every failure; the worker lives on for the next job
            self.log(f"{what}: failed: {self.message(error, job.request)}")
            if not isinstance(error, ClientError):  # a bug: the operator needs the traceback, the page never sees it
                logger.exception("%s failed unexpectedly", what)
            job.future.set_exception(error)
        else:
            self.log(f"{what}: wrote {image.path.name} in {image.seconds:.2f} s")
            job.future.set_result(image)
        finally:
            with self._lock:
                self._jobs.remove(job)

    def _make(self, job: StudioJob) -> StudioImage:
        started = time.time()
        request = job.request
        # 128 random bits of its own: nobody guesses another's image from their own file's name.
        name = f"studio-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(16)}-seed{request.seed}.png"
        prepared = self._prepare(request, self.out_dir / name)
        conditioning = self._conditioning(prepared, request)
        job.check()
        image = self.generator.generate(prepared, conditioning.prompt_embeds, on_step=job.on_step)
        saved = self.generator.save(prepared, image, conditioning.upsampled_prompt)
        return StudioImage(saved.path, request, saved.upsampled_prompt, saved.notes, started, time.time())

    def _prepare(self, request: PageRequest, out: Path) -> PreparedJob:
        job = GenerationJob(
            prompt=request.prompt,
            out=out,
            seed=request.seed,
            steps=request.steps,
            guidance=request.guidance,
            height=request.height,
            width=request.width,
            images=request.references,
            loras=request.loras,
            upsample=request.upsample and request.rewrite is None,
        )
        try:
            return self.generator.prepare([job])[0]
        except InputError as error:
            raise InputError(as_listed(str(error), request, self.lora_dir)) from None

    def _conditioning(self, prepared: PreparedJob, request: PageRequest) -> Conditioning:
        """As the CLI fetches it; a rewrite shown on the page (perhaps edited) is used as the page shows it."""
        if request.upsample and request.rewrite is not None:
            as_shown = dataclasses.replace(prepared.job, prompt=request.rewrite)
            return Conditioning(self.generator.fetch_embeds(as_shown), request.rewrite)
        return self.generator.fetch_conditioning(prepared)
