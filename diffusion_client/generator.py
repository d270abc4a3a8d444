"""Make images from remote embeddings: a plain object over `Flux2Pipeline` and `RemoteTextEncoder`.

For a list of jobs, the next prompt's embedding is fetched on a background thread while the
current image denoises, so the network round trip hides behind GPU work.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from diffusion_client.images import load_reference_image, save_png
from diffusion_client.jobs import GenerationJob
from diffusion_client.pipeline import joint_attention_dim, size_multiple
from diffusion_client.remote_encoder import RemoteTextEncoder
from shared.defaults import DEFAULT_HIDDEN_STATE_LAYERS


@dataclass(frozen=True)
class GeneratedImage:
    job: GenerationJob
    path: Path


def validate_jobs(jobs: Sequence[GenerationJob], size_multiple: int) -> None:
    """Check sizes, steps, seeds and reference images of every job before any GPU time is spent."""
    for job in jobs:
        job.check(size_multiple)
        for path in job.images:
            load_reference_image(path)


class ImageGenerator:
    def __init__(
        self,
        pipeline: Any,
        encoder: RemoteTextEncoder,
        *,
        model_name: str,
        device: torch.device | str,
        dtype: torch.dtype,
        progress: bool = True,
    ) -> None:
        self.pipeline = pipeline
        self.encoder = encoder
        self.model_name = model_name
        # Flux2Pipeline uses `prompt_embeds` where they are, so they must arrive on its device and dtype.
        self.device = torch.device(device)
        self.dtype = dtype
        self.pipeline.set_progress_bar_config(disable=not progress, desc="denoising", leave=False)

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this: the VAE's downscale times the 2x2 latent patch."""
        return size_multiple(self.pipeline.vae.config)

    def check_compatible(self, layers: Sequence[int] = DEFAULT_HIDDEN_STATE_LAYERS) -> None:
        """Refuse before any denoising if the server's embeddings cannot feed this transformer."""
        self.encoder.check_fits(joint_attention_dim(self.pipeline.transformer.config), layers)

    def fetch_embeds(self, job: GenerationJob) -> torch.Tensor:
        return self.encoder.encode([job.prompt], device=self.device, dtype=self.dtype)

    def generate(self, job: GenerationJob, prompt_embeds: torch.Tensor) -> Image.Image:
        """One image from already-fetched embeddings; the same seed gives the same pixels."""
        references = [load_reference_image(path) for path in job.images]
        result = self.pipeline(
            image=references or None,
            prompt_embeds=prompt_embeds,
            height=job.height,
            width=job.width,
            num_inference_steps=job.steps,
            guidance_scale=job.guidance,
            generator=torch.Generator("cpu").manual_seed(job.seed),
        )
        image: Image.Image = result.images[0]
        return image

    def run(self, jobs: Sequence[GenerationJob]) -> Iterator[GeneratedImage]:
        """Generate and save each job in order, prefetching the next job's embedding."""
        validate_jobs(jobs, self.size_multiple)
        self.check_compatible()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch-embeds") as prefetcher:
            upcoming: Future[torch.Tensor] = prefetcher.submit(self.fetch_embeds, jobs[0])
            for index, job in enumerate(jobs):
                prompt_embeds = upcoming.result()
                if index + 1 < len(jobs):
                    upcoming = prefetcher.submit(self.fetch_embeds, jobs[index + 1])
                image = self.generate(job, prompt_embeds)
                yield GeneratedImage(job, save_png(image, job.out, self.metadata(job)))

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
            "reference_images": [str(path) for path in job.images],
        }
