"""`flux2-generate` through a real encoder server: same pixels as diffusers' monolithic pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_client.generation.cli import main as generate_main
from diffusion_client.provenance.watermark import too_small_note

SIZE = ["--height", "64", "--width", "64", "--steps", "3"]


@pytest.fixture(scope="session")
def monolithic_pipeline(tiny_snapshot: Path):  # type: ignore[no-untyped-def]
    from diffusers import Flux2Pipeline

    pipeline = Flux2Pipeline.from_pretrained(tiny_snapshot, dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def monolithic_image(pipeline, prompt: str, seed: int, steps: int = 3, size: int = 64) -> np.ndarray:  # type: ignore[no-untyped-def]
    image = pipeline(
        prompt=prompt,
        height=size,
        width=size,
        num_inference_steps=steps,
        guidance_scale=4.0,
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]
    return np.asarray(image)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def generate(encoder_server, tiny_snapshot: Path, *args: str) -> int:  # type: ignore[no-untyped-def]
    return generate_main(["--encoder", encoder_server.target, "--model", str(tiny_snapshot), "--quiet", *args])


def test_cli_image_is_pixel_identical_to_monolithic_diffusers(
    encoder_server, tiny_snapshot, monolithic_pipeline, tmp_path
):
    out = tmp_path / "fox.png"
    command = [
        sys.executable,
        "-m",
        "diffusion_client.generation.cli",
        "a fox in the snow",
        "--encoder",
        encoder_server.target,
        "--model",
        str(tiny_snapshot),
        "--seed",
        "7",
        "--out",
        str(out),
        "--quiet",
        *SIZE,
    ]
    finished = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert finished.returncode == 0, finished.stderr
    expected = monolithic_image(monolithic_pipeline, "a fox in the snow", seed=7)
    assert pixels(out).std() > 0
    np.testing.assert_array_equal(pixels(out), expected)


def test_png_records_how_the_image_was_made(encoder_server, tiny_snapshot, tmp_path):
    out = tmp_path / "meta.png"
    assert generate(encoder_server, tiny_snapshot, "a tin robot", "--seed", "3", "--out", str(out), *SIZE) == 0
    with Image.open(out) as image:
        text = dict(image.text)
    assert text["prompt"] == "a tin robot"
    assert (text["seed"], text["steps"], text["guidance"], text["size"]) == ("3", "3", "4.0", "64x64")
    assert text["model"] == tiny_snapshot.name
    assert encoder_server.target in text["encoder"]
    assert text["encoder_quantization"] == "none"
    assert json.loads(text["flux2-split"])["prompt"] == "a tin robot"


def test_editing_with_two_reference_images_differs_from_text_only(encoder_server, tiny_snapshot, tmp_path):
    rng = np.random.default_rng(0)
    references = []
    for index, size in enumerate([(64, 64), (96, 80)]):
        path = tmp_path / f"ref{index}.png"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
        references += ["--image", str(path)]
    edited, plain = tmp_path / "edited.png", tmp_path / "plain.png"
    assert generate(encoder_server, tiny_snapshot, "make it blue", "--out", str(edited), *references, *SIZE) == 0
    assert generate(encoder_server, tiny_snapshot, "make it blue", "--out", str(plain), *SIZE) == 0
    assert pixels(edited).shape == pixels(plain).shape == (64, 64, 3)
    assert not np.array_equal(pixels(edited), pixels(plain))


def test_prompts_file_writes_one_image_per_line_each_identical_to_its_single_run(
    encoder_server, tiny_snapshot, tmp_path
):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('a lighthouse\n\n# skipped\n{"prompt": "a red kite", "seed": 11}\nan owl at night\n')
    assert (
        generate(encoder_server, tiny_snapshot, "--prompts", str(prompts), "--out", str(tmp_path / "b.png"), *SIZE) == 0
    )
    batch = sorted(tmp_path.glob("b-*.png"))
    assert [path.name for path in batch] == ["b-000.png", "b-001.png", "b-002.png"]
    for path, (prompt, seed) in zip(
        batch, [("a lighthouse", 0), ("a red kite", 11), ("an owl at night", 0)], strict=True
    ):
        single = tmp_path / f"single-{path.name}"
        assert generate(encoder_server, tiny_snapshot, prompt, "--seed", str(seed), "--out", str(single), *SIZE) == 0
        np.testing.assert_array_equal(pixels(path), pixels(single))


@pytest.fixture(scope="module")
def tiny_pipeline(tiny_snapshot: Path):  # type: ignore[no-untyped-def]
    from diffusion_client.generation.pipeline import PipelineConfig, load_pipeline

    return load_pipeline(PipelineConfig(model_path=tiny_snapshot, device="cpu", quantize="none"))


def test_generator_prepare_then_run_matches_monolithic_diffusers(
    encoder_server, tiny_pipeline, monolithic_pipeline, tmp_path
):
    from diffusion_client import RemoteTextEncoder
    from diffusion_client.generation.generator import GeneratedImage, ImageGenerator
    from diffusion_client.generation.jobs import GenerationJob

    job = GenerationJob(prompt="a fox in the snow", out=tmp_path / "lib.png", seed=7, steps=3, height=64, width=64)
    with RemoteTextEncoder(encoder_server.target) as encoder:
        generator = ImageGenerator(tiny_pipeline, encoder, model_name="tiny", progress=False)
        assert (generator.device, generator.dtype) == (torch.device("cpu"), torch.float32)
        outcomes = list(generator.run(generator.prepare([job])))
    assert outcomes == [GeneratedImage(job, job.out, notes=(too_small_note(64, 64),))]  # under the watermark's size
    np.testing.assert_array_equal(pixels(job.out), monolithic_image(monolithic_pipeline, "a fox in the snow", seed=7))


def test_reference_images_are_decoded_once_in_prepare_not_again_in_run(encoder_server, tiny_pipeline, tmp_path):
    from diffusion_client import RemoteTextEncoder
    from diffusion_client.generation.generator import GeneratedImage, ImageGenerator
    from diffusion_client.generation.jobs import GenerationJob

    reference = tmp_path / "ref.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(reference)
    jobs = [
        GenerationJob(
            prompt="make it blue", out=tmp_path / f"{i}.png", steps=2, height=64, width=64, images=(reference,)
        )
        for i in range(2)
    ]
    with RemoteTextEncoder(encoder_server.target) as encoder:
        generator = ImageGenerator(tiny_pipeline, encoder, model_name="tiny", progress=False)
        prepared = generator.prepare(jobs)
        assert prepared[0].references[0] is prepared[1].references[0]  # one decode for both jobs
        reference.unlink()  # run() must not read it again
        outcomes = list(generator.run(prepared))
    assert all(isinstance(outcome, GeneratedImage) for outcome in outcomes)
    assert [outcome.path.name for outcome in outcomes] == ["0.png", "1.png"]


def test_generator_run_takes_only_prepared_jobs(encoder_server, tiny_pipeline, tmp_path):
    from diffusion_client import RemoteTextEncoder
    from diffusion_client.generation.generator import ImageGenerator
    from diffusion_client.generation.jobs import GenerationJob

    with RemoteTextEncoder(encoder_server.target) as encoder:
        generator = ImageGenerator(tiny_pipeline, encoder, model_name="tiny", progress=False)
        with pytest.raises(TypeError, match="what prepare"):
            list(generator.run([GenerationJob(prompt="x", out=tmp_path / "x.png")]))  # type: ignore[list-item]
