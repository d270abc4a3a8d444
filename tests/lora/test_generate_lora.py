"""`flux2-generate --lora`: the image diffusers' own `load_lora_weights` makes, adapters switched between jobs,
what the PNG records, and bad LoRA files refused before any weights load."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from diffusion_client.errors import InputError
from diffusion_client.generation.pipeline import read_component_config
from diffusion_client.lora.adapters import AppliedLora, LoraAdapters
from diffusion_client.lora.files import CheckedLora, check_lora, file_sha256, layer_shapes
from diffusion_client.lora.specs import parse_lora_spec
from shared.tiny_snapshot import TinySnapshotShape, build_transformer
from tests.generation.test_generate import SIZE, generate, pixels
from tests.support.cli_runs import assert_one_line_error, run_cli
from tests.support.lora_files import (
    CreatesFileWhenUnpickled,
    load_tiny_transformer,
    pickled_like_safetensors,
    random_lora,
)

PROMPT = "a paper boat on a pond"


@pytest.fixture(scope="module")
def lora_file(tiny_snapshot: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_lora(load_tiny_transformer(tiny_snapshot), tmp_path_factory.mktemp("lora"), seed=1)


@pytest.fixture(scope="module")
def second_lora(tiny_snapshot: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_lora(load_tiny_transformer(tiny_snapshot), tmp_path_factory.mktemp("lora2"), rank=8, seed=2)


@pytest.fixture(scope="module")
def lora_pipeline(tiny_snapshot: Path) -> Iterator[Any]:
    """diffusers' monolithic pipeline (its own text encoder), for loading LoRAs its own way."""
    from diffusers import Flux2Pipeline

    pipeline = Flux2Pipeline.from_pretrained(tiny_snapshot, dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    yield pipeline


def diffusers_image(pipeline: Any, loras: list[tuple[Path, float]], seed: int) -> np.ndarray:
    names = []
    for index, (path, _) in enumerate(loras):
        pipeline.load_lora_weights(str(path), adapter_name=f"test{index}")
        names.append(f"test{index}")
    try:
        if names:
            pipeline.set_adapters(names, [scale for _, scale in loras])
        image = pipeline(
            prompt=PROMPT,
            height=64,
            width=64,
            num_inference_steps=3,
            guidance_scale=4.0,
            generator=torch.Generator("cpu").manual_seed(seed),
        ).images[0]
    finally:
        if names:
            pipeline.delete_adapters(names)
    return np.asarray(image)


def test_lora_image_is_pixel_identical_to_diffusers_own_load_lora_weights(
    encoder_server, tiny_snapshot, lora_pipeline, lora_file, tmp_path
):
    out = tmp_path / "boat.png"
    assert generate(encoder_server, tiny_snapshot, PROMPT, "--lora", f"{lora_file}:0.8", "--out", str(out), *SIZE) == 0
    expected = diffusers_image(lora_pipeline, [(lora_file, 0.8)], seed=0)
    np.testing.assert_array_equal(pixels(out), expected)
    assert not np.array_equal(expected, diffusers_image(lora_pipeline, [], seed=0))  # the LoRA does something


def test_two_loras_at_once_match_diffusers_set_adapters(
    encoder_server, tiny_snapshot, lora_pipeline, lora_file, second_lora, tmp_path
):
    out = tmp_path / "two.png"
    flags = ["--lora", str(lora_file), "--lora", f"{second_lora}:-0.5"]
    assert generate(encoder_server, tiny_snapshot, PROMPT, *flags, "--out", str(out), *SIZE) == 0
    expected = diffusers_image(lora_pipeline, [(lora_file, 1.0), (second_lora, -0.5)], seed=0)
    np.testing.assert_array_equal(pixels(out), expected)


def test_jobs_switch_adapters_in_one_run_as_separate_runs_would(encoder_server, tiny_snapshot, lora_file, tmp_path):
    prompts = tmp_path / "jobs.jsonl"
    lines = [
        {"prompt": PROMPT, "loras": [{"path": str(lora_file), "scale": 1.0}], "out": str(tmp_path / "a.png")},
        {"prompt": PROMPT, "out": str(tmp_path / "b.png")},
        {"prompt": PROMPT, "loras": [{"path": str(lora_file), "scale": 0.5}], "out": str(tmp_path / "c.png")},
    ]
    prompts.write_text("\n".join(json.dumps(line) for line in lines))
    assert generate(encoder_server, tiny_snapshot, "--prompts", str(prompts), *SIZE) == 0
    for name, flags in (("a", ["--lora", str(lora_file)]), ("b", []), ("c", ["--lora", f"{lora_file}:0.5"])):
        alone = tmp_path / f"alone-{name}.png"
        assert generate(encoder_server, tiny_snapshot, PROMPT, *flags, "--out", str(alone), *SIZE) == 0
        np.testing.assert_array_equal(pixels(tmp_path / f"{name}.png"), pixels(alone))


def test_png_records_each_loras_file_hash_and_scale(encoder_server, tiny_snapshot, lora_file, tmp_path):
    out = tmp_path / "meta.png"
    assert generate(encoder_server, tiny_snapshot, PROMPT, "--lora", f"{lora_file}:0.75", "--out", str(out), *SIZE) == 0
    with Image.open(out) as image:
        recorded = json.loads(image.text["flux2-split"])["loras"]
    assert recorded == [{"file": lora_file.name, "sha256": file_sha256(lora_file), "scale": 0.75}]


def _bad_lora_error(encoder_server, tiny_snapshot, tmp_path, lora: str) -> str:  # type: ignore[no-untyped-def]
    out = tmp_path / "never.png"
    finished = run_cli(PROMPT, "--encoder", encoder_server.target, "--model", str(tiny_snapshot), "--lora", lora,
                       "--out", str(out), *SIZE)  # fmt: skip
    assert finished.returncode == 2, finished.stderr
    assert not out.exists()
    return assert_one_line_error(finished.stderr, lora)


def test_file_that_is_not_safetensors_is_refused_naming_it(encoder_server, tiny_snapshot, tmp_path):
    text = tmp_path / "notes.safetensors"
    text.write_text("this is not a LoRA")
    assert "not a safetensors file" in _bad_lora_error(encoder_server, tiny_snapshot, tmp_path, str(text))


def test_torch_save_of_a_real_lora_shaped_like_safetensors_is_refused_not_unpickled(
    encoder_server, tiny_snapshot, lora_file, tmp_path
):
    path = pickled_like_safetensors(safetensors.torch.load_file(lora_file), tmp_path / "pickled.pt")
    assert "not a safetensors file" in _bad_lora_error(encoder_server, tiny_snapshot, tmp_path, str(path))


def test_pickle_payload_in_a_lora_file_never_reaches_an_unpickler(tiny_snapshot, lora_file, tmp_path):
    marker = tmp_path / "unpickled"
    tensors = {**safetensors.torch.load_file(lora_file), "payload": CreatesFileWhenUnpickled(marker)}
    path = pickled_like_safetensors(tensors, tmp_path / "payload.pt")
    layers = layer_shapes(read_component_config(tiny_snapshot, "transformer"))
    with pytest.raises(InputError, match="not a safetensors file"):
        check_lora(path, layers)
    assert not marker.exists()
    with path.open("rb") as pickled, pytest.raises(Exception, match="Weights only load failed"):
        torch.load(pickled, weights_only=True)  # where diffusers' fallback took such a file
    with path.open("rb") as pickled:
        torch.load(pickled, weights_only=False)  # the payload is live: an unrestricted unpickler runs it
    assert marker.exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_lora_with_nan_or_infinite_weights_is_refused_naming_the_tensor(
    encoder_server, tiny_snapshot, lora_file, tmp_path, bad
):
    tensors = safetensors.torch.load_file(lora_file)
    name = sorted(tensors)[3]
    tensors[name][0, 0] = bad
    path = tmp_path / "diverged.safetensors"
    safetensors.torch.save_file(tensors, path)
    message = _bad_lora_error(encoder_server, tiny_snapshot, tmp_path, str(path))
    assert f"tensor {name!r} holds NaN or infinite values" in message


@pytest.mark.parametrize(("dtype", "called"), [(torch.int8, "int8"), (torch.bool, "bool")])
def test_lora_with_integer_or_bool_tensors_is_refused_before_the_dit_loads(
    tiny_snapshot, lora_file, tmp_path, dtype, called
):
    tensors = safetensors.torch.load_file(lora_file)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].to(dtype)
    path = tmp_path / f"{called}.safetensors"
    safetensors.torch.save_file(tensors, path)
    layers = layer_shapes(read_component_config(tiny_snapshot, "transformer"))
    with pytest.raises(InputError, match=f"tensor '{name}' is {called}; LoRA weights must be float32"):
        check_lora(path, layers)


