"""What a server says about itself (`GetInfo`), as one plain object both sides convert in one place."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from shared.defaults import DEFAULT_HIDDEN_STATE_LAYERS
from shared.protocol import encoder_pb2
from shared.wire import TensorSpec


@dataclass(frozen=True)
class ServedModel:
    """One model a server serves: what a client needs to pick the one that fits its transformer."""

    name: str
    family: str  # "mistral3" or "qwen3"
    pipeline: str  # "Flux2Pipeline" or "Flux2KleinPipeline"
    hidden_size: int
    default_hidden_state_layers: tuple[int, ...]
    fingerprint: str
    quantization: str = "none"
    upsampling_available: bool = False

    def embedding_dim(self, layers: Sequence[int] | None = None) -> int:
        return len(layers or self.default_hidden_state_layers) * self.hidden_size


@dataclass(frozen=True)
class ServerInfo:
    """Every field of `GetInfoResponse`, as plain Python."""

    model_name: str
    model_path: str
    hidden_size: int  # prompt_embeds' last dimension is len(layers) * hidden_size
    num_layers: int  # decoder layers in the checkpoint
    max_layer: int  # deepest layer loaded, so the deepest one a request may ask for
    default_hidden_state_layers: tuple[int, ...]
    default_max_sequence_length: int
    max_sequence_length: int
    dtype: str
    device: str
    fingerprint: str
    server_version: str
    max_prompts_per_request: int
    max_prompt_chars: int
    max_hidden_state_layers: int
    max_reply_bytes: int
    quantization: str = "none"  # "none", "int8" or "nf4"
    weight_bytes: int = 0
    upsampling_available: bool = False
    max_upsample_prompts: int = 0
    max_upsample_images: int = 0  # reference images in one request, all prompts together
    max_upsample_image_bytes: int = 0
    max_upsample_image_pixels: int = 0
    max_new_tokens: int = 0
    family: str = "mistral3"  # of the model described
    pipeline: str = "Flux2Pipeline"
    models: tuple[ServedModel, ...] = ()  # every model served, the first being the default

    def embedding_dim(self, layers: Sequence[int] = DEFAULT_HIDDEN_STATE_LAYERS) -> int:
        return len(layers) * self.hidden_size

    def embedding_spec(self, prompts: int, max_sequence_length: int, layers: Sequence[int]) -> TensorSpec:
        """The exact tensor this server must return for such a request."""
        return TensorSpec(self.dtype, (prompts, max_sequence_length, self.embedding_dim(layers)))

    def to_pb(self) -> encoder_pb2.GetInfoResponse:
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self) if field.name != "models"}
        models = [encoder_pb2.ServedModel(**dataclasses.asdict(model)) for model in self.models]
        return encoder_pb2.GetInfoResponse(**values, models=models)

    @classmethod
    def from_pb(cls, reply: encoder_pb2.GetInfoResponse) -> ServerInfo:
        values = {field.name: getattr(reply, field.name) for field in dataclasses.fields(cls)}
        values["default_hidden_state_layers"] = tuple(values["default_hidden_state_layers"])
        values["models"] = tuple(
            ServedModel(
                **{
                    **{field.name: getattr(model, field.name) for field in dataclasses.fields(ServedModel)},
                    "default_hidden_state_layers": tuple(model.default_hidden_state_layers),
                }
            )
            for model in reply.models
        )
        return cls(**values)

    def served(self) -> ServedModel:
        """This reply's model as a `ServedModel` (servers from before `models` existed list none)."""
        for model in self.models:
            if model.name == self.model_name:
                return model
        return ServedModel(
            self.model_name,
            self.family or "mistral3",
            self.pipeline or "Flux2Pipeline",
            self.hidden_size,
            self.default_hidden_state_layers,
            self.fingerprint,
            self.quantization,
            self.upsampling_available,
        )
