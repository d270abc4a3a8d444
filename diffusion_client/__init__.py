"""FLUX.2 generation with remote prompt embeddings: the public API. Import from here; the modules behind it may move.

    from diffusion_client import GenerationJob, ImageGenerator, PipelineConfig, RemoteTextEncoder, load_pipeline

The names load on first use, so `import diffusion_client` (and every command's `--help`) pulls in no torch or grpc.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusion_client.encoder_client.client import RemoteTextEncoder
    from diffusion_client.errors import (
        BadReplyError,
        ClientError,
        EncoderCallError,
        EncoderError,
        EncoderFailedError,
        EncoderRejectedError,
        EncoderTimeoutError,
        EncoderUnavailableError,
        InputError,
        ModelMismatchError,
        PipelineMismatchError,
        TransportError,
    )
    from diffusion_client.generation.generator import FailedJob, GeneratedImage, ImageGenerator
    from diffusion_client.generation.jobs import GenerationJob, jobs_from_file
    from diffusion_client.generation.pipeline import PipelineConfig, load_pipeline, model_kind
    from diffusion_client.generation.preflight import PreparedJob
    from diffusion_client.lora.specs import LoraSpec
    from diffusion_client.provenance.marking import Marker, MarkingOptions
    from shared.server_info import ServerInfo

# Each public name and the module that defines it.
_HOMES = {
    "RemoteTextEncoder": "diffusion_client.encoder_client.client",
    "ServerInfo": "shared.server_info",
    "ImageGenerator": "diffusion_client.generation.generator",
    "GeneratedImage": "diffusion_client.generation.generator",
    "FailedJob": "diffusion_client.generation.generator",
    "GenerationJob": "diffusion_client.generation.jobs",
    "jobs_from_file": "diffusion_client.generation.jobs",
    "PreparedJob": "diffusion_client.generation.preflight",
    "PipelineConfig": "diffusion_client.generation.pipeline",
    "load_pipeline": "diffusion_client.generation.pipeline",
    "model_kind": "diffusion_client.generation.pipeline",
    "LoraSpec": "diffusion_client.lora.specs",
    "Marker": "diffusion_client.provenance.marking",
    "MarkingOptions": "diffusion_client.provenance.marking",
    **{
        name: "diffusion_client.errors"
        for name in (
            "ClientError",
            "EncoderError",
            "EncoderCallError",
            "TransportError",
            "EncoderUnavailableError",
            "EncoderTimeoutError",
            "EncoderRejectedError",
            "EncoderFailedError",
            "BadReplyError",
            "ModelMismatchError",
            "PipelineMismatchError",
            "InputError",
        )
    },
}

__all__ = [
    "BadReplyError",
    "ClientError",
    "EncoderCallError",
    "EncoderError",
    "EncoderFailedError",
    "EncoderRejectedError",
    "EncoderTimeoutError",
    "EncoderUnavailableError",
    "FailedJob",
    "GeneratedImage",
    "GenerationJob",
    "ImageGenerator",
    "InputError",
    "LoraSpec",
    "Marker",
    "MarkingOptions",
    "ModelMismatchError",
    "PipelineConfig",
    "PipelineMismatchError",
    "PreparedJob",
    "RemoteTextEncoder",
    "ServerInfo",
    "TransportError",
    "jobs_from_file",
    "load_pipeline",
    "model_kind",
]
assert sorted(_HOMES) == __all__


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'diffusion_client' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
