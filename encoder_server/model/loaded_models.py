"""Loading what a server runs: the prompt encoder, and with `--enable-upsampling` the upsampler beside it."""

from __future__ import annotations

from dataclasses import dataclass

from encoder_server.config import ModelConfig, RequestLimits, UpsampleLimits
from encoder_server.errors import ModelLoadError
from encoder_server.model import loading
from encoder_server.model.families import detect_family
from encoder_server.model.prompt_encoder import ModelInfo, PromptEncoder
from encoder_server.model.upsampler import PromptUpsampler
from shared.wire import DTYPES


@dataclass
class LoadedModels:
    encoder: PromptEncoder
    upsampler: PromptUpsampler | None = None  # only with `enable_upsampling`


def load_models(
    config: ModelConfig, limits: RequestLimits | None = None, upsample_limits: UpsampleLimits | None = None
) -> LoadedModels:
    """Load from a local snapshot; raises `ModelLoadError` with a message saying what to fix.

    With `enable_upsampling` the whole Mistral3 model is loaded once: it generates, and its language model
    encodes (every layer available). Otherwise only the language model's layers up to `max_layer` load.
    """
    text_encoder_dir, tokenizer_dir = loading.resolve_snapshot(config.model_path)
    family = detect_family(text_encoder_dir)
    if config.enable_upsampling and not family.can_upsample:
        raise ModelLoadError(
            f"{config.model_path} holds a {family.name} text encoder, which does not upsample prompts; "
            "upsampling needs FLUX.2-dev's Mistral3: drop --enable-upsampling for this model"
        )
    try:
        tokenizer = loading.load_tokenizer(tokenizer_dir)
        processor = loading.load_processor(tokenizer_dir) if config.enable_upsampling else None
        model, language_model, num_layers, quantization = loading.load_language_model(
            text_encoder_dir,
            family=family,
            max_layer=config.max_layer,
            device=config.device,
            dtype=DTYPES[config.resolved_dtype],
            quantize=config.quantize,  # type: ignore[arg-type]  # checked by ModelConfig
            whole=config.enable_upsampling,
        )
    except ModelLoadError:
        raise
    except Exception as error:  # transformers, safetensors and torch each raise their own types
        raise ModelLoadError(f"could not load the text encoder from {config.model_path}: {error}") from error
    info = ModelInfo(
        model_name=loading.model_display_name(config.model_path),
        model_path=str(config.model_path.resolve()),
        hidden_size=int(language_model.config.hidden_size),
        num_layers=num_layers,
        max_layer=int(language_model.config.num_hidden_layers),
        dtype=config.resolved_dtype,
        device=str(language_model.device),
        fingerprint=loading.snapshot_fingerprint(text_encoder_dir, tokenizer.chat_template, quantization),
        quantization=quantization,
        weight_bytes=int(model.get_memory_footprint()),
        family=family,
    )
    encoder = PromptEncoder(language_model, tokenizer, info, limits or RequestLimits())
    if processor is None:
        return LoadedModels(encoder)
    return LoadedModels(encoder, PromptUpsampler(model, processor, upsample_limits or UpsampleLimits()))


def load_encoder(config: ModelConfig, limits: RequestLimits | None = None) -> PromptEncoder:
    """Load one `PromptEncoder` from a local snapshot; raises `ModelLoadError` with a message saying what to fix."""
    return load_models(config, limits).encoder
