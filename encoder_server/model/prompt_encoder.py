"""FLUX.2 prompt embeddings, computed exactly as diffusers' `Flux2Pipeline` (or `Flux2KleinPipeline`) computes them.

Tokenisation is the family's diffusers code (`families.py`) with the snapshot's chat template; the forward pass
runs transformers' bare decoder stack (`MistralModel`, `Qwen3Model`) and stops after the deepest requested layer
(`layer_capture.py`), so the decoder layers can be shared with a model generating text on another thread. This
object knows nothing of gRPC: it takes prompts and returns tensors.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from encoder_server.config import RequestLimits
from encoder_server.model.families import MISTRAL3, Family
from encoder_server.model.layer_capture import LayerCapture
from encoder_server.model.request import EncodeRequest, RequestBounds, validate_request
from shared.defaults import DEFAULT_MAX_SEQUENCE_LENGTH
from shared.wire import DTYPES


@dataclass(frozen=True)
class ModelInfo:
    """What was loaded, and how it runs."""

    model_name: str
    model_path: str
    hidden_size: int
    num_layers: int  # decoder layers in the checkpoint
    max_layer: int  # deepest layer loaded, so the deepest one a request may ask for
    dtype: str
    device: str
    fingerprint: str
    quantization: str = "none"  # "none", "int8" or "nf4"
    weight_bytes: int = 0  # resident size of the loaded weights
    family: Family = MISTRAL3

    def as_dict(self) -> dict[str, Any]:
        """Every field, the family by its name: what reports print as JSON."""
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        values["family"] = self.family.name
        return values


class PromptEncoder:
    """Turns prompts into `prompt_embeds` `[B, L, len(layers) * hidden]`."""

    def __init__(self, language_model: Any, tokenizer: Any, info: ModelInfo, limits: RequestLimits) -> None:
        self._model = language_model
        self._capture = LayerCapture(language_model)
        self._tokenizer = tokenizer
        self.info = info
        self.limits = limits
        self.forward_passes = 0
        # The tokenizer's padding state and the capture are per call: one forward at a time.
        self._lock = threading.Lock()

    def bounds(self, limits: RequestLimits) -> RequestBounds:
        """`limits` plus what this model can do: the checks a request to it must pass."""
        return RequestBounds(
            limits=limits,
            max_layer=self.info.max_layer,
            num_layers=self.info.num_layers,
            hidden_size=self.info.hidden_size,
            item_size=DTYPES[self.info.dtype].itemsize,
        )

    def encode(
        self,
        prompts: str | Sequence[str],
        max_sequence_length: int = DEFAULT_MAX_SEQUENCE_LENGTH,
        hidden_state_layers: Sequence[int] = (),
    ) -> torch.Tensor:
        """Embeddings for `prompts` in one forward pass, validated against this encoder's limits; layers default
        to the family's."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        layers = tuple(hidden_state_layers) or self.info.family.default_layers
        request = EncodeRequest(tuple(prompts), max_sequence_length, layers)
        validate_request(request, self.bounds(self.limits))
        return self.encode_many([request])[0]

    def encode_many(self, requests: Sequence[EncodeRequest]) -> list[torch.Tensor]:
        """One forward pass for several requests of the same length; each gets its own rows and layers."""
        lengths = {request.max_sequence_length for request in requests}
        if len(lengths) != 1:
            raise ValueError(f"requests in one pass must share max_sequence_length, got {sorted(lengths)}")
        prompts = [prompt for request in requests for prompt in request.prompts]
        layers = sorted({layer for request in requests for layer in request.hidden_state_layers})
        with self._lock:
            input_ids, attention_mask = self._tokenize(prompts, lengths.pop())
            hidden_states = self._hidden_states(input_ids, attention_mask, layers)
        outputs = []
        start = 0
        for request in requests:
            rows = slice(start, start + len(request.prompts))
            outputs.append(_stack_layers([hidden_states[k][rows] for k in request.hidden_state_layers]))
            start = rows.stop
        return outputs

    def _tokenize(self, prompts: list[str], max_sequence_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids, attention_mask = self.info.family.tokenize(self._tokenizer, prompts, max_sequence_length)
        device = self._model.device
        return input_ids.to(device), attention_mask.to(device)

    def _hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: Sequence[int]
    ) -> dict[int, torch.Tensor]:
        """Outputs of the 1-based decoder `layers`, each `[B, L, hidden]`, as transformers numbers them."""
        captured = self._capture.run(input_ids, attention_mask, layers)
        self.forward_passes += 1
        deepest = max(layers)
        if deepest == self.info.num_layers:
            # transformers reports the encoder's final hidden state after the closing RMSNorm.
            with torch.inference_mode():
                captured[deepest] = self._capture.norm(captured[deepest])
        return captured


def _stack_layers(layer_outputs: list[torch.Tensor]) -> torch.Tensor:
    """`[B, L, H]` per layer -> `[B, L, layers * H]`, in diffusers' order (layer-major within a token)."""
    stacked = torch.stack(layer_outputs, dim=1)  # [B, layers, L, H]
    batch_size, num_layers, seq_len, hidden_dim = stacked.shape
    return stacked.permute(0, 2, 1, 3).reshape(batch_size, seq_len, num_layers * hidden_dim)
