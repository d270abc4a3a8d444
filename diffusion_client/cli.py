"""`flux2-generate`: FLUX.2 images on one GPU, with prompt embeddings from a flux2-encoder server."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from diffusion_client.errors import ClientError, GenerationInputError
from diffusion_client.generator import ImageGenerator, validate_jobs
from diffusion_client.jobs import GenerationJob, jobs_from_file
from diffusion_client.pipeline import (
    PipelineConfig,
    joint_attention_dim,
    load_pipeline,
    read_component_config,
    size_multiple,
)
from diffusion_client.remote_encoder import RemoteTextEncoder
from shared.defaults import DEFAULT_PORT
from shared.quiet import quiet_model_libraries


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flux2-generate",
        description="Generate FLUX.2 images with prompt embeddings from a remote flux2-encoder server.",
    )
    parser.add_argument("prompt", nargs="?", help="what to draw (or use --prompts FILE)")
    parser.add_argument("--encoder", default=f"localhost:{DEFAULT_PORT}", help="HOST:PORT of flux2-encoder")
    parser.add_argument("--model", required=True, type=Path, help="local FLUX.2 snapshot (transformer/, vae/)")
    parser.add_argument(
        "--image",
        action="append",
        type=Path,
        default=[],
        dest="images",
        help="reference image for editing; repeat for several",
    )
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("image.png"),
        help="output PNG; with --prompts, image.png becomes image-000.png, image-001.png, ...",
    )
    parser.add_argument(
        "--quantize",
        choices=("auto", "nf4", "none"),
        default="auto",
        help="transformer weights: nf4 (4-bit, CUDA only) or none; auto = nf4 on CUDA",
    )
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    parser.add_argument("--prompts", type=Path, help="one prompt per line, or JSONL with per-line settings")
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline for each encoder call, seconds")
    parser.add_argument(
        "--token",
        default=os.environ.get("FLUX2_ENCODER_TOKEN"),
        help="bearer token for an authenticating proxy (default: $FLUX2_ENCODER_TOKEN)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _jobs(args: argparse.Namespace) -> list[GenerationJob]:
    if (args.prompt is None) == (args.prompts is None):
        raise GenerationInputError("give either a PROMPT or --prompts FILE, not both or neither")
    defaults = GenerationJob(
        prompt=args.prompt or "",
        out=args.out,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        height=args.height,
        width=args.width,
        images=tuple(args.images),
    )
    return jobs_from_file(args.prompts, defaults) if args.prompts else [defaults]


def _pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    quantize = args.quantize
    if quantize == "auto":
        quantize = "nf4" if device.startswith("cuda") else "none"
    return PipelineConfig(model_path=args.model, device=device, quantize=quantize)


def run(args: argparse.Namespace) -> int:
    jobs = _jobs(args)
    config = _pipeline_config(args)
    started = time.perf_counter()
    with RemoteTextEncoder(args.encoder, timeout=args.timeout, token=args.token) as encoder:
        # Fail fast on bad input, a wrong address or a wrong model, before loading gigabytes of weights.
        validate_jobs(jobs, size_multiple(read_component_config(config.model_path, "vae")))
        encoder.check_fits(joint_attention_dim(read_component_config(config.model_path, "transformer")))
        pipeline = load_pipeline(config)
        generator = ImageGenerator(
            pipeline,
            encoder,
            model_name=args.model.resolve().name,
            device=config.device,
            dtype=config.compute_dtype,
            progress=not args.quiet,
        )
        for result in generator.run(jobs):
            print(f"wrote {result.path}", flush=True)
    print(f"{len(jobs)} image(s) in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_model_libraries()
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ClientError as error:
        print(f"flux2-generate: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("flux2-generate: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug or an unforeseen failure still gets one line, not a traceback
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        print(f"flux2-generate: error: unexpected {type(error).__name__}: {detail}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
