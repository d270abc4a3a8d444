"""`flux2-generate` with FLUX.2 [klein] snapshots: pixel-identical to `Flux2KleinPipeline`, and refused with the
wrong encoder before any weights load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_client.generation.cli import main as generate_main
from shared.tiny_klein import build_tiny_klein_snapshot
from tests.generation.test_generate import pixels
from tests.support.cli_runs import assert_one_line_error, run_cli
from tests.support.helpers import RunningServer

SIZE = ["--height", "64", "--width", "64"]


@pytest.fixture(scope="module")
def klein_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_klein_snapshot(tmp_path_factory.mktemp("klein-base") / "tiny-klein-base", distilled=False)


def monolithic(snapshot: Path, prompt: str, *, seed: int, steps: int, guidance: float, image=None) -> np.ndarray:  # type: ignore[no-untyped-def]
    from diffusers import Flux2KleinPipeline

    pipeline = Flux2KleinPipeline.from_pretrained(snapshot, dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    result = pipeline(
        prompt=prompt,
        image=image,
        height=64,
        width=64,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator("cpu").manual_seed(seed),
    )
    return np.asarray(result.images[0])


def generate(server: RunningServer, snapshot: Path, *args: str) -> int:
    return generate_main(["--encoder", server.target, "--model", str(snapshot), "--quiet", *SIZE, *args])


def test_distilled_klein_image_is_pixel_identical_to_monolithic_diffusers(klein_server, tiny_klein_snapshot, tmp_path):
    out = tmp_path / "fox.png"
    assert generate(klein_server, tiny_klein_snapshot, "a fox in the snow", "--seed", "7", "--out", str(out)) == 0
    expected = monolithic(tiny_klein_snapshot, "a fox in the snow", seed=7, steps=4, guidance=1.0)
    np.testing.assert_array_equal(pixels(out), expected)


def test_distilled_klein_runs_its_recommended_4_steps_at_guidance_1_by_default(
    klein_server, tiny_klein_snapshot, tmp_path
):
    out = tmp_path / "fox.png"
    assert generate(klein_server, tiny_klein_snapshot, "a fox", "--out", str(out)) == 0
    with Image.open(out) as image:
        settings = json.loads(image.text["flux2-split"])
    assert (settings["steps"], settings["guidance"]) == (4, 1.0)


def test_base_klein_uses_guidance_against_the_empty_prompt_like_diffusers(klein_server, klein_base, tmp_path):
    out = tmp_path / "owl.png"
    assert generate(klein_server, klein_base, "an owl at night", "--seed", "3", "--steps", "3", "--out", str(out)) == 0
    expected = monolithic(klein_base, "an owl at night", seed=3, steps=3, guidance=4.0)  # 4.0: the base default
    np.testing.assert_array_equal(pixels(out), expected)
    unguided = monolithic(klein_base, "an owl at night", seed=3, steps=3, guidance=1.0)
    assert not np.array_equal(expected, unguided)  # the negative prompt does change the image


def test_klein_edit_with_a_reference_image_matches_diffusers(klein_server, tiny_klein_snapshot, tmp_path):
    reference = tmp_path / "cat.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(reference)
    out = tmp_path / "edit.png"
    args = ("make it blue", "--image", str(reference), "--seed", "5", "--out", str(out))
    assert generate(klein_server, tiny_klein_snapshot, *args) == 0
    with Image.open(reference) as image:
        expected = monolithic(
            tiny_klein_snapshot, "make it blue", seed=5, steps=4, guidance=1.0, image=[image.convert("RGB")]
        )
    np.testing.assert_array_equal(pixels(out), expected)


def test_klein_snapshot_with_a_dev_only_server_exits_2_naming_both(encoder_server, tiny_klein_snapshot, tmp_path):
    finished = run_cli(
        "a fox",
        "--encoder",
        encoder_server.target,
        "--model",
        str(tiny_klein_snapshot),
        "--out",
        str(tmp_path / "x.png"),
    )
    assert finished.returncode == 2, finished.stderr
    line = assert_one_line_error(finished.stderr, "Flux2KleinPipeline transformer needs Qwen3", "192 wide")
    assert "(mistral3 for Flux2Pipeline, 192 wide)" in line  # what the server offers (the tiny dev is 192 wide too)
    assert not (tmp_path / "x.png").exists()


def test_dev_snapshot_with_a_klein_only_server_exits_2_naming_both(klein_server, tiny_snapshot, tmp_path):
    finished = run_cli(
        "a fox", "--encoder", klein_server.target, "--model", str(tiny_snapshot), "--out", str(tmp_path / "x.png")
    )
    assert finished.returncode == 2, finished.stderr
    line = assert_one_line_error(finished.stderr, "Flux2Pipeline transformer needs Mistral3")
    assert "(qwen3 for Flux2KleinPipeline, 192 wide)" in line


def test_encoder_model_naming_a_model_the_server_lacks_exits_2_listing_what_it_serves(
    klein_server, tiny_klein_snapshot, tmp_path
):
    finished = run_cli(
        "a fox", "--encoder", klein_server.target, "--model", str(tiny_klein_snapshot),
        "--encoder-model", "FLUX.2-klein-9B", "--out", str(tmp_path / "x.png"),
    )  # fmt: skip
    assert finished.returncode == 2, finished.stderr
    assert_one_line_error(finished.stderr, "serves no model named 'FLUX.2-klein-9B'; it serves tiny-klein")


def test_klein_job_with_upsample_is_rewritten_by_the_dev_model_beside_it(tiny_snapshot, tiny_klein_snapshot, tmp_path):
    """Rewriting is Mistral3's; on a server serving both, a klein client's prompt goes to the dev model for it."""
    from diffusion_client import RemoteTextEncoder
    from encoder_server.config import ModelConfig
    from tests.support.helpers import start_models_server

    models = [ModelConfig(tiny_snapshot, enable_upsampling=True), ModelConfig(tiny_klein_snapshot)]
    with start_models_server(models, upsample_max_new_tokens=8) as server:
        out = tmp_path / "fox.png"
        assert generate(server, tiny_klein_snapshot, "a red fox", "--upsample", "--seed", "5", "--out", str(out)) == 0
        with RemoteTextEncoder(server.target) as dev:  # names no model: the first, FLUX.2-dev, which upsamples
            rewrite = dev.upsample("a red fox", seed=5, max_new_tokens=8)[0]
    with Image.open(out) as image:
        settings = json.loads(image.text["flux2-split"])
    assert (settings["original_prompt"], settings["prompt"]) == ("a red fox", rewrite)


def test_a_pinned_fingerprint_picks_its_model_on_a_server_serving_several(tiny_snapshot, tiny_klein_snapshot):
    """The pin is checked on the model chosen for the pipeline, not on the server's first model."""
    from diffusion_client import RemoteTextEncoder
    from encoder_server.config import ModelConfig
    from tests.support.helpers import start_models_server

    models = [ModelConfig(tiny_snapshot), ModelConfig(tiny_klein_snapshot)]
    with start_models_server(models) as server:
        with RemoteTextEncoder(server.target) as probe:
            klein_print = next(m.fingerprint for m in probe.info().models if m.family == "qwen3")
        with RemoteTextEncoder(server.target, expected_fingerprint=klein_print[:16]) as pinned:
            chosen = pinned.select_model("Flux2KleinPipeline", 192)
            assert chosen.name == "tiny-klein" and pinned.info().fingerprint == klein_print
