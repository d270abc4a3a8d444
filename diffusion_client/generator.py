"""Make images from remote embeddings: a plain object over `Flux2Pipeline` and `RemoteTextEncoder`.

generator = ImageGenerator(pipeline, encoder, model_name="FLUX.2-dev")
for outcome in generator.run(generator.prepare(jobs)):
    ...  # GeneratedImage, or FailedJob for a job that failed on its own

For a list of jobs, the next prompt's embedding is fetched on a background thread while the current
image denoises, so the network round trip hides behind GPU work.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from diffusion_client.errors import (
    BadReplyError,
    ClientError,
    EncoderFailedError,
    EncoderRejectedError,
    InputError,
)
from diffusion_client.images import save_png
from diffusion_client.jobs import GenerationJob
from diffusion_client.preflight import PreparedJob, preflight
from diffusion_client.remote_encoder import RemoteTextEncoder

# Failures that concern one job only (its output could not be written, the encoder refused or failed on
# its prompt, its reply was corrupt): the run reports them and goes on. Anything else (the encoder out of
# reach, the wrong model, a bug) stops the run.
JOB_FAILURES: tuple[type[ClientError], ...] = (InputError, EncoderRejectedError, EncoderFailedError, BadReplyError)


@dataclass(frozen=True)
class GeneratedImage:
    job: GenerationJob
    path: Path


@dataclass(frozen=True)
class FailedJob:
    job: GenerationJob
    error: ClientError

    def __str__(self) -> str:
        return self.job.describe(str(self.error))


class ImageGenerator:
    """Generates prepared jobs with `pipeline`, a `Flux2Pipeline` loaded without its text encoder."""

    def __init__(self, pipeline: Any, encoder: RemoteTextEncoder, *, model_name: str, progress: bool = True) -> None:
        self.pipeline = pipeline
        self.encoder = encoder
        self.model_name = model_name
        self.pipeline.set_progress_bar_config(disable=not progress, desc="denoising", leave=False)

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
        )

    def fetch_embeds(self, job: GenerationJob) -> torch.Tensor:
        return self.encoder.encode([job.prompt], device=self.device, dtype=self.dtype)  # [1, 512, D]

    def generate(self, prepared: PreparedJob, prompt_embeds: torch.Tensor) -> Image.Image:
        """One image from already-fetched embeddings; the same seed gives the same pixels."""
        job = prepared.job
        result = self.pipeline(
            image=list(prepared.references) or None,
            prompt_embeds=prompt_embeds,
            height=job.height,
            width=job.width,
            num_inference_steps=job.steps,
            guidance_scale=job.guidance,
            generator=torch.Generator("cpu").manual_seed(job.seed),
        )
        image: Image.Image = result.images[0]
        return image

    def run(self, prepared_jobs: Sequence[PreparedJob]) -> Iterator[GeneratedImage | FailedJob]:
        """Generate and save each job in order, prefetching the next job's embedding.

        A job that fails on its own (`JOB_FAILURES`) is yielded as a `FailedJob` and the run goes on;
        any other error stops it.
        """
        for prepared in prepared_jobs:
            if not isinstance(prepared, PreparedJob):
                raise TypeError(f"run() takes what prepare() returns, not {type(prepared).__name__}")
        if not prepared_jobs:
            return
        prefetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch-embeds")
        try:
            upcoming: Future[torch.Tensor] = prefetcher.submit(self.fetch_embeds, prepared_jobs[0].job)
            for index, prepared in enumerate(prepared_jobs):
                current = upcoming
                if index + 1 < len(prepared_jobs):
                    upcoming = prefetcher.submit(self.fetch_embeds, prepared_jobs[index + 1].job)
                try:
                    image = self.generate(prepared, current.result())
                    path = save_png(image, prepared.job.out, self.metadata(prepared.job))
                except JOB_FAILURES as error:
                    yield FailedJob(prepared.job, error)
                    continue
                yield GeneratedImage(prepared.job, path)
        finally:
            # Do not wait for a fetch in flight (Ctrl-C would hang up to its deadline); closing the encoder
            # cancels it.
            prefetcher.shutdown(wait=False, cancel_futures=True)

    def metadata(self, job: GenerationJob) -> dict[str, Any]:
        info = self.encoder.info()
        return {
            "prompt": job.prompt,
            "seed": job.seed,
            "steps": job.steps,
            "guidance": job.guidance,
            "size": f"{job.width}x{job.height}",
            "model": self.model_name,
            "encoder": f"{self.encoder.target} ({info.model_name}, {info.fingerprint[:16]})",
            # int8 and nf4 encoders give embeddings close to, not equal to, bf16 ones: record which made this.
            "encoder_quantization": info.quantization,
            "reference_images": [str(path) for path in job.images],
        }
