"""Batch benchmark: images per second of `flux2-batch` on Ray for 1..N workers, one shared encoder, against the
single-process `flux2-generate --prompts` on the same jobs.

Each measurement is a real command in a fresh process (`flux2-batch --ray local`, or `--ray ADDRESS`), so Ray's
start, the workers' model loads and the manifest all count in `wall_s`. `images_per_s` is the steady rate, from
the first image written to the last (file times: (images - 1) / span), which is what a long prompts file sees;
`images_per_s_end_to_end` divides by the whole command. Each run gets its own prompts, so none is served from the
encoder's cache of another's.

    python -m bench.batch --tiny                    # tiny snapshot on CPU, 1 and 2 workers of one thread each
    python -m bench.batch --full-size --model /models/FLUX.2-dev --encoder HOST:PORT [--gpus 8] [--ray ADDRESS]
                                                    # NF4 DiT per GPU, scaling 1, 2, 4, ... N GPUs

At full size, give `--encoder` (the shared service on its own GPU): without it the benchmark starts one on this
machine's first GPU, beside worker 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench import harness
from bench.random_models import REPO_ROOT, encoder_server

log = logging.getLogger("bench.batch")

DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": {"device": "cpu", "jobs": 16, "height": 128, "width": 128, "steps": 4, "workers": "1,2"},
    "full-size": {"device": "cuda", "jobs": 64, "height": 1024, "width": 1024, "steps": 28, "workers": None},
}
TARGETS: dict[str, Any] = {
    "applies_to": "--full-size: N GPUs against one",
    "scaling_efficiency_min": 0.9,  # images/s on N GPUs over N x images/s on one, one shared encoder
    "steady_overhead_vs_cli_max": 1.05,  # one worker's steady seconds per image over flux2-generate's
}


def command_env(threads: int) -> dict[str, str]:
    """Offline, no Ray usage stats; one Ray token for the runs of this benchmark (Ray 2.60 turns token auth on for a
    local cluster and would otherwise write ~/.ray/auth_token); `threads` torch threads for flux2-generate."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_TOKEN": os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(16),
        "OMP_NUM_THREADS": str(threads),
    }