def test_lora_path_that_is_a_directory_is_refused_saying_so(encoder_server, tiny_snapshot, tmp_path):
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    assert "is a directory" in _bad_lora_error(encoder_server, tiny_snapshot, tmp_path, str(folder))


def test_lora_path_that_is_a_fifo_is_refused_without_waiting_for_a_writer(encoder_server, tiny_snapshot, tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    assert "is not a regular file" in _bad_lora_error(encoder_server, tiny_snapshot, tmp_path, str(fifo))


def test_lora_replaced_after_its_check_is_not_loaded(lora_file, second_lora):
    checked_earlier = CheckedLora(lora_file, file_sha256(second_lora), rank=8, modules=1)
    adapters = LoraAdapters(pipeline=None)  # refused before the pipeline is touched
    with pytest.raises(InputError, match="changed since it was checked"):
        adapters.activate([AppliedLora(checked_earlier, 1.0)])
    assert adapters.loaded == []


def test_lora_whose_keys_match_nothing_is_refused_naming_it(encoder_server, tiny_snapshot, lora_file, tmp_path):
    renamed = {
        key.replace("transformer_blocks.0", "transformer_blocks.7"): value
        for key, value in safetensors.torch.load_file(lora_file).items()
    }
    path = tmp_path / "other-model.safetensors"
    safetensors.torch.save_file(renamed, path)
    assert "matches no layer of this transformer" in _bad_lora_error(encoder_server, tiny_snapshot, tmp_path, str(path))


def test_lora_for_a_model_of_other_widths_is_refused_naming_it(encoder_server, tiny_snapshot, tmp_path):
    wider = build_transformer(TinySnapshotShape(dit_num_heads=4), joint_attention_dim=192).to(torch.float32)
    path = random_lora(wider, tmp_path / "wide")
    message = _bad_lora_error(encoder_server, tiny_snapshot, tmp_path, str(path))
    assert "shapes for another model" in message


def test_lora_with_half_its_pairs_missing_is_refused(encoder_server, tiny_snapshot, lora_file, tmp_path):
    halved = {key: value for key, value in safetensors.torch.load_file(lora_file).items() if "lora_B" not in key}
    path = tmp_path / "halved.safetensors"
    safetensors.torch.save_file(halved, path)
    assert "has no lora_B weight" in _bad_lora_error(encoder_server, tiny_snapshot, tmp_path, str(path))


def test_missing_lora_file_is_refused_before_any_weights_load(encoder_server, tiny_snapshot, tmp_path):
    missing = tmp_path / "nowhere.safetensors"
    assert "no such file" in _bad_lora_error(encoder_server, tiny_snapshot, tmp_path, str(missing))


@pytest.mark.parametrize("scale", ["nan", "inf", "-inf", "1e9"])
def test_lora_scale_that_is_not_a_usable_number_is_refused(scale):
    with pytest.raises(InputError, match="scale must be a finite number"):
        parse_lora_spec(f"style.safetensors:{scale}")


def test_lora_path_with_a_colon_and_no_scale_keeps_its_colon():
    assert parse_lora_spec("runs/12:30/lora.safetensors").path == Path("runs/12:30/lora.safetensors")
    assert parse_lora_spec("lora.safetensors:0.25").scale == 0.25


def test_prompts_file_lora_with_a_bad_scale_is_refused_naming_the_line(encoder_server, tiny_snapshot, tmp_path):
    prompts = tmp_path / "jobs.jsonl"
    prompts.write_text(json.dumps({"prompt": PROMPT, "loras": [{"path": "x.safetensors", "scale": "strong"}]}))
    finished = run_cli("--prompts", str(prompts), "--encoder", encoder_server.target, "--model", str(tiny_snapshot))
    assert finished.returncode == 2
    assert_one_line_error(finished.stderr, f"{prompts}:1", "scale must be a number")


def test_past_max_loaded_the_adapter_used_longest_ago_is_deleted_and_reloads_to_the_same_image(
    encoder_server, tiny_snapshot, lora_file, second_lora, tmp_path
):
    from diffusion_client import RemoteTextEncoder
    from diffusion_client.generation.generator import GeneratedImage, ImageGenerator
    from diffusion_client.generation.jobs import GenerationJob
    from diffusion_client.generation.pipeline import PipelineConfig, load_pipeline
    from diffusion_client.lora.adapters import LoraAdapters

    pipeline = load_pipeline(PipelineConfig(model_path=tiny_snapshot))
    settings = dict(seed=3, steps=3, height=64, width=64)
    jobs = [
        GenerationJob(PROMPT, tmp_path / f"{number}.png", loras=(parse_lora_spec(str(path)),), **settings)
        for number, path in enumerate((lora_file, second_lora, lora_file))
    ]
    with RemoteTextEncoder(encoder_server.target) as encoder:
        generator = ImageGenerator(pipeline, encoder, model_name="tiny", progress=False)
        generator.adapters = LoraAdapters(pipeline, max_loaded=1)
        images = []
        for job in jobs:
            outcomes = list(generator.run(generator.prepare([job])))
            assert isinstance(outcomes[0], GeneratedImage)
            images.append(pixels(job.out))
            assert len(generator.adapters.loaded) == 1
            assert sorted(pipeline.get_list_adapters()["transformer"]) == generator.adapters.loaded
    np.testing.assert_array_equal(images[0], images[2])  # deleted, loaded again: the same image
    assert not np.array_equal(images[0], images[1])
