"""The tiny FLUX.2 [klein] snapshots load as diffusers' klein pipeline, encode like Qwen3, and rebuild byte for byte."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from shared.tiny_klein import build_tiny_klein_snapshot
from shared.tiny_model_cli import main as tiny_model_main
from shared.tiny_snapshot import snapshot_digest

VARIANTS = {"distilled": True, "base": False}
SIZE = 64
STEPS = 2


@pytest.fixture(scope="module")
def klein_snapshots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("klein")
    return {name: build_tiny_klein_snapshot(root / name, distilled=distilled) for name, distilled in VARIANTS.items()}


@pytest.fixture(scope="module")
def klein_pipelines(klein_snapshots: dict[str, Path]) -> dict[str, Any]:
    from diffusers import Flux2KleinPipeline

    pipelines = {}
    for name, path in klein_snapshots.items():
        pipelines[name] = Flux2KleinPipeline.from_pretrained(path, dtype=torch.float32)
        pipelines[name].set_progress_bar_config(disable=True)
    return pipelines


@pytest.fixture(scope="module")
def generations(klein_pipelines: dict[str, Any]) -> dict[str, tuple[list[Any], int]]:
    """Each variant's images for one prompt, with how many transformer passes made them."""
    return {name: generate(pipeline, distilled=VARIANTS[name]) for name, pipeline in klein_pipelines.items()}


def generate(pipeline: Any, *, distilled: bool) -> tuple[list[Any], int]:
    """A 64x64 image in two steps at BFL's guidance for the variant, and the number of transformer passes."""
    passes: list[int] = []
    hook = pipeline.transformer.register_forward_hook(lambda *_: passes.append(1))
    try:
        images = pipeline(
            prompt="a cat",
            height=SIZE,
            width=SIZE,
            num_inference_steps=STEPS,
            guidance_scale=1.0 if distilled else 4.0,  # distilled ignores it anyway (with a warning above 1)
            generator=torch.Generator("cpu").manual_seed(0),
        ).images
    finally:
        hook.remove()
    return images, len(passes)


def prompt_embeds(pipeline: Any, prompt: str) -> torch.Tensor:
    from diffusers import Flux2KleinPipeline

    with torch.no_grad():
        return Flux2KleinPipeline._get_qwen3_prompt_embeds(
            pipeline.text_encoder,
            pipeline.tokenizer,
            [prompt],
            max_sequence_length=512,
            hidden_states_layers=(9, 18, 27),
        )


@pytest.mark.parametrize("variant", VARIANTS)
def test_snapshot_loads_as_a_klein_pipeline_with_qwen3_components(klein_pipelines, variant):
    components = {name: type(component).__name__ for name, component in klein_pipelines[variant].components.items()}
    assert type(klein_pipelines[variant]).__name__ == "Flux2KleinPipeline"
    assert components == {
        "scheduler": "FlowMatchEulerDiscreteScheduler",
        "vae": "AutoencoderKLFlux2",
        "text_encoder": "Qwen3ForCausalLM",
        "tokenizer": "Qwen2Tokenizer",  # transformers 5's name for Qwen2TokenizerFast
        "transformer": "Flux2Transformer2DModel",
    }


