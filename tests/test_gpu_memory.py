"""FLUX.2-dev's DiT in NF4 plus its VAE fit a 24 GB GPU, decode included (random weights, full shapes)."""

from __future__ import annotations

import gc

import pytest
import torch

GIB = 1024**3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nf4_full_size_transformer_with_vae_decode_stays_under_24_gib() -> None:
    from bench.full_size import (
        FLUX2_DEV_TRANSFORMER_CONFIG,
        flux2_pipeline_without_text_encoder,
        random_nf4_transformer,
        random_vae,
    )

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    transformer = random_nf4_transformer("cuda", torch.bfloat16)
    pipeline = flux2_pipeline_without_text_encoder(transformer, random_vae("cuda", torch.bfloat16))
    pipeline.set_progress_bar_config(disable=True)
    embed_dim = FLUX2_DEV_TRANSFORMER_CONFIG["joint_attention_dim"]
    prompt_embeds = torch.randn(1, 512, embed_dim, generator=torch.Generator().manual_seed(0)).to(
        "cuda", torch.bfloat16
    )

    image = pipeline(
        prompt_embeds=prompt_embeds,
        height=1024,
        width=1024,
        num_inference_steps=2,
        guidance_scale=4.0,
        generator=torch.Generator("cpu").manual_seed(0),
    ).images[0]

    peak = torch.cuda.max_memory_allocated()
    assert image.size == (1024, 1024)
    assert transformer.is_quantized and transformer.config.quantization_config.load_in_4bit
    assert peak < 24 * GIB, f"peak {peak / GIB:.2f} GiB"
