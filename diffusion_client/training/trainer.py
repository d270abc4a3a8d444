"""The training loop: LoRA adapters on the FLUX.2 DiT, fed by cached caption embeddings and latents.

The DiT loads through the client's own `load_transformer` (NF4 on CUDA for QLoRA, else the snapshot's
weights in the compute dtype); peft adds the adapters (`init_lora_weights="gaussian"`, as diffusers' scripts);
AdamW (bitsandbytes' 8-bit AdamW with `--8bit-adam`) steps on the adapters only, with gradient clipping and
accumulation; on CUDA the forward runs under bf16 autocast with float32 adapter weights. Each step draws its
examples, noise and timesteps from generators seeded by (seed, step), so a run resumed from a checkpoint ends
with the very weights an uninterrupted one does (on the CPU, where kernels are deterministic).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diffusion_client.encoder_client.client import RemoteTextEncoder
from diffusion_client.errors import ClientError, InputError
from diffusion_client.generation.pipeline import (
    PipelineConfig,
    joint_attention_dim,
    load_transformer,
    model_kind,
    read_component_config,
)
from diffusion_client.training.captions import CaptionStats, caption_embeddings
from diffusion_client.training.checkpoints import (
    clean_staging,
    load_checkpoint,
    read_state,
    resolve_checkpoint,
    save_checkpoint,
    save_lora,
)
from diffusion_client.training.config import TrainConfig, expand_targets
from diffusion_client.training.data import Example, dataset_digest
from diffusion_client.training.latents import image_latents
from diffusion_client.training.objective import Batch, Objective
from diffusion_client.training.validation import Validator
from shared.fingerprint import weights_fingerprint

LOSS_SMOOTHING = 0.9


class TrainingDivergedError(ClientError):
    """The loss is no longer a finite number; nothing of this step was applied."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; a checkpoint was written at `step`."""

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; resume with --resume {checkpoint}")
        self.signum = signum


@dataclass
class TrainResult:
    lora: Path
    steps: int
    captions: CaptionStats
    latents_encoded: int
    seconds_per_step: float
    losses: list[float] = field(default_factory=list)


@dataclass
class _Stop:
    signum: int | None = None

    @classmethod
    def installed(cls) -> tuple[_Stop, Callable[[], None]]:
        """Catch SIGINT and SIGTERM until the returned restore() is called."""
        stop = cls()
        if threading.current_thread() is not threading.main_thread():  # only the main thread may take signals
            return stop, lambda: None
        previous = {
            sig: signal.signal(sig, lambda signum, _frame: setattr(stop, "signum", signum))
            for sig in (signal.SIGINT, signal.SIGTERM)
        }

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return stop, restore


def _step_generator(seed: int, step: int, micro: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 1_009 + micro) % 2**63)


def _sample_order(examples: int, seed: int, start: int, count: int) -> list[int]:
    """Example indices for global samples start..start+count: a fresh permutation each epoch."""
    permutations: dict[int, torch.Tensor] = {}  # one per epoch the samples fall in
    order = []
    for sample in range(start, start + count):
        epoch, position = divmod(sample, examples)
        if epoch not in permutations:
            permutations[epoch] = torch.randperm(examples, generator=torch.Generator().manual_seed(seed + epoch))
        order.append(int(permutations[epoch][position]))
    return order


