"""Each training image through the VAE once, at the training resolution, cached on disk.

Latents are made as `Flux2Pipeline` makes a reference image's (`_encode_vae_image`: the distribution's mode,
2x2 patchified, normalised by the VAE's batch-norm statistics), which is what diffusers' FLUX.2 LoRA scripts
train on. Files sit under `<cache>/latents/<vae fingerprint>/<image sha256>-<resolution>`; the VAE is only
loaded when some image is not cached, and leaves the device afterwards.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from diffusion_client.generation.references import load_reference_image
from diffusion_client.training.disk_cache import read_cached, write_atomically
from shared.fingerprint import weights_fingerprint

KEY = "latents"


def square_pixels(path: Path, resolution: int) -> torch.Tensor:
    """The image scaled so its shorter side is `resolution`, centre-cropped square, in [-1, 1]: [3, R, R]."""
    image = load_reference_image(path, "training image")
    scale = resolution / min(image.size)
    width, height = max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))
    image = image.resize((width, height), Image.Resampling.LANCZOS)
    left, top = (width - resolution) // 2, (height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def vae_fingerprint(model: Path) -> str:
    vae_dir = model / "vae"
    return weights_fingerprint(vae_dir, [(vae_dir / "config.json").read_bytes()])


def image_latents(
    paths: Iterable[Path], model: Path, resolution: int, cache: Path, device: str, dtype: torch.dtype
) -> tuple[dict[Path, torch.Tensor], int]:
    """`{path: latents [C*4, R/16, R/16]}` in float32 on the CPU, and how many the VAE encoded this run."""
    folder = cache / "latents" / vae_fingerprint(model)[:32]
    found: dict[Path, torch.Tensor] = {}
    missing: dict[Path, Path] = {}
    for path in dict.fromkeys(paths):
        target = folder / f"{hashlib.sha256(path.read_bytes()).hexdigest()}-{resolution}.safetensors"
        cached = read_cached(target, KEY)
        if cached is None:
            missing[path] = target
        else:
            found[path] = cached
    if missing:
        pipeline = _vae_pipeline(model, device, dtype)
        try:
            with torch.no_grad():
                for path, target in missing.items():
                    pixels = square_pixels(path, resolution).unsqueeze(0).to(device, dtype)  # [1, 3, R, R]
                    latents = pipeline._encode_vae_image(pixels, generator=None)[0].float().cpu()
                    write_atomically({KEY: latents}, target)
                    found[path] = latents
        finally:
            pipeline.vae.to("cpu")
            del pipeline
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    return found, len(missing)


def _vae_pipeline(model: Path, device: str, dtype: torch.dtype) -> Any:
    """A `Flux2Pipeline` holding only the VAE, for its own `_encode_vae_image`."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Pipeline

    vae = AutoencoderKLFlux2.from_pretrained(model / "vae", dtype=dtype).to(device).eval()
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(model / "scheduler")
    return Flux2Pipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, transformer=None)
