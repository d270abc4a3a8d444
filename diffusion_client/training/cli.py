"""`flux2-train-lora`: train a FLUX.2 LoRA with captions encoded by a flux2-encoder server.

flux2-train-lora --data ./my-dog --encoder encoder-box:50051 --model /models/FLUX.2-dev --out ./sks-dog \\
    --rank 16 --steps 1000 --resolution 1024

Everything that can be wrong with the data or the flags (or a `--resume` checkpoint's rank and alpha) is found
before any weights load, and said in one line (exit 2); so is a checkpoint, cache or LoRA that cannot be
written (a full disk). Ctrl-C or SIGTERM writes a checkpoint and exits (130 / 143); `--resume` continues from it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from diffusion_client.commands import add_model_arguments, default_device, note, run_command
from diffusion_client.encoder_client.flags import add_encoder_arguments, open_encoder, token_from_args
from diffusion_client.errors import InputError
from diffusion_client.training.config import TARGET_PRESETS, WEIGHTING_SCHEMES, TrainConfig, parse_target_modules
from shared.printable import OneLineParser, finite_number

PROG = "flux2-train-lora"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="Train a FLUX.2 LoRA; captions are encoded by a flux2-encoder.")
    parser.add_argument("--data", required=True, type=Path, help="images with .txt captions, or metadata.jsonl")
    parser.add_argument("--out", required=True, type=Path, help="folder for the LoRA, checkpoints and caches")
    add_encoder_arguments(parser)
    parser.add_argument("--instance-prompt", help="caption for images without a .txt file (e.g. 'a photo of sks dog')")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=finite_number, default=None, help="LoRA alpha (default: the rank, scale 1)")
    parser.add_argument(
        "--target-modules",
        type=parse_target_modules,
        default=TARGET_PRESETS["attention"],
        help=f"a preset ({', '.join(TARGET_PRESETS)}; default attention, as diffusers' scripts) or a comma list",
    )
    parser.add_argument("--learning-rate", type=finite_number, default=1e-4)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--gradient-accumulation", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=1024, help="square side the images are cropped to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance", type=finite_number, default=1.0, help="guidance embedding during training")
    parser.add_argument("--weighting-scheme", choices=WEIGHTING_SCHEMES, default="none")
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--cache-dir", type=Path, help="caption embeddings and latents (default: OUT/cache)")
    parser.add_argument("--resume", type=Path, help="a checkpoint folder, or an --out folder (its newest)")
    parser.add_argument("--validation-prompt", help="generate this (with the LoRA) at --validate-every and the end")
    parser.add_argument("--validate-every", type=int, default=0)
    parser.add_argument("--validation-steps", type=int, default=28)
    add_model_arguments(parser, cache=None)  # --quantize nf4 trains QLoRA
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--8bit-adam", dest="eight_bit_adam", action="store_true", help="bitsandbytes' AdamW8bit")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    from diffusion_client.generation.pipeline import resolve_quantize

    device = default_device(args.device)
    quantize = resolve_quantize(args.quantize, device)
    return TrainConfig(
        data=args.data,
        model=args.model,
        out=args.out,
        instance_prompt=args.instance_prompt,
        rank=args.rank,
        alpha=args.alpha,
        target_modules=args.target_modules,
        learning_rate=args.learning_rate,
        steps=args.steps,
        batch_size=args.batch_size,
        gradient_accumulation=args.gradient_accumulation,
        resolution=args.resolution,
        seed=args.seed,
        guidance=args.guidance,
        weighting_scheme=args.weighting_scheme,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        cache_dir=args.cache_dir,
        validation_prompt=args.validation_prompt,
        validate_every=args.validate_every,
        validation_steps=args.validation_steps,
        device=device,
        quantize=quantize,
        gradient_checkpointing=args.gradient_checkpointing,
        eight_bit_adam=args.eight_bit_adam,
        progress=not args.quiet,
    )


def run(args: argparse.Namespace) -> int:
    from shared.library_logs import quiet_model_libraries

    token = token_from_args(args)
    config = config_from_args(args)
    quiet_model_libraries()
    from diffusion_client.generation.pipeline import read_component_config
    from diffusion_client.training.data import find_examples
    from diffusion_client.training.trainer import Interrupted, smoothed, train

    examples = find_examples(config.data, config.instance_prompt)  # before any weights load
    read_component_config(config.model, "transformer")
    if len({len(example.references) for example in examples}) > 1 and config.batch_size > 1:
        raise InputError("lines with different numbers of reference images need --batch-size 1")
    losses: list[float] = []
    started = time.perf_counter()

    def progress(steps: Iterator[int], start: int, total: int) -> Iterator[int]:
        from tqdm import tqdm

        bar = tqdm(steps, initial=start, total=total, desc="training", disable=not config.progress, unit="step")
        for step in bar:
            yield step
            bar.set_postfix(loss=f"{smoothed(losses):.4f}")  # tqdm shows the rate: s/step or step/s

    def noted(text: str) -> None:
        note(text, PROG)

    with open_encoder(args, token) as encoder:
        try:
            result = train(config, examples, encoder, progress, lambda _, loss: losses.append(loss), noted)
        except Interrupted as stopped:
            print(f"{PROG}: {stopped}", file=sys.stderr, flush=True)
            return 128 + stopped.signum
    seconds = time.perf_counter() - started
    print(
        f"LoRA written to {result.lora} ({result.steps} steps, rank {config.rank}, {len(examples)} images; "
        f"{result.captions.fetched} captions encoded, {result.captions.from_disk} from disk; {seconds:.1f} s)",
        flush=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
