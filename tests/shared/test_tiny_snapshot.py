"""The tiny snapshot is FLUX.2-shaped, uses the real Tekken tokenizer, and is byte-for-byte reproducible."""

from __future__ import annotations

import json

from shared.tiny_snapshot import build_tiny_snapshot, snapshot_digest


def test_rebuilding_the_snapshot_gives_identical_bytes(tiny_snapshot, tmp_path):
    assert snapshot_digest(build_tiny_snapshot(tmp_path / "again")) == snapshot_digest(tiny_snapshot)


def test_snapshot_has_diffusers_layout(tiny_snapshot):
    index = json.loads((tiny_snapshot / "model_index.json").read_text())
    assert index["_class_name"] == "Flux2Pipeline"
    assert index["text_encoder"] == ["transformers", "Mistral3ForConditionalGeneration"]
    assert index["tokenizer"] == ["transformers", "PixtralProcessor"]
    for component in ("text_encoder", "tokenizer", "transformer", "vae", "scheduler"):
        assert (tiny_snapshot / component).is_dir()


def test_transformer_joint_attention_dim_is_three_encoder_hidden_sizes(tiny_snapshot):
    text_config = json.loads((tiny_snapshot / "text_encoder" / "config.json").read_text())["text_config"]
    transformer = json.loads((tiny_snapshot / "transformer" / "config.json").read_text())
    assert text_config["num_hidden_layers"] >= 32
    assert transformer["joint_attention_dim"] == 3 * text_config["hidden_size"]


def test_tokenizer_is_a_pixtral_processor_over_tekken_with_mistral_small_chat_template(reference_pipeline):
    processor = reference_pipeline.tokenizer
    assert type(processor).__name__ == "PixtralProcessor"  # as FLUX.2-dev ships tokenizer/
    tokenizer = processor.tokenizer
    assert tokenizer.convert_tokens_to_ids(["[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "<pad>"]) == [17, 18, 11]
    rendered = processor.apply_chat_template(
        [{"role": "system", "content": "SYS"}, {"role": "user", "content": "hi"}], tokenize=False
    )
    assert rendered == "<s>[SYSTEM_PROMPT]SYS[/SYSTEM_PROMPT][INST]hi[/INST]"
