"""Typed training settings, built by the CLI and checked once; a bad value is one sentence naming its flag."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from diffusion_client.errors import InputError

# Module names by part of the DiT. Single blocks' `to_out` is named per block (`single:`), as a bare "to_out" would
# also match the double blocks' `to_out` list.
IMAGE_ATTENTION = ("to_k", "to_q", "to_v", "to_out.0")
TEXT_ATTENTION = ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
FEED_FORWARD = ("ff.linear_in", "ff.linear_out", "ff_context.linear_in", "ff_context.linear_out")
SINGLE_BLOCKS = ("to_qkv_mlp_proj", "single:attn.to_out")
TARGET_PRESETS: dict[str, tuple[str, ...]] = {
    "attention": IMAGE_ATTENTION + SINGLE_BLOCKS,  # diffusers' FLUX.2 training scripts' default
    "attention-and-text": IMAGE_ATTENTION + TEXT_ATTENTION + SINGLE_BLOCKS,
    "all-blocks": IMAGE_ATTENTION + TEXT_ATTENTION + FEED_FORWARD + SINGLE_BLOCKS,
}
WEIGHTING_SCHEMES = ("none", "sigma_sqrt", "logit_normal", "mode", "cosmap")
MAX_RESOLUTION = 4096


@dataclass(frozen=True)
class TrainConfig:
    data: Path
    model: Path
    out: Path
    instance_prompt: str | None = None
    rank: int = 16
    alpha: float | None = None  # None: the rank (scale 1)
    target_modules: tuple[str, ...] = TARGET_PRESETS["attention"]
    learning_rate: float = 1e-4
    steps: int = 1000
    batch_size: int = 1
    gradient_accumulation: int = 1
    resolution: int = 1024
    seed: int = 0
    guidance: float = 1.0  # FLUX.2-dev is guidance-distilled; diffusers' script defaults to 3.5
    weighting_scheme: str = "none"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    max_grad_norm: float = 1.0
    weight_decay: float = 1e-4
    checkpoint_every: int = 250
    resume: Path | None = None
    validation_prompt: str | None = None
    validate_every: int = 0  # 0: only at the end, when a validation prompt is given
    validation_steps: int = 28
    device: str = "cpu"
    quantize: str = "none"  # "nf4" on CUDA: QLoRA
    gradient_checkpointing: bool = False
    eight_bit_adam: bool = False
    cache_dir: Path | None = None  # None: <out>/cache
    progress: bool = True

    def __post_init__(self) -> None:
        for flag, value in (
            ("--rank", self.rank),
            ("--steps", self.steps),
            ("--batch-size", self.batch_size),
            ("--gradient-accumulation", self.gradient_accumulation),
            ("--checkpoint-every", self.checkpoint_every),
            ("--validation-steps", self.validation_steps),
        ):
            if value < 1:
                raise InputError(f"{flag} must be at least 1, not {value}")
        if self.validate_every < 0:
            raise InputError(f"--validate-every must be 0 (at the end only) or more, not {self.validate_every}")
        for flag, number, low in (
            ("--learning-rate", self.learning_rate, 0.0),
            ("--max-grad-norm", self.max_grad_norm, 0.0),
            ("--logit-std", self.logit_std, 0.0),
        ):
            if not (math.isfinite(number) and number > low):
                raise InputError(f"{flag} must be a positive finite number, not {number}")
        for flag, number in (
            ("--guidance", self.guidance),
            ("--logit-mean", self.logit_mean),
            ("--mode-scale", self.mode_scale),
            ("--weight-decay", self.weight_decay),
        ):
            if not math.isfinite(number):
                raise InputError(f"{flag} must be a finite number, not {number}")
        if self.alpha is not None and not (math.isfinite(self.alpha) and self.alpha > 0):
            raise InputError(f"--alpha must be a positive finite number, not {self.alpha}")
        if not 16 <= self.resolution <= MAX_RESOLUTION or self.resolution % 16:
            raise InputError(
                f"--resolution must be a multiple of 16 from 16 to {MAX_RESOLUTION}, not {self.resolution}"
            )
        if self.weighting_scheme not in WEIGHTING_SCHEMES:
            raise InputError(f"--weighting-scheme must be one of {', '.join(WEIGHTING_SCHEMES)}")
        if not 0 <= self.seed < 2**63:
            raise InputError(f"--seed must be between 0 and 2**63 - 1, not {self.seed}")
        if self.quantize == "nf4" and not self.device.startswith("cuda"):
            raise InputError("--quantize nf4 needs a CUDA GPU (bitsandbytes refuses to run without one)")
        if self.eight_bit_adam and not self.device.startswith("cuda"):
            raise InputError("--8bit-adam needs a CUDA GPU; on the CPU training uses torch's AdamW")
        if not self.target_modules:
            raise InputError("--target-modules names no modules")

    @property
    def lora_alpha(self) -> float:
        return float(self.rank) if self.alpha is None else self.alpha

    @property
    def caches(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else self.out / "cache"


def parse_target_modules(text: str) -> tuple[str, ...]:
    """A preset name (`attention`, `attention-and-text`, `all-blocks`) or a comma list of module names."""
    if text in TARGET_PRESETS:
        return TARGET_PRESETS[text]
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise InputError(f"--target-modules: give a preset ({', '.join(TARGET_PRESETS)}) or a comma list")
    return names


def expand_targets(targets: tuple[str, ...], num_single_layers: int) -> list[str]:
    """peft's `target_modules`: `single:NAME` becomes that module of every single block."""
    expanded: list[str] = []
    for target in targets:
        if target.startswith("single:"):
            name = target.removeprefix("single:")
            expanded += [f"single_transformer_blocks.{index}.{name}" for index in range(num_single_layers)]
        else:
            expanded.append(target)
    return expanded
