"""A plain encode request, with defaults applied, and the checks it must pass before queuing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from encoder_server.errors import InvalidRequestError
from shared.defaults import DEFAULT_HIDDEN_STATE_LAYERS, DEFAULT_MAX_SEQUENCE_LENGTH


@dataclass(frozen=True)
class EncodeRequest:
    prompts: tuple[str, ...]
    max_sequence_length: int = DEFAULT_MAX_SEQUENCE_LENGTH
    hidden_state_layers: tuple[int, ...] = DEFAULT_HIDDEN_STATE_LAYERS

    @classmethod
    def with_defaults(
        cls,
        prompts: Sequence[str],
        max_sequence_length: int | None = None,
        hidden_state_layers: Sequence[int] = (),
    ) -> EncodeRequest:
        return cls(
            prompts=tuple(prompts),
            max_sequence_length=DEFAULT_MAX_SEQUENCE_LENGTH if max_sequence_length is None else max_sequence_length,
            hidden_state_layers=tuple(hidden_state_layers) or DEFAULT_HIDDEN_STATE_LAYERS,
        )


@dataclass(frozen=True)
class RequestBounds:
    """What this server accepts; built from the config and the loaded model."""

    max_prompts: int
    max_prompt_chars: int
    max_sequence_length: int
    max_layer: int
    num_layers: int


def validate_request(request: EncodeRequest, bounds: RequestBounds) -> None:
    """Raise `InvalidRequestError` naming the limit a request breaks; return if it is acceptable."""
    count = len(request.prompts)
    if count == 0:
        raise InvalidRequestError(f"no prompts given; send 1 to {bounds.max_prompts} prompts per request")
    if count > bounds.max_prompts:
        raise InvalidRequestError(
            f"{count} prompts in one request; the limit is {bounds.max_prompts} (split it into several requests)"
        )
    for index, prompt in enumerate(request.prompts):
        if len(prompt) > bounds.max_prompt_chars:
            raise InvalidRequestError(
                f"prompt {index} has {len(prompt)} characters; the limit is {bounds.max_prompt_chars} "
                f"(only the first {request.max_sequence_length} tokens are used anyway)"
            )
    if not 1 <= request.max_sequence_length <= bounds.max_sequence_length:
        raise InvalidRequestError(
            f"max_sequence_length {request.max_sequence_length} is out of range; use 1 to {bounds.max_sequence_length}"
        )
    for layer in request.hidden_state_layers:
        if not 1 <= layer <= bounds.max_layer:
            hint = (
                f" (this server loaded {bounds.max_layer} of {bounds.num_layers} layers; restart it with a "
                "larger --max-layer for deeper ones)"
                if bounds.max_layer < bounds.num_layers
                else ""
            )
            raise InvalidRequestError(f"hidden state layer {layer} is out of range; use 1 to {bounds.max_layer}{hint}")
