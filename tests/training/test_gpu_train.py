"""QLoRA on a GPU: the tiny snapshot's DiT quantised to NF4 by diffusers, trained with 8-bit AdamW, gradient
checkpointing and bf16 autocast, and the LoRA then applied by `flux2-generate` on the NF4 DiT."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from diffusion_client.training.cli import main as train_main
from tests.generation.test_generate import generate


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_qlora_training_on_the_nf4_dit_writes_a_lora_the_nf4_generator_applies(encoder_server, tiny_snapshot, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for index in range(2):
        Image.new("RGB", (64, 64), (200, 30 * index, 30)).save(data / f"image{index}.png")
        (data / f"image{index}.txt").write_text("a flat sks square")
    flags = ["--device", "cuda", "--quantize", "nf4", "--8bit-adam", "--gradient-checkpointing", "--steps", "3"]
    args = ["--data", str(data), "--model", str(tiny_snapshot), "--encoder", encoder_server.target]
    assert (
        train_main([*args, "--out", str(tmp_path / "out"), "--resolution", "64", "--rank", "4", "--quiet", *flags]) == 0
    )
    lora = tmp_path / "out" / "pytorch_lora_weights.safetensors"
    out = tmp_path / "with-lora.png"
    size = ["--height", "64", "--width", "64", "--steps", "2", "--device", "cuda", "--quantize", "nf4"]
    assert (
        generate(encoder_server, tiny_snapshot, "a flat sks square", "--lora", str(lora), "--out", str(out), *size) == 0
    )
