"""Keep CLI output to our own lines: no library loading bars or chatter on stderr."""

from __future__ import annotations

import logging
import warnings

# Loggers of libraries we call that report, at WARNING, things our users cannot act on.
# bitsandbytes' CPU backend warns on import, on CPUs with AVX512-BF16 only, that it could not fetch an
# optional kernel from the Hugging Face hub; these machines never reach the hub, and the CPU path works.
# Its int8 matmul warns on every call of every layer that it computes in float16, which it always does.
NOISY_LOGGERS = ("bitsandbytes.backends.cpu.ops", "bitsandbytes.autograd._functions")


def quiet_library_loggers() -> None:
    """Raise noisy library loggers to ERROR; cheap, imports nothing, and must run before those libraries load."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # Images are refused by our own pixel caps, below PIL's warning threshold, before they are decoded.
    warnings.filterwarnings(
        "ignore", message="Image size .* exceeds limit of .* could be decompression bomb DOS attack"
    )
    # peft warns whenever a second adapter joins a model; several LoRAs at once is what --lora asks for.
    warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute in the model")


def quiet_model_libraries() -> None:
    """Silence diffusers' and transformers' progress bars and info logs; warnings that matter still surface."""
    quiet_library_loggers()
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()
