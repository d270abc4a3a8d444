"""`flux2-generate`: FLUX.2 images on one GPU, with prompt embeddings from a flux2-encoder server.

This module imports nothing heavy (torch, diffusers, grpc, PIL) at module level, so `--help` and flag
errors answer at once; the run path imports them after quieting the libraries' loggers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from diffusion_client.commands import (
    add_model_arguments,
    exit_code,
    note,
    one_line,
    pipeline_config,
    report,
    run_command,
)
from diffusion_client.encoder_client.flags import (
    add_encoder_arguments,
    open_encoder,
    token_from_args,
)
from diffusion_client.encoder_client.upsampling import (
    DEFAULT_UPSAMPLE_TEMPERATURE,
    TEMPERATURE_RANGE,
    check_temperature,
)
from diffusion_client.errors import (
    InputError,
)
from diffusion_client.generation.jobs import GenerationJob, jobs_from_file
from diffusion_client.lora.specs import parse_lora_spec
from diffusion_client.provenance.flags import add_marking_arguments, marking_from_args
from shared.allocator import tune_allocator
from shared.printable import OneLineParser

if TYPE_CHECKING:
    pass

PROG = "flux2-generate"


def upsample_temperature(text: str) -> float:
    """`--upsample-temperature`: from 0.01 to 2, the server's range."""
    try:
        return check_temperature(float(text))
    except (ValueError, InputError):
        raise argparse.ArgumentTypeError(f"must be a number {TEMPERATURE_RANGE}, not {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="Generate FLUX.2 images with prompt embeddings from a remote flux2-encoder server.",
    )
    parser.add_argument("prompt", nargs="?", help="what to draw (or use --prompts FILE)")
    add_encoder_arguments(parser)
    add_job_arguments(parser)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("image.png"),
        help="output image, by extension .png, .jpg/.jpeg or .webp; with --prompts, image.png becomes "
        "image-000.png, image-001.png, ...",
    )
    add_model_arguments(parser)
    parser.add_argument("--prompts", type=Path, help="one prompt per line, or JSONL with per-line settings")
    add_upsample_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_marking_arguments(parser)
    return parser


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """The settings every job takes from the command line unless its prompts-file line gives its own."""
    parser.add_argument(
        "--image",
        action="append",
        type=Path,
        default=[],
        dest="images",
        help="reference image for editing; repeat for several",
    )
    parser.add_argument(
        "--lora",
        action="append",
        default=[],
        dest="loras",
        metavar="PATH[:SCALE]",
        help="apply a LoRA (diffusers, kohya or BFL/ai-toolkit safetensors) at SCALE (default 1); repeat for several",
    )
    parser.add_argument(
        "--steps", type=int, help="denoising steps (default: FLUX.2-dev 28, klein distilled 4, klein base 50)"
    )
    parser.add_argument(
        "--guidance",
        type=float,
        help="guidance scale (default: FLUX.2-dev 4.0, klein distilled 1.0, klein base 4.0 with the empty prompt "
        "as the negative)",
    )
    parser.add_argument(
        "--encoder-model",
        metavar="NAME",
        help="which of the encoder server's models to use (default: the one that fits this snapshot)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=1024)


def add_upsample_arguments(parser: argparse.ArgumentParser) -> None:
    """`--upsample` and its temperature: per-job settings too, which a prompts-file line may override."""
    parser.add_argument(
        "--upsample",
        action="store_true",
        help="rewrite each prompt into a detailed one on the encoder server first, seeded with --seed "
        "(needs `flux2-encoder serve --enable-upsampling`)",
    )
    parser.add_argument(
        "--upsample-temperature",
        type=upsample_temperature,
        default=DEFAULT_UPSAMPLE_TEMPERATURE,
        help=f"sampling temperature of --upsample, {TEMPERATURE_RANGE} (default %(default)s)",
    )


def job_defaults(args: argparse.Namespace, prompt: str, out: Path) -> GenerationJob:
    """The job the flags of `add_job_arguments` and `add_upsample_arguments` describe; lines of a prompts file
    start from it."""
    from diffusion_client.generation.pipeline import model_kind

    kind = model_kind(args.model)  # the recommended steps and guidance differ between FLUX.2-dev and klein
    return GenerationJob(
        prompt=prompt,
        out=out,
        seed=args.seed,
        steps=kind.steps if args.steps is None else args.steps,
        guidance=kind.guidance if args.guidance is None else args.guidance,
        height=args.height,
        width=args.width,
        images=tuple(args.images),
        loras=tuple(parse_lora_spec(text) for text in args.loras),
        upsample=args.upsample,
        upsample_temperature=args.upsample_temperature,
    )


def _jobs(args: argparse.Namespace) -> list[GenerationJob]:
    if (args.prompt is None) == (args.prompts is None):
        raise InputError("give either a PROMPT or --prompts FILE, not both or neither")
    defaults = job_defaults(args, prompt=args.prompt or "", out=args.out)
    return jobs_from_file(args.prompts, defaults) if args.prompts else [defaults]


def run(args: argparse.Namespace) -> int:
    jobs = _jobs(args)
    token = token_from_args(args)
    marking = marking_from_args(args)
    from shared.library_logs import quiet_model_libraries

    quiet_model_libraries()  # before diffusers and transformers are first imported below

    from diffusion_client.generation.generator import FailedJob, ImageGenerator
    from diffusion_client.generation.pipeline import load_pipeline, model_kind, read_component_config
    from diffusion_client.generation.preflight import preflight
    from diffusion_client.provenance.marking import Marker

    marker = Marker.start(marking)  # a certificate c2pa refuses fails here, before anything loads
    config = pipeline_config(args)
    started = time.perf_counter()
    with open_encoder(args, token, cache_bytes=args.cache_mib * 2**20) as encoder:
        # Everything a job can fail is checked before loading gigabytes of weights.
        prepared = preflight(
            jobs,
            vae_config=read_component_config(config.model_path, "vae"),
            transformer_config=read_component_config(config.model_path, "transformer"),
            encoder=encoder,
            pipeline=model_kind(config.model_path).pipeline,
        )
        pipeline = load_pipeline(config)
        generator = ImageGenerator(
            pipeline, encoder, model_name=args.model.resolve().name, progress=not args.quiet, marker=marker
        )
        first_failure = written = 0
        noted: set[str] = set()
        try:
            for outcome in generator.run(prepared):
                if isinstance(outcome, FailedJob):
                    report(outcome)
                    first_failure = first_failure or exit_code(outcome.error)
                else:
                    written += 1
                    for text in set(outcome.notes) - noted:
                        note(text)
                        noted.add(text)
                    if outcome.upsampled_prompt is not None:
                        print(f"upsampled: {one_line(outcome.upsampled_prompt)}", flush=True)
                    print(f"wrote {outcome.path}", flush=True)
        except Exception as error:
            if not first_failure:
                raise
            report(error)  # a later failure that stops the run; the exit code stays the first one's
    seconds = time.perf_counter() - started
    if not first_failure:  # a failed run's stderr is its error lines alone
        for text in marker.success_notes():
            note(text)
    print(f"{written} of {len(jobs)} image(s) written in {seconds:.1f} s", flush=True)  # beside the `wrote` lines
    return first_failure


def main(argv: list[str] | None = None) -> int:
    tune_allocator()  # before any channel or thread: 15.7 MB replies then reuse heap memory, not fresh pages
    return run_command(PROG, build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
