"""Make images from remote embeddings: a plain object over `Flux2Pipeline` (or `Flux2KleinPipeline`) and
`RemoteTextEncoder`.

generator = ImageGenerator(pipeline, encoder, model_name="FLUX.2-dev")
for outcome in generator.run(generator.prepare(jobs)):
    ...  # GeneratedImage, or FailedJob for a job that failed on its own

For a list of jobs, the next prompt's embedding (and, for a job that upsamples, its rewritten prompt first)
is fetched on a background thread while the current image denoises, so the server's work hides behind GPU work;
and each image is marked (`diffusion_client.provenance`) and written on another thread while the next one
denoises, so an outcome is yielded once the image after it has been generated (or the run has ended).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from diffusion_client.atomic_files import write_bytes
from diffusion_client.encoder_client.client import RemoteTextEncoder
from diffusion_client.encoder_client.upsampling import max_new_tokens_for
from diffusion_client.errors import (
    BadReplyError,
    ClientError,
    EncoderFailedError,
    EncoderRejectedError,
    InputError,
)
from diffusion_client.generation.jobs import GenerationJob
from diffusion_client.generation.preflight import PreparedJob, preflight
from diffusion_client.lora.adapters import LoraAdapters
from diffusion_client.provenance.marking import ImageRecord, MarkedImage, Marker, MarkingOptions

# Failures that concern one job only (its output could not be written, the encoder refused or failed on
# its prompt, its reply was corrupt): the run reports them and goes on. Anything else (the encoder out of
# reach, the wrong model, a bug) stops the run.
JOB_FAILURES: tuple[type[ClientError], ...] = (InputError, EncoderRejectedError, EncoderFailedError, BadReplyError)


@dataclass(frozen=True)
class GeneratedImage:
    job: GenerationJob
    path: Path
    upsampled_prompt: str | None = None  # what the image was generated from, for a job that upsamples
    notes: tuple[str, ...] = ()  # marks that could not be made, and why


@dataclass(frozen=True)
class Conditioning:
    """What a job's image is generated from: the embedding of its prompt, or of the server's rewrite of it."""

    prompt_embeds: torch.Tensor  # [1, 512, D]
    upsampled_prompt: str | None = None  # the rewrite, for a job that upsamples


@dataclass(frozen=True)
class FailedJob:
    job: GenerationJob
    error: ClientError

    def __str__(self) -> str:
        return self.job.describe(str(self.error))


class ImageGenerator:
    """Generates prepared jobs with `pipeline`, a `Flux2Pipeline` loaded without its text encoder.

    `marker` marks each image before it is written; by default with every mark (`MarkingOptions()`).
    """

    def __init__(
        self,
        pipeline: Any,
        encoder: RemoteTextEncoder,
        *,
        model_name: str,
        progress: bool = True,
        marker: Marker | None = None,
        reference_label: Callable[[Path], str] = str,
    ) -> None:
        self.pipeline = pipeline
        # How metadata names a reference image: its path as given, or (the page's uploads) only its file name.
        self.reference_label = reference_label
        self.encoder = encoder
        self.model_name = model_name
        self.marker = marker or Marker.start(MarkingOptions())
        self._negative_embeds: torch.Tensor | None = None
        self._negative_lock = threading.Lock()
        self.pipeline.set_progress_bar_config(disable=not progress, desc="denoising", leave=False)
        self.adapters = LoraAdapters(pipeline)

    @property
    def device(self) -> torch.device:
        """Where `Flux2Pipeline` runs, and so where it needs `prompt_embeds` (it does not move them)."""
        device: torch.device = self.pipeline._execution_device
        return device

    @property
    def dtype(self) -> torch.dtype:
        """The transformer's compute dtype; `Flux2Pipeline` makes its latents in `prompt_embeds`' dtype."""
        dtype: torch.dtype = self.pipeline.transformer.dtype
        return dtype

    def prepare(self, jobs: Sequence[GenerationJob]) -> list[PreparedJob]:
        """`preflight` against this pipeline's configs and this encoder."""
        return preflight(
            jobs,
            vae_config=self.pipeline.vae.config,
            transformer_config=self.pipeline.transformer.config,
            encoder=self.encoder,
            pipeline=type(self.pipeline).__name__,
        )

    def fetch_embeds(self, job: GenerationJob) -> torch.Tensor:
        return self.encoder.encode([job.prompt], device=self.device, dtype=self.dtype)  # [1, 512, D]

    @property
    def upsample_max_new_tokens(self) -> int:
        """Tokens asked for per rewritten prompt: diffusers' 512, or fewer where the server allows fewer."""
        return max_new_tokens_for(self.encoder.upsampling_info())

    def upsample_prompt(self, prepared: PreparedJob) -> str:
        """The server's rewrite of the job's prompt, seeded with the job's seed, looking at its reference files."""
        job = prepared.job
        references = [reference.data for reference in prepared.reference_files]
        return self.encoder.upsample(
            job.prompt,
            [references] if references else None,
            temperature=job.upsample_temperature,
            seed=job.seed,
            max_new_tokens=self.upsample_max_new_tokens,
        )[0]

    def fetch_conditioning(self, prepared: PreparedJob) -> Conditioning:
        """The prompt to generate from (upsampled first if the job asks) and its embedding."""
        job = prepared.job
        if self.runs_negative_prompt and job.guidance > 1:
            self.negative_embeds()  # fetched here, beside the first prompt, not on the denoising thread
        if not job.upsample:
            return Conditioning(self.fetch_embeds(job))
        prompt = self.upsample_prompt(prepared)
        return Conditioning(self.fetch_embeds(dataclasses.replace(job, prompt=prompt)), prompt)

    @property
    def runs_negative_prompt(self) -> bool:
        """klein's base (undistilled) variants run classifier-free guidance against the embedding of ""."""
        return type(self.pipeline).__name__ == "Flux2KleinPipeline" and not self.pipeline.config.is_distilled

    def negative_embeds(self) -> torch.Tensor:
        """The embedding of "", diffusers' negative prompt for klein's guidance: fetched once, then kept."""
        with self._negative_lock:  # the prefetch thread and the denoising one may both ask first
            if self._negative_embeds is None:
                self._negative_embeds = self.encoder.encode([""], device=self.device, dtype=self.dtype)  # [1, 512, D]
            return self._negative_embeds

    def generate(
        self,
        prepared: PreparedJob,
        prompt_embeds: torch.Tensor,
        on_step: Callable[[int, int], None] | None = None,
        *,
        on_latents: Callable[[int, torch.Tensor], None] | None = None,
        negative_embeds: torch.Tensor | None = None,
    ) -> Image.Image:
        """One image from already-fetched embeddings; the same seed gives the same pixels.

        `on_step(done, total)` is called after each denoising step, then `on_latents(done, latents)` with the
        packed latents (for previews); an exception either raises stops the image. `negative_embeds` replaces
        the embedding of "" for models that run a negative prompt.
        """
        job = prepared.job
        self.adapters.activate(prepared.loras)
        guidance: dict[str, Any] = {"guidance_scale": job.guidance}
        if self.runs_negative_prompt and job.guidance > 1:
            negative = negative_embeds if negative_embeds is not None else self.negative_embeds()
            guidance["negative_prompt_embeds"] = negative
        if on_step is not None or on_latents is not None:
            guidance["callback_on_step_end"] = _step_callback(on_step, on_latents, job.steps)
            guidance["callback_on_step_end_tensor_inputs"] = ["latents"]
        result = self.pipeline(
            image=list(prepared.references) or None,
            prompt_embeds=prompt_embeds,
            height=job.height,
            width=job.width,
            num_inference_steps=job.steps,
            generator=torch.Generator("cpu").manual_seed(job.seed),
            **guidance,
        )
        image: Image.Image = result.images[0]
        return image

    def run(self, prepared_jobs: Sequence[PreparedJob]) -> Iterator[GeneratedImage | FailedJob]:
        """Generate, mark and save each job in order, prefetching the next job's embedding.

        A job that fails on its own (`JOB_FAILURES`) is yielded as a `FailedJob` and the run goes on;
        any other error stops it.
        """
        for prepared in prepared_jobs:
            if not isinstance(prepared, PreparedJob):
                raise TypeError(f"run() takes what prepare() returns, not {type(prepared).__name__}")
        if not prepared_jobs:
            return
        prefetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch-embeds")
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mark-and-write")
        writing: Future[GeneratedImage | FailedJob] | None = None  # the previous image, marked and written meanwhile
        try:
            upcoming: Future[Conditioning] = prefetcher.submit(self.fetch_conditioning, prepared_jobs[0])
            for index, prepared in enumerate(prepared_jobs):
                current = upcoming
                if index + 1 < len(prepared_jobs):
                    upcoming = prefetcher.submit(self.fetch_conditioning, prepared_jobs[index + 1])
                try:
                    conditioning = current.result()
                    image = self.generate(prepared, conditioning.prompt_embeds)
                except JOB_FAILURES as error:
                    if writing is not None:
                        yield writing.result()
                        writing = None
                    yield FailedJob(prepared.job, error)
                    continue
                written = writer.submit(self._save_or_fail, prepared, image, conditioning.upsampled_prompt)
                if writing is not None:
                    yield writing.result()
                writing = written
            if writing is not None:
                yield writing.result()
                writing = None
        finally:
            # Do not wait for a fetch in flight (Ctrl-C would hang up to its deadline); closing the encoder
            # cancels it. An image being written is finished: its file is then whole or absent, never partial.
            prefetcher.shutdown(wait=False, cancel_futures=True)
            writer.shutdown(wait=True)

    def _save_or_fail(
        self, prepared: PreparedJob, image: Image.Image, upsampled_prompt: str | None
    ) -> GeneratedImage | FailedJob:
        try:
            return self.save(prepared, image, upsampled_prompt)
        except JOB_FAILURES as error:
            return FailedJob(prepared.job, error)

    def save(self, prepared: PreparedJob, image: Image.Image, upsampled_prompt: str | None = None) -> GeneratedImage:
        """Mark `image` and write it to the job's output, atomically; a write that fails is the job's failure."""
        job = prepared.job
        marked = self.mark(prepared, image, upsampled_prompt)
        try:
            write_bytes(job.out, marked.data)
        except OSError as error:
            raise InputError(f"cannot write {job.out}: {error.strerror or error}") from error
        return GeneratedImage(job, job.out, upsampled_prompt, marked.notes)

    def mark(
        self,
        prepared: PreparedJob,
        image: Image.Image,
        upsampled_prompt: str | None = None,
        *,
        quality: int | None = None,
    ) -> MarkedImage:
        """`image` as the bytes of its marked file in the job's output format (`quality` for JPEG/WebP)."""
        parameters = self.metadata(prepared, upsampled_prompt)
        record = ImageRecord(
            model=self.model_name,
            parameters=parameters,
            prompt=parameters["prompt"],
            references=prepared.job.images,
            decoded_references=prepared.references,
        )
        return self.marker.mark(image, prepared.job.out, record, quality=quality)

    def metadata(self, prepared: PreparedJob, upsampled_prompt: str | None = None) -> dict[str, Any]:
        """How the image was made; `prompt` is what it was generated from, the rewrite if one was made."""
        job = prepared.job
        info = self.encoder.info()
        upsampling: dict[str, Any] = {}
        if upsampled_prompt is not None:
            upsampling = {
                "original_prompt": job.prompt,
                "upsample_temperature": job.upsample_temperature,
                "upsample_max_new_tokens": self.upsample_max_new_tokens,
            }
        return {
            "prompt": job.prompt if upsampled_prompt is None else upsampled_prompt,
            **upsampling,
            "seed": job.seed,
            "steps": job.steps,
            "guidance": job.guidance,
            "size": f"{job.width}x{job.height}",
            "model": self.model_name,
            "encoder": f"{self.encoder.target} ({info.model_name}, {info.fingerprint[:16]})",
            # int8 and nf4 encoders give embeddings close to, not equal to, bf16 ones: record which made this.
            "encoder_quantization": info.quantization,
            "reference_images": [self.reference_label(path) for path in job.images],
            "loras": [applied.describe() for applied in prepared.loras],
        }


def _step_callback(
    on_step: Callable[[int, int], None] | None,
    on_latents: Callable[[int, torch.Tensor], None] | None,
    total: int,
) -> Callable[..., dict[str, Any]]:
    """diffusers' `callback_on_step_end`, reporting steps done (and the latents); it hands them back untouched."""

    def callback(_pipeline: Any, step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if on_step is not None:
            on_step(step + 1, total)
        if on_latents is not None:
            on_latents(step + 1, tensors["latents"])
        return tensors

    return callback
