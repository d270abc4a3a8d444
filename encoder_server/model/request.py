"""A plain encode request, with defaults applied, and the checks it must pass before queuing."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from encoder_server.config import MIB, RequestLimits
from encoder_server.errors import InvalidRequestError
from shared.defaults import DEFAULT_HIDDEN_STATE_LAYERS, DEFAULT_MAX_SEQUENCE_LENGTH


@dataclass(frozen=True)
class EncodeRequest:
    prompts: tuple[str, ...]
    max_sequence_length: int = DEFAULT_MAX_SEQUENCE_LENGTH
    hidden_state_layers: tuple[int, ...] = DEFAULT_HIDDEN_STATE_LAYERS  # () until `with_layers` gives the model's

    def with_layers(self, default_layers: tuple[int, ...]) -> EncodeRequest:
        """This request with the model's default layers if it named none."""
        return self if self.hidden_state_layers else dataclasses.replace(self, hidden_state_layers=default_layers)

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
            hidden_state_layers=tuple(hidden_state_layers),  # the model's defaults are applied where it is known
        )


@dataclass(frozen=True)
class RequestBounds:
    """What this server accepts: the configured limits plus what the loaded model can do. Built once."""

    limits: RequestLimits
    max_layer: int  # deepest layer loaded
    num_layers: int  # layers in the checkpoint
    hidden_size: int
    item_size: int  # bytes per element of the served dtype

    def reply_bytes(self, request: EncodeRequest) -> int:
        """Payload bytes of the reply: prompts x length x layers x hidden size x element size."""
        per_token = len(request.hidden_state_layers) * self.hidden_size * self.item_size
        return len(request.prompts) * request.max_sequence_length * per_token


def validate_request(request: EncodeRequest, bounds: RequestBounds) -> None:
    """Raise `InvalidRequestError` naming the limit a request breaks; return if it is acceptable."""
    limits = bounds.limits
    count = len(request.prompts)
    if count == 0:
        raise InvalidRequestError(f"no prompts given; send 1 to {limits.max_prompts} prompts per request")
    if count > limits.max_prompts:
        raise InvalidRequestError(
            f"{count} prompts in one request; the limit is {limits.max_prompts} (split it into several requests)"
        )
    for index, prompt in enumerate(request.prompts):
        if len(prompt) > limits.max_prompt_chars:
            raise InvalidRequestError(
                f"prompt {index} has {len(prompt)} characters; the limit is {limits.max_prompt_chars} "
                f"(only the first {request.max_sequence_length} tokens are used anyway)"
            )
    if not 1 <= request.max_sequence_length <= limits.max_sequence_length:
        raise InvalidRequestError(
            f"max_sequence_length {request.max_sequence_length} is out of range; use 1 to {limits.max_sequence_length}"
        )
    if len(request.hidden_state_layers) > limits.max_hidden_state_layers:
        raise InvalidRequestError(
            f"{len(request.hidden_state_layers)} hidden state layers asked for; the limit is "
            f"{limits.max_hidden_state_layers} (FLUX.2 stacks 3)"
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
    reply_bytes = bounds.reply_bytes(request)
    if reply_bytes > limits.max_reply_bytes:
        raise InvalidRequestError(
            f"the reply would be {reply_bytes / MIB:.1f} MiB; the limit is {limits.max_reply_bytes / MIB:.1f} MiB "
            "per request (send fewer prompts or layers per request)"
        )
