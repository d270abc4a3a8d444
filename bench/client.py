"""Client benchmark: denoising-step cost, peak memory and per-image wall time of the split pipeline.

Through the client library (`RemoteTextEncoder` to a real server, `ImageGenerator` over `Flux2Pipeline` without
its text encoder): seconds per step (between the DiT's call ends, one a step), the bare DiT forward on the last
step's inputs, peak memory of one image with VAE decode, and seconds per image for a batch, prefetching, against
diffusers' monolithic pipeline.

    python -m bench.client --tiny        # tiny random snapshot on CPU, under a minute
    python -m bench.client --full-size   # random FLUX.2-dev NF4 DiT (80 GB GPU to build), or --model SNAPSHOT
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import itertools
import logging
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench import harness
from bench.random_models import encoder_server, random_pipeline
from diffusion_client.encoder_client.client import RemoteTextEncoder
from diffusion_client.errors import ClientError
from diffusion_client.generation.generator import FailedJob, ImageGenerator
from diffusion_client.generation.jobs import GenerationJob
from diffusion_client.generation.pipeline import PipelineConfig, Quantize, load_pipeline

log = logging.getLogger("bench.client")

GUIDANCE = 4.0
REFERENCE_BARE_STEP_S = 0.592  # bare NF4 FLUX.2-dev step at 1024x1024 on one H100, the targets' reference
TARGETS: dict[str, Any] = {
    "applies_to": "--full-size, 1024x1024",
    "seconds_per_step_max": round(1.05 * REFERENCE_BARE_STEP_S, 4),
    "reference_bare_step_s": REFERENCE_BARE_STEP_S,
    "step_over_bare_max": 1.05,
    "peak_gpu_memory_gib_max": 20.0,
    "monolithic_over_remote_min": 1.3,
}
DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": {"device": "cpu", "height": 128, "width": 128, "steps": 8, "bare_repeats": 10},
    "full-size": {"device": "cuda", "height": 1024, "width": 1024, "steps": 28, "bare_repeats": 3},
}


def measure_client(pipeline: Any, encoder: RemoteTextEncoder, args: argparse.Namespace, scratch: Path) -> dict:
    """Steps, bare forward, peak memory and batch wall time through `ImageGenerator` with remote embeddings."""
    device, step_ends, last_step = args.device, [], {}
    generator = ImageGenerator(pipeline, encoder, model_name=args.model_name, progress=False)
    settings = {"steps": args.steps, "guidance": GUIDANCE, "height": args.height, "width": args.width}
    prompts = [harness.make_prompt(random.Random(i)) for i in range(args.batch_prompts)]
    jobs = [GenerationJob(p, scratch / f"remote-{i:03d}.png", seed=i, **settings) for i, p in enumerate(prompts)]
    prepared = generator.prepare(jobs)
    prompt_embeds = generator.fetch_embeds(jobs[0])  # [1, 512, D]

    def on_step(_module: Any, _args: Any, kwargs: dict[str, Any], _output: Any) -> None:  # one DiT call a step
        harness.synchronize(device)
        step_ends.append(time.perf_counter())
        last_step.update(kwargs)

    with torch.inference_mode():
        log.info("warm-up image (2 steps), then one at %dx%d, %d steps, timed", args.width, args.height, args.steps)
        generator.generate(dataclasses.replace(prepared[0], job=dataclasses.replace(jobs[0], steps=2)), prompt_embeds)
        gc.collect()
        harness.reset_peak_memory(device)
        hook = pipeline.transformer.register_forward_hook(on_step, with_kwargs=True)
        started = time.perf_counter()
        _, image_s = harness.timed(lambda: generator.generate(prepared[0], prompt_embeds), device)
        hook.remove()
        memory = harness.peak_memory(device)
        # Step 1 also holds the call's setup, so steps are timed from the first step's end.
        steps = [later - earlier for earlier, later in itertools.pairwise(step_ends)]
        log.info("bare transformer forward on the last step's inputs")
        bare = harness.median_seconds(lambda: pipeline.transformer(**last_step), device, 1, args.bare_repeats)
        log.info("batch of %d prompts through ImageGenerator.run (prefetching embeddings)", len(jobs))
        outcomes, batch_s = harness.timed(lambda: list(generator.run(prepared)), device)
    if failed := [outcome for outcome in outcomes if isinstance(outcome, FailedJob)]:
        raise harness.BenchError(f"{len(failed)} of {len(jobs)} images failed, first: {failed[0]}")
    return {
        "seconds_per_step": statistics.median(steps),
        "step_seconds": [round(value, 6) for value in steps],
        "bare_transformer_step_s": bare,
        "step_over_bare": statistics.median(steps) / bare,
        "image_s": image_s,
        "decode_to_pil_s": started + image_s - step_ends[-1],
        **memory,
        "remote": {
            "seconds_per_image": batch_s / len(jobs),
            "total_s": batch_s,
            "images": len(jobs),
            "how": "ImageGenerator.run: embeddings over gRPC, the next prompt's fetched while the current denoises",
        },
    }


def measure_monolithic(args: argparse.Namespace, snapshot: Path | None, scratch: Path) -> dict[str, Any]:
    """diffusers' own way, one prompt at a time: `pipe(prompt=...)` with the text encoder in process; at full size
    as a 24 GB box must without the split, with NF4 text encoder and DiT and `enable_model_cpu_offload`."""
    if snapshot is None:
        reason = "the 24B text encoder in NF4 comes only from transformers' loader reading a checkpoint; use --model"
        return {"status": "not measured", "reason": reason}
    from diffusers import Flux2Pipeline
    from diffusers.quantizers import PipelineQuantizationConfig

    started = time.perf_counter()
    if args.mode == "tiny":
        pipe = Flux2Pipeline.from_pretrained(snapshot, dtype=args.dtype).to(args.device)
        how = "Flux2Pipeline.from_pretrained with its text encoder, in process, no offload"
    else:
        nf4 = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": torch.bfloat16}
        quantization = PipelineQuantizationConfig(
            quant_backend="bitsandbytes_4bit", quant_kwargs=nf4, components_to_quantize=["transformer", "text_encoder"]
        )
        pipe = Flux2Pipeline.from_pretrained(snapshot, quantization_config=quantization, dtype=torch.bfloat16)
        pipe.enable_model_cpu_offload(device=args.device)
        how = "Flux2Pipeline.from_pretrained, NF4 text encoder and DiT, enable_model_cpu_offload"
    load_s = time.perf_counter() - started
    pipe.set_progress_bar_config(disable=True)
    prompts = [harness.make_prompt(random.Random(index)) for index in range(args.batch_prompts)]  # as the remote's
    settings = {"height": args.height, "width": args.width, "guidance_scale": GUIDANCE}

    def make(index: int, steps: int) -> Any:
        seed = torch.Generator("cpu").manual_seed(index)
        image = pipe(prompt=prompts[index], num_inference_steps=steps, generator=seed, **settings).images[0]
        image.save(scratch / f"monolithic-{index:03d}.png")
        return image

    log.info("monolithic: warm-up image (2 steps), then %d prompts one at a time", len(prompts))
    make(0, 2)
    harness.reset_peak_memory(args.device)
    _, total = harness.timed(lambda: [make(index, args.steps) for index in range(len(prompts))], args.device)
    return {
        "seconds_per_image": total / len(prompts),
        "total_s": total,
        "images": len(prompts),
        "peak_memory_gib": harness.peak_memory(args.device)["peak_memory_gib"],
        "load_s": load_s,
        "how": how,
    }


def benchmark(args: argparse.Namespace, scratch: Path, snapshot: Path | None) -> dict[str, Any]:
    """The whole run; images go to `scratch`. The encoder server starts once the client's model is in place."""
    started = time.perf_counter()
    args.dtype = PipelineConfig(scratch, device=args.device).compute_dtype
    quantize: Quantize = "nf4" if args.mode == "full-size" else "none"
    args.model_name = snapshot.name if snapshot else "random-flux2-dev"
    if snapshot is None:
        pipeline = random_pipeline(args.device)
    else:
        pipeline = load_pipeline(PipelineConfig(model_path=snapshot, device=args.device, quantize=quantize))
    harness.release_memory(args.device)  # the bf16 build's memory goes back before the encoder server takes its own
    report: dict[str, Any] = {
        "benchmark": "client",
        "mode": args.mode,
        "device": harness.device_name(args.device),
        "settings": {
            **{key: getattr(args, key) for key in ("height", "width", "steps", "batch_prompts")},
            "guidance": GUIDANCE,
            "dtype": str(args.dtype).removeprefix("torch."),
        },
        "model": {"snapshot": str(snapshot) if snapshot else "random FLUX.2-dev (32.2B) and VAE", "quantize": quantize},
        "client_load_s": time.perf_counter() - started,
    }
    if args.device.startswith("cuda"):
        report["resident_weights_gib"] = round(torch.cuda.memory_allocated(args.device) / harness.GIB, 3)
    external = contextlib.nullcontext((args.encoder, "external"))
    server = external if args.encoder else encoder_server(snapshot, args.device)
    with server as (target, where), RemoteTextEncoder(target, timeout=600) as encoder:
        report["encoder"] = {"target": target, "where": where, "model_name": encoder.info().model_name}
        report.update(measure_client(pipeline, encoder, args, scratch))
    del pipeline
    harness.release_memory(args.device)
    report["monolithic"] = measure_monolithic(args, snapshot, scratch)
    measured = {"peak_gpu_memory_gib": report["peak_memory_gib"], **report}
    if monolithic := report["monolithic"].get("seconds_per_image"):
        report["remote_over_monolithic"] = report["remote"]["seconds_per_image"] / monolithic
        measured["monolithic_over_remote"] = 1 / report["remote_over_monolithic"]
    report["targets"] = TARGETS
    report["meets_targets"] = harness.meets_targets(TARGETS, measured) if args.mode == "full-size" else None
    report["wall_s"] = time.perf_counter() - started
    return report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = harness.mode_parser("bench.client", __doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="denoising steps (tiny 8, full-size 28); at least 2")
    parser.add_argument("--height", type=int, help="image height (tiny 128, full-size 1024)")
    parser.add_argument("--width", type=int, help="image width (tiny 128, full-size 1024)")
    parser.add_argument("--batch-prompts", type=int, default=4, help="prompts in the batch comparison (default 4)")
    parser.add_argument("--encoder", help="use this HOST:PORT server instead of starting one")
    args = harness.parse_mode_args(parser, argv, DEFAULTS)
    if args.steps < 2:
        parser.error("--steps must be at least 2: a step's time is measured between two step ends")
    if args.batch_prompts < 1:
        parser.error("--batch-prompts must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return harness.run_main(parse_args(argv), benchmark, errors=(ClientError,))


if __name__ == "__main__":
    sys.exit(main())