def write_prompts(path: Path, run: str, args: argparse.Namespace) -> Path:
    rng = random.Random(run)
    size = {"height": args.height, "width": args.width, "steps": args.steps}
    lines = [{"prompt": f"{run}: {harness.make_prompt(rng)}", "seed": index, **size} for index in range(args.jobs)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def timed_command(command: list[str], threads: int, timeout_s: float) -> float:
    """Run `command` from the repository root; its wall seconds, or `BenchError` with the end of its stderr."""
    log.info("running %s", " ".join(command[2:6]) + " ...")
    started = time.perf_counter()
    finished = subprocess.run(
        command, cwd=REPO_ROOT, env=command_env(threads), capture_output=True, text=True, timeout=timeout_s
    )
    wall_s = time.perf_counter() - started
    if finished.returncode != 0:
        raise harness.BenchError(f"{command[2]} exited {finished.returncode}: {finished.stderr[-2000:]}")
    return wall_s


def rates(images: list[Path], wall_s: float) -> dict[str, Any]:
    """Steady images/s from the files' modification times, and end to end over the whole command."""
    times = sorted(path.stat().st_mtime_ns / 1e9 for path in images)
    span = times[-1] - times[0]
    return {
        "images": len(images),
        "wall_s": wall_s,
        "images_per_s": (len(images) - 1) / span if span > 0 else None,
        "images_per_s_end_to_end": len(images) / wall_s,
    }


def measure_cli(args: argparse.Namespace, scratch: Path, snapshot: Path, target: str) -> dict[str, Any]:
    """`flux2-generate --prompts` in one process with the workers' thread count."""
    folder = scratch / "cli"
    folder.mkdir()
    prompts = write_prompts(folder / "prompts.jsonl", "cli", args)
    command = [sys.executable, "-m", "diffusion_client.generation.cli", "--prompts", str(prompts), "--quiet"]
    command += ["--encoder", target, "--model", str(snapshot), "--out", str(folder / "image.png")]
    command += ["--device", args.device, *args.marks]
    started = time.time()
    wall_s = timed_command(command, args.threads, args.timeout)
    result = rates(sorted(folder.glob("image-*.png")), wall_s)
    result["first_image_after_s"] = min(path.stat().st_mtime for path in folder.glob("image-*.png")) - started
    return result


def measure_batch(args: argparse.Namespace, scratch: Path, snapshot: Path, target: str, workers: int) -> dict:
    """`flux2-batch` with `workers` workers (one GPU each, or `args.threads` CPUs each)."""
    folder = Path(tempfile.mkdtemp(prefix=f"batch-{workers}-", dir=scratch))
    prompts = write_prompts(folder / "prompts.jsonl", folder.name, args)
    command = [sys.executable, "-m", "diffusion_client.batch.cli", "--prompts", str(prompts), "--quiet"]
    command += ["--encoder", target, "--model", str(snapshot), "--out-dir", str(folder / "out")]
    command += ["--ray", args.ray, "--workers", str(workers), "--cpus-per-worker", str(args.threads)]
    command += ["--device", args.device.split(":")[0], *args.marks]
    started = time.time()
    wall_s = timed_command(command, args.threads, args.timeout)
    images = sorted((folder / "out").glob("image-*.png"))
    if len(images) != args.jobs:
        raise harness.BenchError(f"flux2-batch with {workers} worker(s) wrote {len(images)} of {args.jobs} images")
    result = rates(images, wall_s)
    result["first_image_after_s"] = min(path.stat().st_mtime for path in images) - started
    result["workers"] = workers
    if args.device.startswith("cuda") and result["images_per_s"]:
        result["images_per_s_per_gpu"] = result["images_per_s"] / workers
    return result


def worker_counts(args: argparse.Namespace) -> list[int]:
    """`--workers` as given, else 1, 2, 4, ... up to the GPUs, and the GPUs themselves."""
    if args.workers:
        return [int(count) for count in str(args.workers).split(",")]
    gpus = args.gpus or torch.cuda.device_count()
    counts = [1]
    while counts[-1] * 2 < gpus:
        counts.append(counts[-1] * 2)
    return counts + ([gpus] if gpus > 1 else [])


def benchmark(args: argparse.Namespace, scratch: Path, snapshot: Path | None) -> dict[str, Any]:
    started = time.perf_counter()
    if snapshot is None:
        raise harness.BenchError("--full-size needs --model: workers load a snapshot from a path every node can read")
    counts = worker_counts(args)
    report: dict[str, Any] = {
        "benchmark": "batch",
        "mode": args.mode,
        "device": harness.device_name(args.device),
        "settings": {
            **{key: getattr(args, key) for key in ("jobs", "height", "width", "steps", "threads")},
            "marks": "every mark" if not args.marks else " ".join(args.marks),
            "ray": args.ray,
        },
        "model": str(snapshot),
    }
    external = contextlib.nullcontext((args.encoder, "external"))
    with external if args.encoder else encoder_server(snapshot, args.device) as (target, where):
        report["encoder"] = {"target": target, "where": where}
        log.info("single-process flux2-generate, %d jobs", args.jobs)
        report["single_process_cli"] = measure_cli(args, scratch, snapshot, target)
        report["batch"] = {}
        for workers in counts:  # a count given twice keeps its last run
            log.info("flux2-batch, %d worker(s), %d jobs", workers, args.jobs)
            report["batch"][str(workers)] = measure_batch(args, scratch, snapshot, target, workers)
    one = report["batch"].get("1")
    cli = report["single_process_cli"]
    measured: dict[str, float] = {}
    if one and one["images_per_s"] and cli["images_per_s"]:
        measured["steady_overhead_vs_cli"] = cli["images_per_s"] / one["images_per_s"]
        report["overhead_vs_cli"] = {
            "steady": measured["steady_overhead_vs_cli"],  # seconds per image, one worker over flux2-generate
            "extra_start_s": one["first_image_after_s"] - cli["first_image_after_s"],  # Ray and the actor's start
            "end_to_end": cli["images_per_s_end_to_end"] / one["images_per_s_end_to_end"],
        }
    most = report["batch"][str(counts[-1])]
    if one and one["images_per_s"] and most["images_per_s"] and counts[-1] > 1:
        speedup = most["images_per_s"] / one["images_per_s"]
        measured["scaling_efficiency"] = speedup / counts[-1]
        report["scaling"] = {"workers": counts[-1], "speedup": speedup, "efficiency": measured["scaling_efficiency"]}
    report["measured"] = measured
    report["targets"] = TARGETS
    report["meets_targets"] = harness.meets_targets(TARGETS, measured) if args.mode == "full-size" else None
    report["wall_s"] = time.perf_counter() - started
    return report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = harness.mode_parser("bench.batch", __doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, help="jobs per run (tiny 16, full-size 64)")
    parser.add_argument("--height", type=int, help="image height (tiny 128, full-size 1024)")
    parser.add_argument("--width", type=int, help="image width (tiny 128, full-size 1024)")
    parser.add_argument("--steps", type=int, help="denoising steps (tiny 4, full-size 28)")
    parser.add_argument("--workers", help="worker counts to measure, comma-separated (tiny 1,2; full-size 1,2,4..N)")
    parser.add_argument("--gpus", type=int, help="GPUs to scale up to (default: this machine's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPUs) per worker and for the CLI")
    parser.add_argument("--encoder", help="use this HOST:PORT server instead of starting one")
    parser.add_argument("--ray", default="local", help="Ray cluster address for flux2-batch (default: local)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one command may take")
    parser.add_argument(
        "--no-marks", dest="marks", action="store_const", const=["--no-watermark", "--no-c2pa", "--no-iptc"],
        default=[], help="generate without provenance marks (default: every mark, as users run)",
    )  # fmt: skip
    args = harness.parse_mode_args(parser, argv, DEFAULTS)
    if args.jobs < 2:
        parser.error("--jobs must be at least 2: a rate is measured between the first image and the last")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return harness.run_main(parse_args(argv), benchmark)


if __name__ == "__main__":
    sys.exit(main())
