"""A snapshot whose tokenizer/ is a plain tokenizer, not the PixtralProcessor FLUX.2-dev ships, encodes the same.

The tiny snapshot ships a PixtralProcessor, as FLUX.2-dev does, and diffusers tokenises through it; the server
always loads the tokenizer and the snapshot's chat template, so both layouts must encode identically.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from encoder_server.config import ModelConfig
from encoder_server.errors import ModelLoadError
from encoder_server.model.loaded_models import load_encoder
from shared.tiny_snapshot import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer_snapshot(tiny_snapshot: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    snapshot = Path(shutil.copytree(tiny_snapshot, tmp_path_factory.mktemp("tokenizer") / "snapshot"))
    shutil.rmtree(snapshot / "tokenizer")
    build_tokenizer().save_pretrained(snapshot / "tokenizer")
    return snapshot


@pytest.mark.parametrize("layers", [(10, 20, 30), (34,)], ids=["default-layers", "last-layer"])
def test_plain_tokenizer_snapshot_matches_diffusers_on_the_processor_bitwise(
    tokenizer_snapshot, diffusers_embeds, layers
):
    prompts = ["a cat", "", "雪の中の狐 🦊", "long prompt " * 400, "text with [IMG] in it"]
    served = load_encoder(ModelConfig(model_path=tokenizer_snapshot, max_layer=34)).encode(prompts, 512, layers)
    assert torch.equal(served, diffusers_embeds(prompts, layers=layers))


def test_upsampling_needs_the_processor_and_says_so(tokenizer_snapshot):
    with pytest.raises(ModelLoadError, match="not a PixtralProcessor; --enable-upsampling needs"):
        load_encoder(ModelConfig(model_path=tokenizer_snapshot, enable_upsampling=True))
