"""What the page sends, checked: a `PageRequest`, or one `InputError` line saying which field to fix.

The page's own widgets keep values in range, but anyone can post to the page's API directly, so every value
is checked here for its type and range before anything else sees it. Whether the sizes fit the model is
preflight's business, as for the CLI.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusion_client.errors import InputError
from diffusion_client.lora.specs import LoraSpec

MAX_PROMPT_CHARS = 20_000  # far past what 512 tokens hold; the server cuts at 512 tokens anyway
MAX_REFERENCES = 8  # Flux2Pipeline conditions on every reference; more than a few only costs memory and time
MAX_PAGE_STEPS = 200  # one shared GPU: a typo of 20000 steps would hold everyone's queue for hours
RANDOM_SEED_RANGE = 2**32  # the seeds a page draws: short enough to read and retype
# A browser's numbers are doubles: past 2^53 a typed seed silently becomes a neighbour, and so another image.
MAX_PAGE_SEED = 2**53 - 1


@dataclass(frozen=True)
class PageRequest:
    """One Generate (or Rewrite) click, checked."""

    prompt: str
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    references: tuple[Path, ...] = ()
    loras: tuple[LoraSpec, ...] = ()
    upsample: bool = False
    # The rewritten prompt as shown on the page (perhaps edited), encoded exactly as shown; None: ask the server.
    rewrite: str | None = None


def whole_number(name: str, value: Any, low: int, high: int) -> int:
    """A whole number in [low, high] from a page field (Gradio sends numbers as int or float)."""
    if value is None or value == "":
        raise InputError(f"{name} is empty; give a whole number from {low} to {high}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{name} must be a whole number, not {type(value).__name__}")
    if not math.isfinite(value) or not float(value).is_integer():
        raise InputError(f"{name} must be a whole number from {low} to {high}, not {value}")
    number = int(value)
    if not low <= number <= high:
        raise InputError(f"{name} {number} is out of range; use {low} to {high}")
    return number


def finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, not {value!r}")
    return float(value)


def text(name: str, value: Any, limit: int = MAX_PROMPT_CHARS) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError(f"{name} must be text, not {type(value).__name__}")
    if len(value) > limit:
        raise InputError(f"{name} is {len(value):,} characters; the limit is {limit:,}")
    return value


def reference_paths(value: Any) -> tuple[Path, ...]:
    """The uploaded files Gradio hands over: a path, a list of paths, or nothing."""
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    if len(items) > MAX_REFERENCES:
        raise InputError(f"{len(items)} reference images; the limit is {MAX_REFERENCES}, so remove some")
    paths = []
    for item in items:
        path = getattr(item, "path", item)  # Gradio may hand over its FileData or a plain path string
        if not isinstance(path, str | Path) or not str(path):
            raise InputError("a reference image did not arrive as a file; upload it again")
        paths.append(Path(path))
    return tuple(paths)


def chosen_seed(seed: Any, random_seed: Any) -> int:
    """The seed field's value, or a fresh random one when the page asks for it (shown after the run)."""
    if random_seed is True:
        return secrets.randbelow(RANDOM_SEED_RANGE)
    try:
        return whole_number("seed", seed, 0, MAX_PAGE_SEED)
    except InputError as error:
        if isinstance(seed, int | float) and not isinstance(seed, bool) and math.isfinite(seed) and seed > 0:
            raise InputError(
                f"{error}: a browser cannot carry larger seeds exactly; use flux2-generate for those"
            ) from None
        raise


def read_form(
    *,
    prompt: Any,
    seed: Any,
    random_seed: Any,
    steps: Any,
    guidance: Any,
    width: Any,
    height: Any,
    references: Any = None,
    loras: tuple[LoraSpec, ...] = (),
    upsample: Any = False,
    rewrite: Any = None,
) -> PageRequest:
    """The page's fields as a `PageRequest`; the first bad one raises `InputError` naming it."""
    prompt_text = text("the prompt", prompt)
    if not prompt_text.strip():
        raise InputError("the prompt is empty; describe the image to make")
    if not isinstance(upsample, bool):
        raise InputError(f"upsample must be true or false, not {upsample!r}")
    rewrite_text = text("the rewritten prompt", rewrite)
    # A new random seed asks for a new rewrite: the one shown was made with an earlier seed.
    use_rewrite = upsample and random_seed is not True and bool(rewrite_text.strip())
    return PageRequest(
        prompt=prompt_text,
        seed=chosen_seed(seed, random_seed),
        steps=whole_number("steps", steps, 1, MAX_PAGE_STEPS),
        guidance=finite("guidance", guidance),
        # preflight checks sizes against the model; here only that they are numbers it can compare
        width=whole_number("width", width, 1, 1 << 20),
        height=whole_number("height", height, 1, 1 << 20),
        references=reference_paths(references),
        loras=loras,
        upsample=upsample,
        rewrite=rewrite_text if use_rewrite else None,
    )
