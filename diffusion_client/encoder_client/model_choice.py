"""Which of an encoder server's models a pipeline uses: the one named, else the one whose family and width fit."""

from __future__ import annotations

from collections.abc import Sequence

from diffusion_client.errors import InputError, PipelineMismatchError, printable_line
from shared.server_info import ServedModel

FAMILY_OF_PIPELINE = {"Flux2Pipeline": "Mistral3 (FLUX.2-dev)", "Flux2KleinPipeline": "Qwen3 (FLUX.2 [klein])"}


def choose_model(
    served: Sequence[ServedModel],
    *,
    pipeline: str,
    joint_attention_dim: int,
    layers: Sequence[int] = (),
    name: str | None = None,
    pinned_fingerprint: str | None = None,
    target: str,
) -> ServedModel:
    """The model named `name`, else the one serving `pipeline` that fits `joint_attention_dim` (the pinned weights
    first among several). Raises `InputError` for a name not served and `PipelineMismatchError` when no model
    serves this pipeline, naming what the transformer needs and what the server offers."""
    if name is not None:
        chosen = [model for model in served if model.name == name]
        if not chosen:
            names = ", ".join(printable_line(model.name) for model in served)
            raise InputError(f"the encoder at {target} serves no model named {name!r}; it serves {names}")
    else:
        pin = pinned_fingerprint or ""
        chosen = sorted(
            (model for model in served if model.pipeline == pipeline),
            key=lambda model: (  # those that fit first, and among them the pinned weights
                model.embedding_dim(layers or None) != joint_attention_dim,
                not model.fingerprint.startswith(pin),
            ),
        )
    if not chosen or chosen[0].pipeline != pipeline:
        offered = "; ".join(describe(model) for model in served)
        family = FAMILY_OF_PIPELINE.get(pipeline, pipeline)
        raise PipelineMismatchError(
            f"this {pipeline} transformer needs {family} embeddings {joint_attention_dim} wide, but the encoder at "
            f"{target} serves {offered}; point --encoder at a server with the matching text encoder, or pick one "
            "with --encoder-model",
            target=target,
        )
    return chosen[0]


def describe(model: ServedModel) -> str:
    """`FLUX.2-dev (mistral3 for Flux2Pipeline, 15360 wide)`."""
    return f"{printable_line(model.name)} ({model.family} for {model.pipeline}, {model.embedding_dim()} wide)"
