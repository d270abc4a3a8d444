"""Keep CLI output to our own lines: no library loading bars or chatter on stderr."""

from __future__ import annotations


def quiet_model_libraries() -> None:
    """Silence diffusers' and transformers' progress bars and info logs; warnings that matter still surface."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()
