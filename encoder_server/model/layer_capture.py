"""Run a transformers decoder stack's own `forward` (`MistralModel`, `Qwen3Model`) up to the deepest layer asked for,
keeping the outputs of chosen layers.

The decoder layers may be shared with a model that is generating text on another thread (prompt upsampling),
so nothing is registered on them: the capture runs a second container of the same class, built empty, whose
embedding, rotary embedding and norm are the shared ones and whose layers are thin wrappers around the shared
layers. Generation never passes through the wrappers; the same modules and weights give bitwise the same
numbers as before.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch


class _StopForward(Exception):
    """Raised once the deepest requested layer has run; nothing later is computed."""


class _Pass:
    """What one forward pass wants kept, and what it has kept so far."""

    def __init__(self, wanted: Iterable[int]) -> None:
        self.wanted = set(wanted)
        self.deepest = max(self.wanted)
        self.outputs: dict[int, torch.Tensor] = {}


class _CapturingLayer(torch.nn.Module):
    """Runs one shared decoder layer, keeps its output when asked, and ends the pass after the deepest layer."""

    def __init__(self, layer: torch.nn.Module, number: int, capture: LayerCapture) -> None:
        super().__init__()
        self.layer = layer
        self.number = number  # 1-based, as transformers' `hidden_states[number]`
        self.capture = capture

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        output = self.layer(hidden_states, *args, **kwargs)
        current = self.capture.current
        if current is not None and self.number in current.wanted:
            current.outputs[self.number] = output[0] if isinstance(output, tuple) else output
            if self.number == current.deepest:
                raise _StopForward
        return output


class LayerCapture:
    """Outputs of chosen 1-based decoder layers of `language_model` (a bare decoder stack), one pass at a time."""

    def __init__(self, language_model: Any) -> None:
        config = copy.deepcopy(language_model.config)
        with torch.device("meta"):  # an empty container: every module in it is replaced by a shared one below
            view = type(language_model)(config)
        view.embed_tokens = language_model.embed_tokens
        view.rotary_emb = language_model.rotary_emb
        view.norm = language_model.norm
        view.layers = torch.nn.ModuleList(
            _CapturingLayer(layer, number, self) for number, layer in enumerate(language_model.layers, start=1)
        )
        self._view = view.eval()
        self.norm = language_model.norm
        self.current: _Pass | None = None

    @property
    def device(self) -> torch.device:
        return self.norm.weight.device

    @torch.inference_mode()
    def run(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: Iterable[int]
    ) -> dict[int, torch.Tensor]:
        """`{layer: [B, L, hidden]}` for each requested layer; the pass stops after the deepest one."""
        self.current = current = _Pass(layers)
        try:
            self._view(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
        finally:
            self.current = None
        return current.outputs
