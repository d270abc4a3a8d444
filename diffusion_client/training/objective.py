"""One training loss, as diffusers' FLUX.2 LoRA scripts compute it (`train_dreambooth_lora_flux2.py`, and
`_img2img.py` for edits): rectified flow on the VAE's normalised, patchified latents.

u ~ `compute_density_for_timestep_sampling` (uniform by default), t = the scheduler's training timestep at u,
sigma = t / 1000; the input is (1 - sigma) * latents + sigma * noise, packed into tokens with
`Flux2Pipeline._pack_latents` and positioned with `_prepare_latent_ids` / `_prepare_text_ids`; the
transformer predicts the velocity noise - latents at `timestep=t / 1000` with the guidance embedding; the loss
is the mean squared error weighted by `compute_loss_weighting_for_sd3`. An edit's reference latents join as
clean tokens after the target's, positioned by `_prepare_image_ids` (time offset 10, 20, ...), and only the
target's tokens count in the loss. Randomness comes from one generator per step, so a step gives the same
loss whenever it runs (a resumed run ends where an uninterrupted one does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Batch:
    latents: torch.Tensor  # [B, C, h, w], normalised and patchified
    prompt_embeds: torch.Tensor  # [B, 512, D]
    references: tuple[torch.Tensor, ...] = ()  # each [B, C, h', w'], for an edit


@dataclass(frozen=True)
class Objective:
    """The settings of the loss: timestep sampling, its weighting, and the guidance the model is given."""

    timesteps: torch.Tensor  # the scheduler's 1000 training timesteps, descending
    sigmas: torch.Tensor  # sigma for each of them
    guidance: float = 1.0
    weighting_scheme: str = "none"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29

    @classmethod
    def from_scheduler(cls, scheduler_dir: Any, **settings: Any) -> Objective:
        from diffusers import FlowMatchEulerDiscreteScheduler

        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(scheduler_dir)
        # As diffusers' `get_sigmas`: the sigma at each timestep's index (a terminal 0, where present, has none).
        timesteps = scheduler.timesteps.clone()
        return cls(timesteps, scheduler.sigmas[: len(timesteps)].clone(), **settings)

    def loss(self, transformer: Any, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        from diffusers import Flux2Pipeline
        from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

        latents = batch.latents
        size, device, dtype = latents.shape[0], latents.device, latents.dtype
        noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(device, dtype)
        u = compute_density_for_timestep_sampling(
            self.weighting_scheme,
            batch_size=size,
            logit_mean=self.logit_mean,
            logit_std=self.logit_std,
            mode_scale=self.mode_scale,
            generator=generator,
        )
        indices = (u * len(self.timesteps)).long().clamp(max=len(self.timesteps) - 1)
        timesteps = self.timesteps[indices].to(device)
        sigmas = self.sigmas[indices].to(device, dtype).view(-1, 1, 1, 1)
        noisy = (1.0 - sigmas) * latents + sigmas * noise
        tokens = Flux2Pipeline._pack_latents(noisy)  # [B, h*w, C]
        image_ids = Flux2Pipeline._prepare_latent_ids(latents).to(device)
        target_tokens = tokens.shape[1]
        if batch.references:
            references = [Flux2Pipeline._pack_latents(reference) for reference in batch.references]
            reference_ids = Flux2Pipeline._prepare_image_ids([reference[:1] for reference in batch.references])
            tokens = torch.cat([tokens, *references], dim=1)
            image_ids = torch.cat([image_ids, reference_ids.to(device).expand(size, -1, -1)], dim=1)
        guidance = None  # klein's transformers have no guidance embedding
        if transformer.config.guidance_embeds:
            guidance = torch.full((size,), self.guidance, device=device, dtype=torch.float32)
        prediction = transformer(
            hidden_states=tokens,
            encoder_hidden_states=batch.prompt_embeds,
            timestep=timesteps / 1000,
            guidance=guidance,
            txt_ids=Flux2Pipeline._prepare_text_ids(batch.prompt_embeds).to(device),
            img_ids=image_ids,
            return_dict=False,
        )[0][:, :target_tokens]
        prediction = Flux2Pipeline._unpack_latents_with_ids(prediction, image_ids[:, :target_tokens])  # [B, C, h, w]
        weighting = compute_loss_weighting_for_sd3(self.weighting_scheme, sigmas=sigmas)
        squared = (weighting.float() * (prediction.float() - (noise - latents).float()) ** 2).reshape(size, -1)
        return squared.mean(dim=1).mean()
