"""Client benchmark: denoising-step cost, peak memory and per-image wall time of the split pipeline.

Through the client library (`RemoteTextEncoder` to a real server, `ImageGenerator` over `Flux2Pipeline` without its
text encoder): seconds per step between step ends, the bare transformer forward for the same shapes, peak memory of
one image with VAE decode, and seconds per image for a batch, prefetching, against diffusers' monolithic pipeline.

    python -m bench.client --tiny        # tiny random snapshot on CPU, in-process server, under a minute
    python -m bench.client --full-size   # random FLUX.2-dev NF4 DiT (80 GB GPU to build), or --model SNAPSHOT

Full size starts the encoder server in a subprocess on the same GPU once the client's model is in place, so the
client's memory numbers are its own.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import logging
import random
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from bench import harness
from bench.encoder import make_prompt
from diffusion_client.errors import ClientError
from diffusion_client.generator import FailedJob, ImageGenerator
from diffusion_client.jobs import GenerationJob
from diffusion_client.pipeline import PipelineConfig, Quantize, load_pipeline
from diffusion_client.remote_encoder import RemoteTextEncoder
from shared.quiet import quiet_library_loggers

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


class StepTimer:
    """Stands in for a pipeline and records when each denoising step ends (`callback_on_step_end`)."""

    def __init__(self, pipeline: Any, device: str) -> None:
        self.pipeline = pipeline
        self.device = device
        self.step_ends: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipeline, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.step_ends = []
        return self.pipeline(*args, callback_on_step_end=self.on_step_end, **kwargs)

    def on_step_end(self, _pipeline: Any, _step: int, _timestep: Any, _tensors: dict[str, Any]) -> dict[str, Any]:
        harness.synchronize(self.device)
        self.step_ends.append(time.perf_counter())
        return {}


def bare_transformer_inputs(pipeline: Any, prompt_embeds: torch.Tensor, height: int, width: int) -> dict[str, Any]:
    """The keyword arguments `Flux2Pipeline.__call__` gives the transformer for one text-to-image step."""
    from diffusers import Flux2Pipeline

    batch, device, dtype = prompt_embeds.shape[0], prompt_embeds.device, prompt_embeds.dtype
    scale = pipeline.vae_scale_factor * 2  # VAE downscale, then 2x2 patches
    channels = pipeline.transformer.config.in_channels
    latents = torch.randn(batch, channels, height // scale, width // scale, device=device, dtype=dtype)
    return {
        "hidden_states": Flux2Pipeline._pack_latents(latents),
        "timestep": torch.full((batch,), 0.5, device=device, dtype=dtype),
        "guidance": torch.full((batch,), GUIDANCE, device=device, dtype=torch.float32),
        "encoder_hidden_states": prompt_embeds,
        "txt_ids": Flux2Pipeline._prepare_text_ids(prompt_embeds).to(device),
        "img_ids": Flux2Pipeline._prepare_latent_ids(latents).to(device),
        "return_dict": False,
    }


def prompts_for(count: int) -> list[str]:
    return [make_prompt(random.Random(index)) for index in range(count)]


def measure_client(
    pipeline: Any, encoder: RemoteTextEncoder, model_name: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Steps, bare forward, peak memory and batch wall time through `ImageGenerator` with remote embeddings."""
    device, timer = args.device, StepTimer(pipeline, args.device)
    generator = ImageGenerator(timer, encoder, model_name=model_name, progress=False)
    job = GenerationJob("", args.scratch, steps=args.steps, guidance=GUIDANCE, height=args.height, width=args.width)
    jobs = [
        dataclasses.replace(job, prompt=prompt, out=args.scratch / f"remote-{i:03d}.png", seed=i)
        for i, prompt in enumerate(prompts_for(args.batch_prompts))
    ]
    prepared = generator.prepare(jobs)
    prompt_embeds = generator.fetch_embeds(jobs[0])  # [1, 512, D]
    with torch.inference_mode():
        log.info("warm-up image (2 steps)")
        generator.generate(dataclasses.replace(prepared[0], job=dataclasses.replace(jobs[0], steps=2)), prompt_embeds)
        log.info("one image at %dx%d, %d steps, timing each step", args.width, args.height, args.steps)
        gc.collect()
        harness.reset_peak_memory(device)
        started = time.perf_counter()
        generator.generate(prepared[0], prompt_embeds)
        harness.synchronize(device)
        finished = time.perf_counter()
        image_s, decode_s = finished - started, finished - timer.step_ends[-1]
        memory = harness.peak_memory(device)
        # Step 1 also holds the call's setup, so steps are timed from the first step's end.
        steps = [later - earlier for earlier, later in zip(timer.step_ends, timer.step_ends[1:], strict=False)]
        log.info("bare transformer forward for the same shapes")
        inputs = bare_transformer_inputs(pipeline, prompt_embeds, args.height, args.width)
        bare = harness.median_seconds(lambda: pipeline.transformer(**inputs), device, 1, args.bare_repeats)
        log.info("batch of %d prompts through ImageGenerator.run (prefetching embeddings)", len(jobs))
        started = time.perf_counter()
        failed = [outcome for outcome in generator.run(prepared) if isinstance(outcome, FailedJob)]
        harness.synchronize(device)
        batch_s = time.perf_counter() - started
    if failed:
        raise harness.BenchError(f"{len(failed)} of {len(jobs)} images failed, first: {failed[0]}")
    return {
        "seconds_per_step": statistics.median(steps),
        "step_seconds": [round(value, 6) for value in steps],
        "bare_transformer_step_s": bare,
        "step_over_bare": statistics.median(steps) / bare,
        "image_s": image_s,
        "decode_to_pil_s": decode_s,
        **memory,
        "remote": {
            "seconds_per_image": batch_s / len(jobs),
            "total_s": batch_s,
            "images": len(jobs),
            "how": "ImageGenerator.run: embeddings over gRPC, the next prompt's fetched while the current denoises",
        },
    }


