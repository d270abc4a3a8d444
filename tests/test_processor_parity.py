"""A snapshot whose tokenizer/ is a PixtralProcessor, as FLUX.2-dev ships it, gives the same embeddings.

diffusers then tokenises through the processor, the server through the plain tokenizer and the same chat
template. PixtralProcessor needs torchvision, which does not install beside the pinned torch, so this runs
only where torchvision is importable (e.g. a venv with torch 2.14.1 + torchvision 0.29.1).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from encoder_server.config import ModelConfig
from encoder_server.prompt_encoder import PromptEncoder
from shared.tiny_snapshot import MISTRAL_SMALL_3_1_CHAT_TEMPLATE, build_tokenizer

pytest.importorskip("torchvision", reason="PixtralProcessor needs torchvision")


@pytest.fixture(scope="module")
def processor_snapshot(tiny_snapshot: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import PixtralImageProcessor, PixtralProcessor

    snapshot = Path(shutil.copytree(tiny_snapshot, tmp_path_factory.mktemp("processor") / "snapshot"))
    shutil.rmtree(snapshot / "tokenizer")
    processor = PixtralProcessor(
        image_processor=PixtralImageProcessor(),
        tokenizer=build_tokenizer(),
        patch_size=14,
        spatial_merge_size=2,
        chat_template=MISTRAL_SMALL_3_1_CHAT_TEMPLATE,
    )
    processor.save_pretrained(snapshot / "tokenizer")
    index = json.loads((snapshot / "model_index.json").read_text())
    index["tokenizer"] = ["transformers", "PixtralProcessor"]
    (snapshot / "model_index.json").write_text(json.dumps(index))
    return snapshot


@pytest.mark.parametrize("layers", [(10, 20, 30), (34,)], ids=["default-layers", "last-layer"])
def test_processor_snapshot_embeddings_match_diffusers_bitwise(processor_snapshot, layers):
    from diffusers import Flux2Pipeline

    pipeline = Flux2Pipeline.from_pretrained(processor_snapshot, dtype=torch.float32, transformer=None, vae=None)
    assert type(pipeline.tokenizer).__name__ == "PixtralProcessor"
    prompts = ["a cat", "", "雪の中の狐 🦊", "long prompt " * 400, "text with [IMG] in it"]
    expected = Flux2Pipeline._get_mistral_3_small_prompt_embeds(
        pipeline.text_encoder, pipeline.tokenizer, prompts, hidden_states_layers=layers
    )
    served = PromptEncoder.load(ModelConfig(model_path=processor_snapshot)).encode(prompts, 512, layers)
    assert torch.equal(served, expected)
