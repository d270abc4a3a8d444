"""Partial images: the latents between denoising steps decoded as the pipeline decodes its final ones.

The steps are the tail of `Flux2Pipeline.__call__` (and `Flux2KleinPipeline`'s, which shares them): unpack
the token sequence to a grid, undo the VAE's batch norm, unpatchify, decode, postprocess. The latents are only
read, never changed, so a streamed image's final pixels equal an unstreamed one's.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image


def preview_steps(total_steps: int, partial_images: int) -> frozenset[int]:
    """After which steps (1-based) to decode a preview: `partial_images` of them, spread evenly, never the last."""
    if partial_images <= 0 or total_steps <= 1:
        return frozenset()
    count = min(partial_images, total_steps - 1)
    return frozenset(max(1, round(total_steps * (index + 1) / (count + 1))) for index in range(count))


@torch.no_grad()
def decode_preview(pipeline: Any, latents: torch.Tensor, height: int, width: int) -> Image.Image:
    """The image the packed `latents` [1, H*W, C] show now, at `height` x `width` pixels."""
    vae = pipeline.vae
    scale = pipeline.vae_scale_factor * 2
    grid = torch.empty(
        1, latents.shape[-1], height // scale, width // scale, device="meta"
    )  # [1, C, h, w]: only its shape
    latent_ids = pipeline._prepare_latent_ids(grid).to(latents.device)
    unpacked = pipeline._unpack_latents_with_ids(latents, latent_ids)  # [1, C, h, w]
    mean = vae.bn.running_mean.view(1, -1, 1, 1).to(unpacked.device, unpacked.dtype)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(
        unpacked.device, unpacked.dtype
    )
    unpatched = pipeline._unpatchify_latents(unpacked * std + mean)
    decoded = vae.decode(unpatched.to(next(vae.parameters()).device), return_dict=False)[0]
    image: Image.Image = pipeline.image_processor.postprocess(decoded, output_type="pil")[0]
    return image
