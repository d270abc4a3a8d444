"""Page benchmark: what `flux2-studio` adds over the CLI. Page load time, and click-to-image time through the page
in a real headless Chromium against the same pipeline's time per image as `flux2-generate` spends it
(`ImageGenerator` on one prepared job, weights already loaded).

    python -m bench.studio --tiny        # tiny random snapshot on CPU, Debian's chromium, about a minute
    python -m bench.studio --full-size   # random FLUX.2-dev NF4 DiT on CUDA (or --model SNAPSHOT), 1024x1024
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import harness
from bench.random_models import encoder_server, generator_pipeline
from diffusion_client.encoder_client.client import RemoteTextEncoder
from diffusion_client.errors import ClientError
from diffusion_client.generation.generator import FailedJob, ImageGenerator
from diffusion_client.generation.jobs import GenerationJob

log = logging.getLogger("bench.studio")

GUIDANCE = 4.0
DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": {"device": "cpu", "size": 256, "steps": 4, "repeats": 3},
    "full-size": {"device": "cuda", "size": 1024, "steps": 28, "repeats": 3},
}
TIMEOUT_MS = 1_800_000


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise harness.BenchError("the page benchmark needs Debian's chromium: apt-get install chromium")
    return found


def cli_seconds(generator: ImageGenerator, args: argparse.Namespace, scratch: Path) -> list[float]:
    """Seconds per image as flux2-generate spends them once loaded: prepare, fetch, denoise, mark, write."""
    times = []
    for repeat in range(args.repeats + 1):  # the first is a warm-up
        job = GenerationJob(
            f"a lighthouse, take {repeat}",
            scratch / f"cli-{repeat}.png",
            seed=repeat,
            steps=args.steps,
            guidance=GUIDANCE,
            height=args.size,
            width=args.size,
        )
        started = time.perf_counter()
        outcomes = list(generator.run(generator.prepare([job])))
        if isinstance(outcomes[0], FailedJob):
            raise harness.BenchError(str(outcomes[0]))
        times.append(time.perf_counter() - started)
    return times[1:]


def page_seconds(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Page loads, and clicks to images (status line written), in a fresh browser context each."""
    from playwright.sync_api import sync_playwright

    loads, clicks, jobs = [], [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            for repeat in range(args.repeats + 1):  # the first is a warm-up (Gradio's first render, caches)
                context = browser.new_context(viewport={"width": 1400, "height": 1000})
                page = context.new_page()
                started = time.perf_counter()
                page.goto(url)
                page.locator("#prompt textarea").wait_for(timeout=TIMEOUT_MS)
                loaded = time.perf_counter() - started
                page.locator("#prompt textarea").fill(f"a lighthouse, page take {repeat}")
                page.locator("#seed input").fill(str(repeat))
                page.locator("#steps input[type=number]").fill(str(args.steps))
                page.locator("#width input").fill(str(args.size))
                page.locator("#height input").fill(str(args.size))
                page.locator("#guidance input").fill(str(GUIDANCE))
                status = page.locator("#status textarea")  # plain text: the status box is a read-only Textbox
                started = time.perf_counter()
                page.locator("#generate").click()
                said = "() => /wrote|Error/.test(document.querySelector('#status textarea').value)"
                page.wait_for_function(said, timeout=TIMEOUT_MS)
                clicked = time.perf_counter() - started
                if "wrote" not in status.input_value():
                    raise harness.BenchError(f"the page said: {status.input_value()}")
                text = page.locator("#details").inner_text()
                job_s = json.loads(text[text.index("{") : text.rindex("}") + 1])["seconds"]
                context.close()
                if repeat:
                    loads.append(loaded)
                    clicks.append(clicked)
                    jobs.append(job_s)
        finally:
            browser.close()
    return {"load_s": loads, "click_to_image_s": clicks, "studio_job_s": jobs}


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def benchmark(args: argparse.Namespace, scratch: Path, snapshot: Path | None) -> dict[str, Any]:
    from diffusion_client.studio.cli import gradio_upload_folder, launch, prepare_environment

    prepare_environment()
    from diffusion_client.studio.engine import Studio
    from diffusion_client.studio.page import build_page
    from diffusion_client.studio.shelf import Shelf

    started = time.perf_counter()
    chromium_path()  # before minutes of loading
    pipeline, kind = generator_pipeline(snapshot, args.device)
    harness.release_memory(args.device)
    report: dict[str, Any] = {
        "benchmark": "studio",
        "mode": args.mode,
        "device": harness.device_name(args.device),
        "settings": {"size": args.size, "steps": args.steps, "guidance": GUIDANCE, "repeats": args.repeats},
        "model": str(snapshot) if snapshot else "random FLUX.2-dev (32.2B) NF4 and VAE",
    }
    with encoder_server(snapshot, args.device) as (target, where), RemoteTextEncoder(target, timeout=600) as encoder:
        report["encoder"] = {"target": target, "where": where}
        generator = ImageGenerator(pipeline, encoder, model_name="bench", progress=False)
        cli = cli_seconds(generator, args, scratch)
        out_dir = scratch / "page"
        out_dir.mkdir()
        studio = Studio(generator, out_dir)
        shelf = Shelf(gradio_upload_folder(), per_visitor=2**30, total=2**30)
        page = build_page(studio, shelf, kind, title="bench", lora_dir=None)
        try:
            port = launch(page, shelf, host="127.0.0.1", port=0, out_dir=out_dir)
            measured = page_seconds(f"http://127.0.0.1:{port}", args)
        finally:
            page.close()
            studio.close()
            shelf.close()
    report["cli_image_s"] = summary(cli)
    report["page_load_s"] = summary(measured["load_s"])
    report["page_click_to_image_s"] = summary(measured["click_to_image_s"])
    report["studio_job_s"] = summary(measured["studio_job_s"])
    report["page_overhead_s"] = report["page_click_to_image_s"]["median"] - report["cli_image_s"]["median"]
    report["wall_s"] = time.perf_counter() - started
    return report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = harness.mode_parser("bench.studio", __doc__.splitlines()[0])
    parser.add_argument("--size", type=int, help="image side (tiny 256, full-size 1024)")
    parser.add_argument("--steps", type=int, help="denoising steps (tiny 4, full-size 28)")
    parser.add_argument("--repeats", type=int, help="timed images each way, after one warm-up (default 3)")
    args = harness.parse_mode_args(parser, argv, DEFAULTS)
    if args.repeats < 1 or args.steps < 1:
        parser.error("--repeats and --steps must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return harness.run_main(parse_args(argv), benchmark, errors=(ClientError,))


if __name__ == "__main__":
    sys.exit(main())
