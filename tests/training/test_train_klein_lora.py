"""`flux2-train-lora` trains FLUX.2 [klein] LoRAs the same way, captions encoded by the klein model of the server."""

from __future__ import annotations

import numpy as np
import torch

from diffusion_client.generation.cli import main as generate_main
from diffusion_client.training.cli import main as train_main
from tests.generation.test_generate import pixels
from tests.training.test_train_lora import CAPTION, FAST, RED, flat_images


def test_klein_lora_trains_and_generates_diffusers_own_image(klein_server, tiny_klein_snapshot, tmp_path):
    from diffusers import Flux2KleinPipeline

    data = flat_images(tmp_path / "data", [RED, RED])
    out = tmp_path / "lora"
    args = [
        "--data",
        str(data),
        "--model",
        str(tiny_klein_snapshot),
        "--encoder",
        klein_server.target,
        "--out",
        str(out),
    ]
    assert train_main([*args, *FAST, "--steps", "3", "--learning-rate", "1e-2"]) == 0
    lora = out / "pytorch_lora_weights.safetensors"
    image = tmp_path / "lora.png"
    size = ["--height", "64", "--width", "64"]
    flags = ["--encoder", klein_server.target, "--model", str(tiny_klein_snapshot), "--quiet", *size]
    assert generate_main([CAPTION, *flags, "--lora", str(lora), "--out", str(image)]) == 0
    pipeline = Flux2KleinPipeline.from_pretrained(tiny_klein_snapshot, dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    pipeline.load_lora_weights(str(lora))
    expected = pipeline(
        prompt=CAPTION, height=64, width=64, num_inference_steps=4, guidance_scale=1.0,
        generator=torch.Generator("cpu").manual_seed(0),
    ).images[0]  # fmt: skip
    np.testing.assert_array_equal(pixels(image), np.asarray(expected))


def test_klein_training_against_a_dev_only_server_is_refused_before_training(
    encoder_server, tiny_klein_snapshot, tmp_path, capsys
):
    data = flat_images(tmp_path / "data", [RED])
    args = [
        "--data",
        str(data),
        "--model",
        str(tiny_klein_snapshot),
        "--encoder",
        encoder_server.target,
        "--out",
        str(tmp_path / "o"),
    ]
    assert train_main([*args, *FAST, "--steps", "1"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("flux2-train-lora: error: this Flux2KleinPipeline transformer needs Qwen3")
    assert not (tmp_path / "o").exists()