@contextlib.contextmanager
def encoder_server(args: argparse.Namespace, snapshot: Path | None) -> Iterator[tuple[str, str]]:
    """The target of an encoder server for this run, and where it runs."""
    if args.encoder:
        yield args.encoder, "external"
    elif args.mode == "tiny":
        from encoder_server.background import serve_in_thread
        from encoder_server.config import ModelConfig, ServerConfig

        config = ServerConfig(model=ModelConfig(model_path=snapshot or Path(), device="cpu"), host="127.0.0.1", port=0)
        with serve_in_thread(config) as server:
            yield server.target, "in-process server thread (CPU)"
    else:
        from bench.random_encoder import encoder_process

        with encoder_process(snapshot, args.device) as target:
            yield target, "subprocess on the same GPU (not in this process's memory numbers)"


def measure_monolithic(args: argparse.Namespace, snapshot: Path | None) -> dict[str, Any]:
    """diffusers' own way, one prompt at a time: `pipe(prompt=...)` with the text encoder in process.

    Full size does what a 24 GB box must without the split: NF4 text encoder and DiT, `enable_model_cpu_offload`.
    """
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
    prompts = prompts_for(args.batch_prompts)

    def make(index: int, steps: int) -> Any:
        seed = torch.Generator("cpu").manual_seed(index)
        settings = {"height": args.height, "width": args.width, "guidance_scale": GUIDANCE}
        return pipe(prompt=prompts[index], num_inference_steps=steps, generator=seed, **settings).images[0]

    log.info("monolithic: warm-up image (2 steps), then %d prompts one at a time", len(prompts))
    make(0, 2)
    harness.reset_peak_memory(args.device)
    started = time.perf_counter()
    for index in range(len(prompts)):
        make(index, args.steps).save(args.scratch / f"monolithic-{index:03d}.png")
    harness.synchronize(args.device)
    total = time.perf_counter() - started
    return {
        "seconds_per_image": total / len(prompts),
        "total_s": total,
        "images": len(prompts),
        "peak_memory_gib": harness.peak_memory(args.device)["peak_memory_gib"],
        "load_s": load_s,
        "how": how,
    }


def benchmark(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """The whole run; images and the tiny snapshot go to `scratch`."""
    args.scratch = scratch
    args.dtype = PipelineConfig(scratch, device=args.device).compute_dtype
    started = time.perf_counter()
    snapshot = args.model
    if snapshot is None and args.mode == "tiny":
        from shared.tiny_snapshot import build_tiny_snapshot

        snapshot = build_tiny_snapshot(scratch / "tiny-flux2")
    quantize: Quantize = "nf4" if args.mode == "full-size" else "none"
    loading = time.perf_counter()
    if snapshot is None:
        from bench.random_models import random_pipeline

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
        "client_load_s": time.perf_counter() - loading,
    }
    if args.device.startswith("cuda"):
        report["resident_weights_gib"] = round(torch.cuda.memory_allocated(args.device) / harness.GIB, 3)
    with encoder_server(args, snapshot) as (target, where), RemoteTextEncoder(target, timeout=600) as encoder:
        report["encoder"] = {"target": target, "where": where, "model_name": encoder.info().model_name}
        report.update(measure_client(pipeline, encoder, snapshot.name if snapshot else "random-flux2-dev", args))
    del pipeline
    harness.release_memory(args.device)
    report["monolithic"] = measure_monolithic(args, snapshot)
    monolithic = report["monolithic"].get("seconds_per_image")
    if monolithic:
        report["remote_over_monolithic"] = report["remote"]["seconds_per_image"] / monolithic
    report["targets"], report["meets_targets"] = TARGETS, None
    if args.mode == "full-size":
        report["meets_targets"] = {
            "seconds_per_step": report["seconds_per_step"] <= TARGETS["seconds_per_step_max"],
            "step_over_bare": report["step_over_bare"] <= TARGETS["step_over_bare_max"],
            "peak_gpu_memory": report["peak_memory_gib"] <= TARGETS["peak_gpu_memory_gib_max"],
        }
        if monolithic:
            speedup = monolithic / report["remote"]["seconds_per_image"]
            report["meets_targets"]["monolithic_over_remote"] = speedup >= TARGETS["monolithic_over_remote_min"]
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
    quiet_library_loggers()
    args = parse_args(argv)
    return harness.run_main(args, lambda scratch: benchmark(args, scratch), errors=(ClientError,))


if __name__ == "__main__":
    sys.exit(main())
