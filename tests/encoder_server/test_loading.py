"""The server loads the snapshot layouts FLUX.2 checkpoints come in, and refuses broken ones clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from encoder_server.config import ModelConfig
from encoder_server.errors import ModelLoadError
from encoder_server.model.loaded_models import load_encoder
from encoder_server.model.loading import load_tokenizer, model_display_name


def _copy_snapshot(snapshot: Path, target: Path) -> Path:
    shutil.copytree(snapshot, target, ignore=shutil.ignore_patterns("transformer", "vae"))
    return target


def test_older_checkpoint_key_layout_loads_to_the_same_embeddings(tiny_snapshot, tmp_path):
    """Checkpoints saved before transformers renamed Mistral3's modules use `language_model.model.*`."""
    older = _copy_snapshot(tiny_snapshot, tmp_path / "older")
    weights_file = older / "text_encoder" / "model.safetensors"
    renamed = {
        key.replace("model.language_model.", "language_model.model.", 1): tensor
        for key, tensor in load_file(weights_file).items()
    }
    assert any(key.startswith("language_model.model.layers.") for key in renamed)
    save_file(renamed, weights_file, metadata={"format": "pt"})
    prompts = ["a cat on a mat", ""]
    current = load_encoder(ModelConfig(model_path=tiny_snapshot)).encode(prompts)
    assert torch.equal(load_encoder(ModelConfig(model_path=older)).encode(prompts), current)


def test_chat_template_kept_beside_a_processor_is_found(tiny_snapshot, tmp_path):
    """Processor snapshots may store the template in `chat_template.json` instead of the tokenizer files."""
    tokenizer_dir = shutil.copytree(tiny_snapshot / "tokenizer", tmp_path / "tokenizer")
    template = (tokenizer_dir / "chat_template.jinja").read_text()
    (tokenizer_dir / "chat_template.jinja").unlink()
    (tokenizer_dir / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    assert load_tokenizer(tokenizer_dir).chat_template == template


def test_snapshot_without_a_chat_template_is_refused(tiny_snapshot, tmp_path):
    tokenizer_dir = shutil.copytree(tiny_snapshot / "tokenizer", tmp_path / "tokenizer")
    (tokenizer_dir / "chat_template.jinja").unlink()
    with pytest.raises(ModelLoadError, match="no chat template"):
        load_tokenizer(tokenizer_dir)


def test_folder_without_text_encoder_is_refused_with_a_hint(tiny_snapshot, tmp_path):
    with pytest.raises(ModelLoadError, match="model_index.json"):
        load_encoder(ModelConfig(model_path=tiny_snapshot / "transformer"))


def test_max_layer_beyond_the_encoder_is_refused(tiny_snapshot):
    with pytest.raises(ModelLoadError, match="exceeds the encoder's 34 layers"):
        load_encoder(ModelConfig(model_path=tiny_snapshot, max_layer=35))


def test_hugging_face_cache_snapshots_are_named_by_repository(tmp_path):
    snapshot = tmp_path / "models--black-forest-labs--FLUX.2-dev" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    assert model_display_name(snapshot) == "black-forest-labs/FLUX.2-dev"
