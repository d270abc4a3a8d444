"""What `GetInfo` says about a loaded model: its `ServerInfo`, and how the list of served models names it."""

from __future__ import annotations

from encoder_server import __version__
from encoder_server.config import ServerConfig
from encoder_server.model.loaded_models import LoadedModels
from shared.defaults import DEFAULT_MAX_SEQUENCE_LENGTH
from shared.server_info import ServedModel, ServerInfo


def server_info(models: LoadedModels, config: ServerConfig, served: ServedModel) -> ServerInfo:
    """Every field of `GetInfo` for one loaded model; `models` lists only it (`ServedEngines` lists them all)."""
    model, limits, upsampling = models.encoder.info, config.limits, config.upsampling
    available = models.upsampler is not None
    return ServerInfo(
        model_name=served.name,
        model_path=model.model_path,
        hidden_size=model.hidden_size,
        num_layers=model.num_layers,
        max_layer=model.max_layer,
        default_hidden_state_layers=model.family.default_layers,
        default_max_sequence_length=DEFAULT_MAX_SEQUENCE_LENGTH,
        max_sequence_length=limits.max_sequence_length,
        dtype=model.dtype,
        device=model.device,
        fingerprint=model.fingerprint,
        server_version=__version__,
        max_prompts_per_request=limits.max_prompts,
        max_prompt_chars=limits.max_prompt_chars,
        max_hidden_state_layers=limits.max_hidden_state_layers,
        max_reply_bytes=limits.max_reply_bytes,
        quantization=model.quantization,
        weight_bytes=model.weight_bytes,
        upsampling_available=available,
        max_upsample_prompts=upsampling.max_prompts if available else 0,
        max_upsample_images=upsampling.max_images if available else 0,
        max_upsample_image_bytes=upsampling.max_image_bytes if available else 0,
        max_upsample_image_pixels=upsampling.max_image_pixels if available else 0,
        max_new_tokens=upsampling.max_new_tokens if available else 0,
        family=model.family.name,
        pipeline=model.family.pipeline,
        models=(served,),
    )


def served_model(models: LoadedModels, name: str | None = None) -> ServedModel:
    """How `GetInfo` lists this model among those a server serves; `name` (None: the loaded model's) is what
    requests call it."""
    model = models.encoder.info
    return ServedModel(
        name=name or model.model_name,
        family=model.family.name,
        pipeline=model.family.pipeline,
        hidden_size=model.hidden_size,
        default_hidden_state_layers=model.family.default_layers,
        fingerprint=model.fingerprint,
        quantization=model.quantization,
        upsampling_available=models.upsampler is not None,
    )
