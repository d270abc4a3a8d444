"""Load the FLUX.2 text encoder's decoder stack and tokenizer from a local diffusers snapshot.

Only what embeddings need is loaded: the token embeddings and decoder layers 1..max_layer (by default up to
the deepest layer the family stacks: 30 of Mistral3's 40, 27 of Qwen3's 36), optionally quantised to int8 or
nf4. The vision tower, projector, layers beyond `max_layer` and the LM head stay on disk (safetensors reads
tensors lazily, so they are never materialised).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from encoder_server.errors import ModelLoadError
from encoder_server.model.families import MISTRAL3, Family
from encoder_server.model.quantization import (
    Quantization,
    bitsandbytes_config,
    resolve_quantization,
    saved_quantization,
)
from shared.fingerprint import weights_fingerprint

log = logging.getLogger(__name__)


def resolve_snapshot(model_path: Path) -> tuple[Path, Path]:
    """Return the snapshot's `text_encoder/` and `tokenizer/` folders, or say what is wrong with the path."""
    if not model_path.is_dir():
        raise ModelLoadError(f"model path {model_path} is not a directory; pass the root of a FLUX.2 snapshot")
    text_encoder_dir = model_path / "text_encoder"
    tokenizer_dir = model_path / "tokenizer"
    for folder in (text_encoder_dir, tokenizer_dir):
        if not (folder / "config.json").is_file() and not (folder / "tokenizer_config.json").is_file():
            raise ModelLoadError(
                f"{model_path} has no usable {folder.name}/ folder; pass the root of a FLUX.2 snapshot "
                "(the folder holding model_index.json)"
            )
    return text_encoder_dir, tokenizer_dir


def model_display_name(model_path: Path) -> str:
    """`org/name` for a Hugging Face cache snapshot, else the folder's name."""
    resolved = model_path.resolve()
    if resolved.parent.name == "snapshots" and resolved.parent.parent.name.startswith("models--"):
        return resolved.parent.parent.name.removeprefix("models--").replace("--", "/")
    return resolved.name


def load_tokenizer(tokenizer_dir: Path) -> Any:
    """The snapshot's tokenizer, carrying the chat template stored in the snapshot."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if not getattr(tokenizer, "chat_template", None):
        # Processor snapshots may keep the template beside the tokenizer rather than inside it.
        template_json = tokenizer_dir / "chat_template.json"
        if template_json.is_file():
            tokenizer.chat_template = json.loads(template_json.read_text())["chat_template"]
    if not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError(f"{tokenizer_dir} has no chat template; FLUX.2 embeddings are built through it")
    if tokenizer.pad_token_id is None:
        raise ModelLoadError(f"{tokenizer_dir} defines no pad token; prompts cannot be padded to a fixed length")
    return tokenizer


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence the expected 'unexpected keys' report for the parts deliberately left unloaded."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def load_language_model(
    text_encoder_dir: Path,
    *,
    family: Family = MISTRAL3,
    max_layer: int | None,
    device: str,
    dtype: torch.dtype,
    quantize: Quantization | None,
    whole: bool = False,
) -> tuple[Any, Any, int, str]:
    """Load the decoder stack: `(model, its bare decoder stack, num_layers in the checkpoint, quantization served)`.

    `max_layer=None` loads up to the family's deepest default layer, the most FLUX.2's embeddings use. `whole`
    (Mistral3 only) loads the entire `Mistral3ForConditionalGeneration` instead (every layer, vision tower, LM
    head), for upsampling; its language model is the one returned for encoding, so the weights are held once.
    """
    import transformers
    from transformers import AutoConfig, Mistral3ForConditionalGeneration

    config = AutoConfig.from_pretrained(text_encoder_dir)
    text_config = config.get_text_config()
    num_layers = int(text_config.num_hidden_layers)
    if max_layer is not None and max_layer > num_layers:
        raise ModelLoadError(f"--max-layer {max_layer} exceeds the encoder's {num_layers} layers")
    saved = saved_quantization(config)
    quantization = resolve_quantization(quantize, saved)
    extra: dict[str, Any] = {"dtype": dtype, "device_map": device, "output_loading_info": True}
    if saved == "none" and quantization != "none":
        extra["quantization_config"] = bitsandbytes_config(quantization, dtype)  # type: ignore[arg-type]
    if whole:
        model_class, model_config = Mistral3ForConditionalGeneration, config
    else:
        text_config.num_hidden_layers = max_layer or min(max(family.default_layers), num_layers)
        if getattr(text_config, "layer_types", None):  # Qwen3: one attention type per layer loaded
            text_config.layer_types = text_config.layer_types[: text_config.num_hidden_layers]
        if saved != "none" and text_config is not config:
            # The language model's config is a part of Mistral3's; the saved quantisation is on the whole.
            text_config.quantization_config = config.quantization_config
        model_class, model_config = getattr(transformers, family.bare_model), text_config
        extra["key_mapping"] = family.key_mapping
    with _quiet_transformers():
        model, loading_info = model_class.from_pretrained(text_encoder_dir, config=model_config, **extra)
    missing = sorted(loading_info.get("missing_keys", ()))
    if missing:
        raise ModelLoadError(
            f"{text_encoder_dir} lacks {len(missing)} weights (first: {missing[0]}); "
            f"is it a {family.name} text encoder?"
        )
    model.eval().requires_grad_(False)
    language_model = model.model.language_model if whole else model
    return model, language_model, num_layers, quantization


def load_processor(tokenizer_dir: Path) -> Any:
    """The snapshot's `PixtralProcessor` (tokenizer, image processor, chat template), as upsampling needs it."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tokenizer_dir)
    if getattr(processor, "image_processor", None) is None:
        raise ModelLoadError(
            f"{tokenizer_dir} holds a tokenizer, not a PixtralProcessor; --enable-upsampling needs the "
            "processor FLUX.2-dev ships as tokenizer/ (it reads reference images)"
        )
    return processor


def snapshot_fingerprint(text_encoder_dir: Path, chat_template: str, quantization: str) -> str:
    """sha256 over the encoder config, the chat template, the quantisation served and samples of every weight file
    (`shared.fingerprint`); the same weights served in int8 or nf4 give other embeddings than in bf16."""
    parts = [
        (text_encoder_dir / "config.json").read_bytes(),
        chat_template.encode(),
        f"quantization={quantization}".encode(),
    ]
    return weights_fingerprint(text_encoder_dir, parts)