def resume_point(config: TrainConfig, note: Callable[[str], None]) -> tuple[Path, int] | None:
    """The checkpoint `--resume` names and its step, if it was trained with this rank and alpha (else one line);
    a changed seed is noted and taken for the remaining steps."""
    if config.resume is None:
        return None
    checkpoint = resolve_checkpoint(config.resume)
    state = read_state(checkpoint)
    given = {"--rank": config.rank, "--alpha": config.lora_alpha}
    for flag, trained in (("--rank", state.get("rank")), ("--alpha", state.get("alpha"))):
        if trained is not None and trained != given[flag]:
            raise InputError(
                f"--resume {checkpoint} was trained with {flag} {_shown(trained)}, not {flag} {_shown(given[flag])}; "
                f"give {flag} {_shown(trained)} to continue it, or another --out to start over"
            )
    seed, step = state.get("seed"), state["step"]
    if seed is not None and seed != config.seed and step < config.steps:
        note(
            f"--resume {checkpoint} was trained with --seed {_shown(seed)}; steps {step + 1} to {config.steps} draw "
            f"their examples and noise from --seed {config.seed}, so the LoRA matches no single uninterrupted run"
        )
    return checkpoint, int(state["step"])


def _shown(value: object) -> str:
    """A number from state.json or a flag as the flag is written: 16, 8.5 (and anything else as what it is)."""
    if isinstance(value, int):
        return str(value)
    return f"{value:g}" if isinstance(value, float) else repr(value)