def test_model_index_names_the_classes_flux2_klein_4b_names(klein_snapshots):
    index = json.loads((klein_snapshots["distilled"] / "model_index.json").read_text())
    assert index["_class_name"] == "Flux2KleinPipeline"
    assert index["text_encoder"] == ["transformers", "Qwen3ForCausalLM"]
    assert index["tokenizer"] == ["transformers", "Qwen2TokenizerFast"]
    assert index["transformer"] == ["diffusers", "Flux2Transformer2DModel"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_is_distilled_is_as_asked(klein_snapshots, klein_pipelines, variant):
    assert json.loads((klein_snapshots[variant] / "model_index.json").read_text())["is_distilled"] is VARIANTS[variant]
    assert klein_pipelines[variant].config.is_distilled is VARIANTS[variant]


def test_chat_template_without_thinking_closes_an_empty_think_block(klein_pipelines):
    rendered = klein_pipelines["distilled"].tokenizer.apply_chat_template(
        [{"role": "user", "content": "a cat"}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert rendered == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def test_added_tokens_follow_the_bpe_vocabulary_in_qwen3_order(klein_pipelines):
    tokenizer = klein_pipelines["distilled"].tokenizer
    first = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    ids = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"])
    assert ids == [first, first + 1, first + 2, first + 24, first + 25] and first == len(tokenizer) - 26
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == ("<|im_end|>", "<|endoftext|>", None)


def test_encoder_is_deep_enough_that_layer_27_is_a_raw_layer_output(klein_snapshots):
    text_encoder = json.loads((klein_snapshots["distilled"] / "text_encoder" / "config.json").read_text())
    transformer = json.loads((klein_snapshots["distilled"] / "transformer" / "config.json").read_text())
    assert text_encoder["num_hidden_layers"] > 27  # hidden_states[-1] is the final-normed output
    assert transformer["joint_attention_dim"] == 3 * text_encoder["hidden_size"] == 192
    assert transformer["guidance_embeds"] is False


PROMPTS = {"ascii": "a cat", "empty": "", "non-ascii": "un chat noir 🐈 の猫, «très» mignon"}


@pytest.mark.parametrize("prompt", PROMPTS.values(), ids=PROMPTS.keys())
def test_prompt_embeds_are_512_tokens_of_three_hidden_states(klein_pipelines, prompt):
    assert prompt_embeds(klein_pipelines["distilled"], prompt).shape == (1, 512, 192)


def test_a_prompt_longer_than_512_tokens_is_truncated_to_512(klein_pipelines):
    pipeline = klein_pipelines["distilled"]
    prompt = "a cat and a dog " * 200
    assert len(pipeline.tokenizer(prompt)["input_ids"]) > 512
    assert prompt_embeds(pipeline, prompt).shape == (1, 512, 192)


@pytest.mark.parametrize("variant", VARIANTS)
def test_pipeline_generates_a_64x64_image_in_two_steps_on_cpu(generations, variant):
    images, _ = generations[variant]
    assert [image.size for image in images] == [(SIZE, SIZE)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_only_the_base_variant_runs_classifier_free_guidance(generations, variant):
    _, transformer_passes = generations[variant]
    assert transformer_passes == STEPS * (1 if VARIANTS[variant] else 2)  # CFG: a second, unconditional pass


def test_every_matrix_is_a_multiple_of_64_wide_both_ways(klein_snapshots):
    """As in the dev tiny snapshot and the real models, so bitsandbytes' CPU 4-bit packing sees real-shaped layers."""
    from safetensors import safe_open

    shapes = {}
    for weights in sorted(klein_snapshots["distilled"].glob("*/*.safetensors")):
        with safe_open(weights, "pt") as tensors:
            for name in tensors.keys():
                shapes[f"{weights.parent.name}/{name}"] = tensors.get_slice(name).get_shape()
    matrices = {name: shape for name, shape in shapes.items() if len(shape) == 2}
    assert {name.split("/")[0] for name in matrices} == {"text_encoder", "transformer", "vae"}
    assert {name: shape for name, shape in matrices.items() if shape[0] % 64 or shape[1] % 64} == {}


def test_text_encoder_ties_its_lm_head_to_the_embeddings_like_qwen3_4b(klein_snapshots, klein_pipelines):
    from safetensors import safe_open

    with safe_open(klein_snapshots["distilled"] / "text_encoder" / "model.safetensors", "pt") as tensors:
        assert "lm_head.weight" not in tensors.keys()
    text_encoder = klein_pipelines["distilled"].text_encoder
    assert text_encoder.lm_head.weight.data_ptr() == text_encoder.model.embed_tokens.weight.data_ptr()


def test_vae_and_scheduler_are_the_dev_snapshots(klein_snapshots, tiny_snapshot):
    for component in ("vae", "scheduler"):
        assert snapshot_digest(klein_snapshots["distilled"] / component) == snapshot_digest(tiny_snapshot / component)


@pytest.mark.parametrize("variant", VARIANTS)
def test_building_twice_gives_identical_files(klein_snapshots, tmp_path, variant):
    again = build_tiny_klein_snapshot(tmp_path / "again", distilled=VARIANTS[variant])
    assert snapshot_digest(again) == snapshot_digest(klein_snapshots[variant])


def test_building_over_an_existing_snapshot_leaves_the_same_files(tmp_path):
    path = build_tiny_klein_snapshot(tmp_path / "klein")
    first = snapshot_digest(path)
    assert snapshot_digest(build_tiny_klein_snapshot(path)) == first
    assert [p.name for p in tmp_path.iterdir()] == ["klein"]  # no staging folder left behind


def test_cli_klein_option_writes_the_asked_variant(tmp_path, capsys):
    assert tiny_model_main([str(tmp_path / "klein"), "--klein", "base"]) == 0
    assert json.loads((tmp_path / "klein" / "model_index.json").read_text())["is_distilled"] is False
    assert capsys.readouterr().out.startswith(f"tiny FLUX.2 [klein] base snapshot written to {tmp_path / 'klein'} ")
