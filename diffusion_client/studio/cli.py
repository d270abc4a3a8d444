"""`flux2-studio`: the page on the generator box. Loads the pipeline once, then serves the page until stopped.

Flags are checked and reported the way `flux2-generate` reports them (one line, exit 2); nothing heavy is
imported before they pass. Gradio is an optional extra: without it the command says how to install it.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from diffusion_client.cli import DEFAULT_CACHE_MIB, add_quantize_argument, cache_mib, note, run_command
from diffusion_client.encoder_flags import add_encoder_arguments, encoder_from_args, token_from_args
from diffusion_client.errors import InputError, TransportError
from diffusion_client.provenance.flags import add_marking_arguments, marking_from_args
from diffusion_client.studio.auth import LOOPBACK, exposure_notes, read_credentials
from shared.allocator import tune_allocator
from shared.one_line import OneLineParser

PROG = "flux2-studio"
DEFAULT_PORT = 7860  # Gradio's own default, which users of other FLUX.2 pages already know
DEFAULT_UPLOAD_MIB = 50
MAX_QUEUED = 64  # Generate clicks waiting at once, all pages together; past it Gradio says the queue is full
HEARTBEAT_S = "2"  # how soon a closed page is noticed (and its job cancelled); Gradio's default is 15 s


def port_number(text: str) -> int:
    """`--port`: 1 to 65535, or 0 for any free port (the ready line names it)."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 0 to 65535, not {text!r}")
    return port


def upload_mib(text: str) -> int:
    try:
        mib = int(text)
    except ValueError:
        mib = 0
    if not 1 <= mib <= 1024:
        raise argparse.ArgumentTypeError(f"must be a whole number of MiB from 1 to 1024, not {text!r}")
    return mib


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="A web page for FLUX.2 images, with embeddings from flux2-encoder.")
    add_encoder_arguments(parser)
    parser.add_argument("--model", required=True, type=Path, help="local FLUX.2 snapshot (transformer/, vae/)")
    parser.add_argument("--encoder-model", metavar="NAME", help="which of the encoder server's models to use")
    parser.add_argument("--lora-dir", type=Path, help="folder of LoRA .safetensors files the page offers")
    parser.add_argument(
        "--out-dir", type=Path, default=Path("studio-images"), help="where every image is written (marked)"
    )
    parser.add_argument(
        "--host", default=LOOPBACK, help="address to listen on (default %(default)s: this machine only)"
    )
    parser.add_argument("--port", type=port_number, default=DEFAULT_PORT, help="port; 0 picks a free one")
    parser.add_argument("--auth-file", type=Path, help="file of user:password lines; the page then asks to log in")
    parser.add_argument(
        "--max-upload-mib", type=upload_mib, default=DEFAULT_UPLOAD_MIB, help="largest upload (default %(default)s)"
    )
    add_quantize_argument(parser)
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    parser.add_argument(
        "--cache-mib",
        type=cache_mib,
        default=DEFAULT_CACHE_MIB,
        help="memory for embeddings already fetched: a prompt asked again is not fetched again (default %(default)s)",
    )
    add_marking_arguments(parser)
    return parser


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def run(args: argparse.Namespace) -> int:
    token = token_from_args(args)
    marking = marking_from_args(args)
    credentials = read_credentials(args.auth_file) if args.auth_file else None
    for text in exposure_notes(args.host, args.auth_file):
        note(text, PROG)
    if args.lora_dir is not None and not args.lora_dir.is_dir():
        raise InputError(f"--lora-dir {args.lora_dir} is not a folder")
    try:
        args.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot make --out-dir {args.out_dir}: {error.strerror or error}") from error
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise InputError("the page needs Gradio: pip install 'flux2-split[studio]'") from None

    from shared.quiet import quiet_model_libraries

    quiet_model_libraries()
    from diffusion_client.cli import pipeline_config
    from diffusion_client.generator import ImageGenerator
    from diffusion_client.pipeline import load_pipeline, model_kind
    from diffusion_client.provenance.marking import Marker
    from diffusion_client.studio.page import build_page
    from diffusion_client.studio.studio import Studio

    marker = Marker.start(marking)
    for text in marker.start_notes():
        note(text, PROG)
    kind = model_kind(args.model)
    with encoder_from_args(args, token, cache_bytes=args.cache_mib * 2**20) as encoder:
        encoder.model = args.encoder_model
        pipeline = load_pipeline(pipeline_config(args))
        generator = ImageGenerator(
            pipeline,
            encoder,
            model_name=args.model.resolve().name,
            progress=False,
            marker=marker,
            reference_label=lambda path: path.name,  # an upload's name, not where Gradio keeps it
        )
        try:
            generator.prepare([])  # the served model that fits this snapshot; a wrong pairing stops here
        except TransportError as error:
            note(f"{error}; the page will say so until the encoder answers", PROG)
        studio = Studio(
            generator, args.out_dir.resolve(), log=lambda line: print(f"{PROG}: {line}", file=sys.stderr, flush=True)
        )
        page = build_page(studio, kind, title=f"FLUX.2 studio: {args.model.resolve().name}", lora_dir=args.lora_dir)
        try:
            return serve(page, args, credentials)
        finally:
            studio.close()


def launch(
    page: Any,
    *,
    host: str,
    port: int,
    out_dir: Path,
    credentials: list[tuple[str, str]] | None = None,
    max_upload_mib: int = DEFAULT_UPLOAD_MIB,
) -> int:
    """Start serving `page` (Gradio Blocks) on a background thread; returns the port (0 asks for a free one)."""
    import gradio as gr

    port = port or free_port(host)
    page.queue(default_concurrency_limit=1, max_size=MAX_QUEUED)
    page.launch(
        server_name=host,
        server_port=port,
        auth=credentials,
        prevent_thread_lock=True,
        quiet=True,
        show_error=False,  # our handlers show their own one-line messages; nothing else reaches the page
        ssr_mode=False,
        allowed_paths=[str(out_dir.resolve())],
        max_file_size=max_upload_mib * 2**20,
        footer_links=[],
        theme=gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"]),  # no font downloads
    )
    return port


def serve(page: Any, args: argparse.Namespace, credentials: list[tuple[str, str]] | None) -> int:
    """Serve the page until SIGINT or SIGTERM."""
    port = launch(
        page,
        host=args.host,
        port=args.port,
        out_dir=args.out_dir,
        credentials=credentials,
        max_upload_mib=args.max_upload_mib,
    )
    stopped = threading.Event()

    def stop(*_: object) -> None:
        stopped.set()
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second signal stops at once, mid-step or not
            signal.signal(signum, signal.SIG_DFL)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    print(f"{PROG}: serving on http://{args.host}:{port}", file=sys.stderr, flush=True)
    stopped.wait()
    page.close()
    return 0


def prepare_environment() -> None:
    """Gradio reads these when imported: no analytics calls home, and a closed page is noticed in seconds."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("GRADIO_HEARTBEAT_INTERVAL", HEARTBEAT_S)


def main(argv: list[str] | None = None) -> int:
    tune_allocator()
    prepare_environment()
    return run_command(PROG, build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
