"""One pass at the largest batch the server admits, run after loading and before reporting SERVING.

A model can load and still be unable to run: a kernel missing for a dtype or a CPU instruction path, weights
whose shapes a quantised kernel cannot pack, a device out of memory at the first full batch. Found here, that
is one line at start-up instead of INTERNAL on every request after the server said it was ready.
"""

from __future__ import annotations

import time

from encoder_server.config import ServerConfig
from encoder_server.errors import ModelLoadError
from encoder_server.model.loaded_models import LoadedModels
from encoder_server.model.request import EncodeRequest
from encoder_server.model.upsampler import UpsampleRequest
from encoder_server.serving.forward_lock import forward_lock

WARM_UP_PROMPT = "warm-up: a red fox in fresh snow"


def warm_up(models: LoadedModels, config: ServerConfig) -> float:
    """Encode `max_batch_size` prompts at the longest length admitted, through the deepest layer loaded, and
    with upsampling generate one token; returns the seconds taken or raises `ModelLoadError` saying why."""
    started = time.perf_counter()
    encoder = models.encoder
    batch = config.batching.max_batch_size
    deepest = encoder.info.max_layer
    layers = tuple(layer for layer in encoder.info.family.default_layers if layer <= deepest) or (deepest,)
    request = EncodeRequest((WARM_UP_PROMPT,) * batch, config.limits.max_sequence_length, layers)
    try:
        with forward_lock(encoder.info.device):  # the pass serving will run, alone on its device as serving's are
            (prompt_embeds,) = encoder.encode_many([request])  # [batch, max_sequence_length, width]
        if not bool(prompt_embeds.isfinite().all()):
            raise ValueError("it produced NaN or infinite values")
        if models.upsampler is not None:
            models.upsampler.upsample(UpsampleRequest((WARM_UP_PROMPT,), ((),), max_new_tokens=1))
    except Exception as error:  # any library's failure to run is a start-up failure, said in one line
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise ModelLoadError(
            f"the model loaded but cannot run: a warm-up pass of {batch} prompts x "
            f"{config.limits.max_sequence_length} tokens on {encoder.info.device} failed ({type(error).__name__}: "
            f"{reason}); check --device, --dtype and --quantize, or lower --max-batch-size"
        ) from error
    return time.perf_counter() - started
