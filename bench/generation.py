"""What an image costs: through the split client (`ImageGenerator` with remote embeddings), and diffusers' way.

The client's side is timed step by step inside the pipeline, against the bare transformer forward for the same
shapes; diffusers' monolithic pipeline is timed per image, one prompt at a time, as it is normally used.
"""

from __future__ import annotations

import gc
import logging
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from bench.harness import median_seconds, peak_memory, reset_peak_memory, synchronize
from diffusion_client.generator import ImageGenerator
from diffusion_client.jobs import GenerationJob
from diffusion_client.remote_encoder import RemoteTextEncoder

log = logging.getLogger(__name__)

GUIDANCE = 4.0
PROMPTS = [
    "a red fox in fresh snow, golden hour",
    "a lighthouse on a cliff at dusk, oil painting",
    "a bowl of ramen on a wooden table, studio photograph",
    "an astronaut reading a newspaper in a Paris cafe",
    "a watercolor map of an imaginary island with a volcano",
    "a robot watering tomato plants in a greenhouse",
    "a neon-lit street market in the rain at night",
    "a macro photograph of a dragonfly on a reed",
]


class StepTimer:
    """Stands in for a pipeline and records when each denoising step ends (`callback_on_step_end`)."""

    def __init__(self, pipeline: Any, device: str) -> None:
        self._pipeline = pipeline
        self._device = device
        self.step_ends: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipeline, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.step_ends = []
        return self._pipeline(*args, callback_on_step_end=self._on_step_end, **kwargs)

    def _on_step_end(self, _pipeline: Any, _step: int, _timestep: Any, _tensors: dict[str, Any]) -> dict[str, Any]:
        synchronize(self._device)
        self.step_ends.append(time.perf_counter())
        return {}

    def step_seconds(self) -> list[float]:
        """Durations of steps 2..N; step 1 also holds the call's setup, so it is left out."""
        return [later - earlier for earlier, later in zip(self.step_ends, self.step_ends[1:], strict=False)]


def prompts_for(count: int) -> list[str]:
    """`count` distinct prompts: the fixed ones in turn, marked as variations once they run out."""
    return [
        PROMPTS[i % len(PROMPTS)] + (f", variation {i // len(PROMPTS)}" if i >= len(PROMPTS) else "")
        for i in range(count)
    ]


