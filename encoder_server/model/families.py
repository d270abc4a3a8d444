"""The FLUX.2 text-encoder families a snapshot may hold, told apart by `text_encoder/config.json`.

- `mistral3`: FLUX.2-dev's Mistral Small 3.1 (`Flux2Pipeline._get_mistral_3_small_prompt_embeds`): the FLUX.2
  system message and the prompt through the snapshot's chat template, layers (10, 20, 30); it also upsamples.
- `qwen3`: FLUX.2 [klein]'s Qwen3 (`Flux2KleinPipeline._get_qwen3_prompt_embeds`): the prompt alone as a user turn,
  the generation prompt with thinking off, each prompt tokenised on its own, layers (9, 18, 27).

Each family's tokenisation is its diffusers function's, line for line; the forward pass is shared
(`layer_capture.py`), so embeddings are bitwise those diffusers computes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from encoder_server.errors import ModelLoadError

Tokenize = Callable[[Any, Sequence[str], int], tuple[torch.Tensor, torch.Tensor]]


def _tokenize_mistral3(tokenizer: Any, prompts: Sequence[str], max_sequence_length: int) -> tuple[Any, Any]:
    from diffusers.pipelines.flux2.pipeline_flux2 import format_input
    from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE

    inputs = tokenizer.apply_chat_template(
        format_input(prompts=list(prompts), system_message=SYSTEM_MESSAGE),
        add_generation_prompt=False,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        padding="max_length",
        truncation=True,
        max_length=max_sequence_length,
    )
    return inputs["input_ids"], inputs["attention_mask"]


def _tokenize_qwen3(tokenizer: Any, prompts: Sequence[str], max_sequence_length: int) -> tuple[Any, Any]:
    input_ids, attention_masks = [], []
    for prompt in prompts:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
        inputs = tokenizer(
            text, return_tensors="pt", padding="max_length", truncation=True, max_length=max_sequence_length
        )
        input_ids.append(inputs["input_ids"])
        attention_masks.append(inputs["attention_mask"])
    return torch.cat(input_ids, dim=0), torch.cat(attention_masks, dim=0)


@dataclass(frozen=True)
class Family:
    name: str
    pipeline: str  # the diffusers pipeline these embeddings feed
    default_layers: tuple[int, ...]
    bare_model: str  # the transformers class of the decoder stack alone
    key_mapping: dict[str, str] = field(hash=False)  # checkpoint keys onto the bare decoder stack
    tokenize: Tokenize = field(hash=False, compare=False)
    can_upsample: bool = False


MISTRAL3 = Family(
    name="mistral3",
    pipeline="Flux2Pipeline",
    default_layers=(10, 20, 30),
    bare_model="MistralModel",
    # Mistral3ForConditionalGeneration's language model, in the layout transformers writes today and the older one.
    key_mapping={r"^model\.language_model\.": "", r"^language_model\.model\.": ""},
    tokenize=_tokenize_mistral3,
    can_upsample=True,
)
QWEN3 = Family(
    name="qwen3",
    pipeline="Flux2KleinPipeline",
    default_layers=(9, 18, 27),
    bare_model="Qwen3Model",
    key_mapping={r"^model\.": ""},  # Qwen3ForCausalLM's decoder stack
    tokenize=_tokenize_qwen3,
)
FAMILIES = {family.name: family for family in (MISTRAL3, QWEN3)}


def detect_family(text_encoder_dir: Path) -> Family:
    """The family `text_encoder/config.json` declares, or a one-line error naming the ones served."""
    try:
        config = json.loads((text_encoder_dir / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot read {text_encoder_dir / 'config.json'}: {error}") from error
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in FAMILIES:
        raise ModelLoadError(
            f"{text_encoder_dir} holds a {model_type!r} text encoder; flux2-encoder serves FLUX.2-dev's Mistral3 "
            "(model_type 'mistral3') and FLUX.2 [klein]'s Qwen3 (model_type 'qwen3')"
        )
    return FAMILIES[str(model_type)]
