"""Validation images during training, made through `flux2-generate`'s own path (`ImageGenerator`, preflight,
PNG metadata) from the transformer being trained, its adapters active."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from diffusion_client.encoder_client.client import RemoteTextEncoder
from diffusion_client.generation.generator import FailedJob, ImageGenerator
from diffusion_client.generation.jobs import GenerationJob
from diffusion_client.provenance.marking import Marker, MarkingOptions
from diffusion_client.training.config import TrainConfig


class Validator:
    """Writes `<out>/validation/step-NNNNNN.png`; the VAE loads on first use and stays on the CPU between uses."""

    def __init__(self, config: TrainConfig, encoder: RemoteTextEncoder) -> None:
        self._config = config
        self._encoder = encoder
        self._vae: Any = None

    def __call__(self, transformer: Any, step: int) -> Path:
        import diffusers
        from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler

        from diffusion_client.generation.pipeline import model_kind

        config = self._config
        assert config.validation_prompt is not None
        dtype = torch.bfloat16 if config.device.startswith("cuda") else torch.float32
        if self._vae is None:
            self._vae = AutoencoderKLFlux2.from_pretrained(config.model / "vae", dtype=dtype)
        self._vae.to(config.device)
        kind = model_kind(config.model)  # Flux2Pipeline, or Flux2KleinPipeline and whether it is distilled
        klein = {"is_distilled": kind.distilled} if kind.pipeline == "Flux2KleinPipeline" else {}
        pipeline = getattr(diffusers, kind.pipeline)(
            scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(config.model / "scheduler"),
            vae=self._vae,
            text_encoder=None,
            tokenizer=None,
            transformer=transformer,
            **klein,
        )
        job = GenerationJob(
            prompt=config.validation_prompt,
            out=config.out / "validation" / f"step-{step:06d}.png",
            seed=config.seed,
            steps=config.validation_steps,
            guidance=kind.guidance,
            height=config.resolution,
            width=config.resolution,
        )
        # Watermark and IPTC, but no C2PA: nothing in a training run should need a writable config folder.
        marker = Marker.start(MarkingOptions(c2pa=False))
        generator = ImageGenerator(
            pipeline, self._encoder, model_name=config.model.resolve().name, progress=False, marker=marker
        )
        was_training = transformer.training
        transformer.eval()
        try:
            (outcome,) = list(generator.run(generator.prepare([job])))
        finally:
            transformer.train(was_training)
            self._vae.to("cpu")
        if isinstance(outcome, FailedJob):
            raise outcome.error
        return outcome.path