def bare_transformer_inputs(pipeline: Any, prompt_embeds: torch.Tensor, height: int, width: int) -> dict[str, Any]:
    """The keyword arguments `Flux2Pipeline.__call__` gives the transformer for one text-to-image step."""
    from diffusers import Flux2Pipeline

    transformer = pipeline.transformer
    batch, device, dtype = prompt_embeds.shape[0], prompt_embeds.device, prompt_embeds.dtype
    scale = pipeline.vae_scale_factor * 2  # VAE downscale, then 2x2 patches
    latents = torch.randn(batch, transformer.config.in_channels, height // scale, width // scale, device=device)
    latents = latents.to(dtype)
    return {
        "hidden_states": Flux2Pipeline._pack_latents(latents).to(transformer.dtype),
        "timestep": torch.full((batch,), 500.0, device=device, dtype=dtype) / 1000,
        "guidance": torch.full((batch,), GUIDANCE, device=device, dtype=torch.float32),
        "encoder_hidden_states": prompt_embeds,
        "txt_ids": Flux2Pipeline._prepare_text_ids(prompt_embeds).to(device),
        "img_ids": Flux2Pipeline._prepare_latent_ids(latents).to(device),
        "joint_attention_kwargs": None,
        "return_dict": False,
    }


@dataclass(frozen=True)
class Settings:
    """One run's image size, steps and batch; images are written to `out_dir`."""

    device: str
    dtype: torch.dtype
    height: int
    width: int
    steps: int
    batch_prompts: int
    bare_repeats: int
    out_dir: Path

    def job(self, prompt: str, index: int) -> GenerationJob:
        return GenerationJob(
            prompt=prompt,
            out=self.out_dir / f"remote-{index:03d}.png",
            seed=index,
            steps=self.steps,
            guidance=GUIDANCE,
            height=self.height,
            width=self.width,
        )


def measure_client(pipeline: Any, encoder: RemoteTextEncoder, model_name: str, settings: Settings) -> dict[str, Any]:
    """Steps, bare forward, peak memory and batch wall time through `ImageGenerator` with remote embeddings."""
    device = settings.device
    timer = StepTimer(pipeline, device)
    timed = ImageGenerator(timer, encoder, model_name=model_name, device=device, dtype=settings.dtype, progress=False)
    batch = ImageGenerator(
        pipeline, encoder, model_name=model_name, device=device, dtype=settings.dtype, progress=False
    )
    prompts = prompts_for(settings.batch_prompts)
    jobs = [settings.job(prompt, index) for index, prompt in enumerate(prompts)]
    for job in jobs:
        job.check(batch.size_multiple)
    batch.check_compatible()

    embeds = encoder.encode([prompts[0]], device=device, dtype=settings.dtype)
    with torch.no_grad():
        log.info("warm-up image (2 steps)")
        timed.generate(replace(jobs[0], steps=2), embeds)

        log.info("one image at %dx%d, %d steps, timing each step", settings.width, settings.height, settings.steps)
        gc.collect()
        reset_peak_memory(device)
        started = time.perf_counter()
        timed.generate(jobs[0], embeds)
        synchronize(device)
        finished = time.perf_counter()
        memory = peak_memory(device)
        steps = timer.step_seconds()

        log.info("bare transformer forward, same shapes")
        inputs = bare_transformer_inputs(pipeline, embeds, settings.height, settings.width)
        bare = median_seconds(lambda: pipeline.transformer(**inputs), device, warmup=1, repeats=settings.bare_repeats)

    log.info("batch of %d prompts through ImageGenerator.run (remote, prefetching)", len(jobs))
    started_batch = time.perf_counter()
    for _ in batch.run(jobs):
        pass
    synchronize(device)
    batch_s = time.perf_counter() - started_batch

    seconds_per_step = statistics.median(steps)
    return {
        "seconds_per_step": seconds_per_step,
        "step_seconds": [round(value, 6) for value in steps],
        "bare_transformer_step_s": bare,
        "step_over_bare": seconds_per_step / bare,
        "image_s": finished - started,
        "decode_to_pil_s": finished - timer.step_ends[-1],
        **memory,
        "remote": {
            "seconds_per_image": batch_s / len(jobs),
            "total_s": batch_s,
            "images": len(jobs),
            "how": "ImageGenerator.run: embeddings over gRPC, the next prompt's fetched while the current denoises",
        },
    }


def measure_monolithic(pipe: Any, settings: Settings) -> dict[str, Any]:
    """diffusers' own way: `pipe(prompt=...)` with the text encoder in process, one prompt at a time."""
    pipe.set_progress_bar_config(disable=True)
    prompts = prompts_for(settings.batch_prompts)

    def make(prompt: str, index: int, steps: int) -> Any:
        return pipe(
            prompt=prompt,
            height=settings.height,
            width=settings.width,
            num_inference_steps=steps,
            guidance_scale=GUIDANCE,
            generator=torch.Generator("cpu").manual_seed(index),
        ).images[0]

    log.info("monolithic warm-up image (2 steps)")
    make(prompts[0], 0, 2)
    log.info("monolithic batch of %d prompts, one at a time", len(prompts))
    started = time.perf_counter()
    for index, prompt in enumerate(prompts):
        make(prompt, index, settings.steps).save(settings.out_dir / f"monolithic-{index:03d}.png")
    synchronize(settings.device)
    total = time.perf_counter() - started
    return {"seconds_per_image": total / len(prompts), "total_s": total, "images": len(prompts)}