def train(
    config: TrainConfig,
    examples: list[Example],
    encoder: RemoteTextEncoder,
    progress: Callable[[Iterator[int], int, int], Iterator[int]] = lambda steps, start, total: steps,
    on_step: Callable[[int, float], None] = lambda step, loss: None,
    note: Callable[[str], None] = lambda text: None,
) -> TrainResult:
    """Train to `config.steps` (from a checkpoint with `config.resume`) and write the LoRA into `config.out`.

    `note` is told what the user should know that is not a failure (a changed seed, staging folders removed)."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    resume = resume_point(config, note)  # before anything is fetched or loaded
    device = config.device
    compute_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    # The served model that feeds this DiT (FLUX.2-dev's Mistral3, or klein's Qwen3), before any caption is encoded.
    transformer_config = read_component_config(config.model, "transformer")
    encoder.select_model(model_kind(config.model).pipeline, joint_attention_dim(transformer_config))
    config.out.mkdir(parents=True, exist_ok=True)
    if removed := clean_staging(config.out):
        note(f"removed {removed} unfinished checkpoint or LoRA write(s) a stopped run left in {config.out}")
    embeds, caption_stats = caption_embeddings(encoder, [example.caption for example in examples], config.caches)
    paths = [path for example in examples for path in (example.image, *example.references)]
    latents, encoded = image_latents(paths, config.model, config.resolution, config.caches, device, compute_dtype)

    transformer = load_transformer(PipelineConfig(config.model, device, config.quantize, compute_dtype))  # type: ignore[arg-type]
    transformer.requires_grad_(False)
    if config.quantize == "nf4":
        from peft import prepare_model_for_kbit_training

        transformer = prepare_model_for_kbit_training(transformer, use_gradient_checkpointing=False)
    if config.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    targets = expand_targets(config.target_modules, transformer.config.num_single_layers)
    lora_config = LoraConfig(
        r=config.rank,
        lora_alpha=config.lora_alpha,  # type: ignore[arg-type]  # peft takes any number
        init_lora_weights="gaussian",
        target_modules=targets,
    )
    torch.manual_seed(config.seed)  # peft's gaussian initialisation of lora_A
    transformer.add_adapter(lora_config)
    parameters = [parameter for parameter in transformer.parameters() if parameter.requires_grad]
    for parameter in parameters:
        parameter.data = parameter.data.float()  # adapters train in float32 whatever the DiT computes in
    optimizer = _optimizer(config, parameters)
    start = 0
    if resume is not None:
        checkpoint, start = resume
        set_peft_model_state_dict(transformer, load_checkpoint(checkpoint, optimizer))
    objective = Objective.from_scheduler(
        config.model / "scheduler",
        guidance=config.guidance,
        weighting_scheme=config.weighting_scheme,
        logit_mean=config.logit_mean,
        logit_std=config.logit_std,
        mode_scale=config.mode_scale,
    )
    validator = Validator(config, encoder) if config.validation_prompt else None
    transformer.train()
    state = {"seed": config.seed, "rank": config.rank, "alpha": config.lora_alpha, "steps": config.steps}
    stop, restore = _Stop.installed()
    losses: list[float] = []
    started = time.perf_counter()
    try:
        for step in progress(iter(range(start, config.steps)), start, config.steps):
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for micro in range(config.gradient_accumulation):
                first = (step * config.gradient_accumulation + micro) * config.batch_size
                picked = [examples[i] for i in _sample_order(len(examples), config.seed, first, config.batch_size)]
                batch = _batch(picked, embeds, latents, device, compute_dtype)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
                    loss = objective.loss(transformer, batch, _step_generator(config.seed, step, micro))
                (loss / config.gradient_accumulation).backward()
                total += float(loss.detach()) / config.gradient_accumulation
            if not math.isfinite(total):  # stepping on it would turn every adapter weight into NaN
                raise TrainingDivergedError(
                    f"the loss became {total} at step {step + 1}; lower --learning-rate (now "
                    f"{config.learning_rate:g}), or resume from an earlier checkpoint"
                )
            torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
            optimizer.step()
            losses.append(total)
            on_step(step + 1, total)
            done = step + 1
            if stop.signum is not None:
                path = save_checkpoint(config.out, done, get_peft_model_state_dict(transformer), optimizer, state)
                raise Interrupted(stop.signum, done, path)
            if done % config.checkpoint_every == 0 and done < config.steps:
                save_checkpoint(config.out, done, get_peft_model_state_dict(transformer), optimizer, state)
            if validator is not None and config.validate_every and done % config.validate_every == 0:
                validator(transformer, done)
    finally:
        restore()
    seconds = (time.perf_counter() - started) / max(config.steps - start, 1)
    adapter = get_peft_model_state_dict(transformer)
    made = {
        "base_model": config.model.resolve().name,
        "transformer_fingerprint": weights_fingerprint(
            config.model / "transformer", [(config.model / "transformer" / "config.json").read_bytes()]
        ),
        "rank": str(config.rank),
        "alpha": f"{config.lora_alpha:g}",
        "steps": str(config.steps),
        "dataset_sha256": dataset_digest(examples),
        "encoder_fingerprint": encoder.info().fingerprint,
    }
    lora = save_lora(config.out, adapter, lora_config.to_dict(), made)
    if validator is not None and not (config.validate_every and config.steps % config.validate_every == 0):
        validator(transformer, config.steps)
    return TrainResult(lora, config.steps, caption_stats, encoded, seconds, losses)


def _optimizer(config: TrainConfig, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    settings: dict[str, Any] = {
        "lr": config.learning_rate,
        "betas": (0.9, 0.999),
        "weight_decay": config.weight_decay,
        "eps": 1e-8,
    }
    if config.eight_bit_adam:
        import bitsandbytes as bnb

        optimizer: torch.optim.Optimizer = bnb.optim.AdamW8bit(parameters, **settings)
        return optimizer
    return torch.optim.AdamW(parameters, **settings)


def _batch(
    picked: list[Example],
    embeds: dict[str, torch.Tensor],
    latents: dict[Path, torch.Tensor],
    device: str,
    dtype: torch.dtype,
) -> Batch:
    references = tuple(
        torch.stack([latents[example.references[index]] for example in picked]).to(device, dtype)
        for index in range(len(picked[0].references))
    )
    return Batch(
        latents=torch.stack([latents[example.image] for example in picked]).to(device, dtype),
        prompt_embeds=torch.stack([embeds[example.caption] for example in picked]).to(device, dtype),
        references=references,
    )


def smoothed(losses: list[float]) -> float:
    """An exponential moving average of the losses, as the progress bar shows it."""
    value = math.nan
    for loss in losses:
        value = loss if math.isnan(value) else LOSS_SMOOTHING * value + (1 - LOSS_SMOOTHING) * loss
    return value
