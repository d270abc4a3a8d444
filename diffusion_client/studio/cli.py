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
import tempfile
import threading
from pathlib import Path
from typing import Any

from diffusion_client.commands import (
    add_model_arguments,
    note,
    run_command,
    whole_number,
)
from diffusion_client.encoder_client.flags import add_encoder_arguments, open_encoder, token_from_args
from diffusion_client.errors import InputError, TransportError
from diffusion_client.provenance.authority import config_folder
from diffusion_client.provenance.flags import add_marking_arguments, marking_from_args
from diffusion_client.studio.auth import LOOPBACK, exposure_notes, read_credentials
from shared.allocator import tune_allocator
from shared.printable import OneLineParser

PROG = "flux2-studio"
DEFAULT_PORT = 7860  # Gradio's own default, which users of other FLUX.2 pages already know
DEFAULT_UPLOAD_MIB = 50
DEFAULT_SESSION_UPLOAD_MIB = 200  # a browser's uploads kept at once: several edits' worth of photos
DEFAULT_TOTAL_UPLOAD_MIB = 2048
MAX_QUEUED = 64  # images waiting at once, all pages together; past it the page says the queue is full
DEFAULT_SESSION_IDLE_S = 3600
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


upload_mib = whole_number(1, 1024, " of MiB")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="A web page for FLUX.2 images, with embeddings from flux2-encoder.")
    add_encoder_arguments(parser)
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
    parser.add_argument(
        "--session-upload-mib",
        type=whole_number(1, 2**20, " of MiB"),
        default=DEFAULT_SESSION_UPLOAD_MIB,
        help="uploads one browser (or script, by address) may keep at a time; they go when its last page closes "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--total-upload-mib",
        type=whole_number(1, 2**20, " of MiB"),
        default=DEFAULT_TOTAL_UPLOAD_MIB,
        help="uploads all visitors together may keep (default %(default)s)",
    )
    parser.add_argument(
        "--max-queued-per-session",
        type=whole_number(1, MAX_QUEUED),
        default=2,
        help="images one page may have waiting or running (default %(default)s)",
    )
    parser.add_argument(
        "--max-queued-per-user",
        type=whole_number(1, MAX_QUEUED),
        default=4,
        help="images one logged-in user (without --auth-file: one address) may have waiting or running on all "
        f"their pages (default %(default)s; {MAX_QUEUED} for everyone together)",
    )
    parser.add_argument(
        "--session-idle-s",
        type=whole_number(1, 30 * 86400, " of seconds"),
        default=DEFAULT_SESSION_IDLE_S,
        help="forget a session (its gallery) after this long unused; API calls make a session each "
        "(default %(default)s)",
    )
    add_model_arguments(parser)
    add_marking_arguments(parser)
    return parser


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def gradio_upload_folder() -> Path:
    """Where Gradio keeps uploads and the files it serves (`gradio.utils.get_upload_folder`, without importing
    Gradio before the flags pass)."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()


def check_out_dir(args: argparse.Namespace) -> None:
    """Refuse an --out-dir holding a secret or the model (whatever lands there could one day be served), or one
    that overlaps Gradio's folder of files it serves to anyone."""
    out_dir = args.out_dir.resolve()
    secrets = [
        ("the auth file", args.auth_file),
        ("the model snapshot", args.model),
        ("the C2PA signing key", args.c2pa_key or config_folder() / "c2pa"),
        ("the encoder token file", args.token_file),
        ("the TLS client key", args.tls_key),
    ]
    for what, path in secrets:
        if path is not None and path.resolve().is_relative_to(out_dir):
            raise InputError(f"--out-dir {args.out_dir} holds {what} ({path}); give the images a folder of their own")
    uploads = gradio_upload_folder()
    if uploads.is_relative_to(out_dir) or out_dir.is_relative_to(uploads):
        raise InputError(
            f"--out-dir {args.out_dir} overlaps Gradio's upload folder {uploads}; give the images a folder of their own"
        )


def check_upload_quotas(args: argparse.Namespace) -> None:
    if not args.max_upload_mib <= args.session_upload_mib <= args.total_upload_mib:
        raise InputError(
            f"--max-upload-mib {args.max_upload_mib}, --session-upload-mib {args.session_upload_mib} and "
            f"--total-upload-mib {args.total_upload_mib} must grow in that order: one upload must fit a session's "
            "uploads, which must fit everyone's"
        )


def log(line: str) -> None:
    print(f"{PROG}: {line}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    token = token_from_args(args)
    marking = marking_from_args(args)
    credentials = read_credentials(args.auth_file) if args.auth_file else None
    notes = exposure_notes(args.host, args.auth_file)  # said once the page serves: a failed start is one line
    if args.lora_dir is not None and not args.lora_dir.is_dir():
        raise InputError(f"--lora-dir {args.lora_dir} is not a folder")
    check_upload_quotas(args)
    check_out_dir(args)
    try:
        args.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot make --out-dir {args.out_dir}: {error.strerror or error}") from error
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise InputError("the page needs Gradio: pip install 'flux2-split[studio]'") from None

    from shared.library_logs import quiet_model_libraries

    quiet_model_libraries()
    from diffusion_client.commands import pipeline_config
    from diffusion_client.generation.generator import ImageGenerator
    from diffusion_client.generation.pipeline import load_pipeline, model_kind
    from diffusion_client.provenance.marking import Marker
    from diffusion_client.studio.engine import QueueLimits, Studio
    from diffusion_client.studio.page import build_page
    from diffusion_client.studio.shelf import Shelf

    marker = Marker.start(marking)
    notes += marker.success_notes()
    kind = model_kind(args.model)
    with open_encoder(args, token, cache_bytes=args.cache_mib * 2**20) as encoder:
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
            notes.append(f"{error}; the page will say so until the encoder answers")
        limits = QueueLimits(args.max_queued_per_session, args.max_queued_per_user, MAX_QUEUED)
        studio = Studio(generator, args.out_dir.resolve(), log=log, limits=limits, lora_dir=args.lora_dir)
        shelf = Shelf(
            gradio_upload_folder(), per_visitor=args.session_upload_mib * 2**20, total=args.total_upload_mib * 2**20
        )
        page = build_page(
            studio, shelf, kind, title=f"FLUX.2 studio: {args.model.resolve().name}", lora_dir=args.lora_dir
        )
        try:
            return serve(page, shelf, args, credentials, notes)
        finally:
            studio.close()
            shelf.close()


def launch(
    page: Any,
    shelf: Any,
    *,
    host: str,
    port: int,
    out_dir: Path,
    credentials: list[tuple[str, str]] | None = None,
    max_upload_mib: int = DEFAULT_UPLOAD_MIB,
    session_idle_s: float = DEFAULT_SESSION_IDLE_S,
    log: Any = log,
) -> int:
    """Start serving `page` (Gradio Blocks) behind the guard on a background thread, its files on `shelf`;
    returns the port (0 asks for a free one)."""
    import gradio as gr
    from starlette.middleware import Middleware

    from diffusion_client.studio.guard import Guard, GuardPolicy
    from diffusion_client.studio.logins import LoginThrottle
    from diffusion_client.studio.sessions import MAX_SESSIONS, expiring_sessions

    port = port or free_port(host)
    throttle = LoginThrottle({user for user, _ in credentials}) if credentials else None
    policy = GuardPolicy(shelf, throttle, max_upload_mib * 2**20, log)
    page.queue(default_concurrency_limit=1, max_size=MAX_QUEUED)
    page.launch(
        server_name=host,
        server_port=port,
        auth=credentials,
        prevent_thread_lock=True,
        quiet=True,
        show_error=False,  # our handlers show their own one-line messages; nothing else reaches the page
        ssr_mode=False,
        # --out-dir is never served: the page shows copies of its images on the shelf, each to its owner only.
        blocked_paths=[str(out_dir.resolve())],
        max_file_size=max_upload_mib * 2**20,
        footer_links=[],
        # Run history would answer without the login and use this machine's Hugging Face token for callers
        # that look local (a reverse proxy on this machine): off.
        run_history=False,
        state_session_capacity=MAX_SESSIONS,
        app_kwargs={"middleware": [Middleware(Guard, policy=policy)], "lifespan": expiring_sessions(session_idle_s)},
        theme=gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"]),  # no font downloads
    )
    return port


def serve(
    page: Any,
    shelf: Any,
    args: argparse.Namespace,
    credentials: list[tuple[str, str]] | None,
    notes: list[str] | None = None,
) -> int:
    """Serve the page until SIGINT or SIGTERM; `notes` are printed once it serves."""
    port = launch(
        page,
        shelf,
        host=args.host,
        port=args.port,
        out_dir=args.out_dir,
        credentials=credentials,
        max_upload_mib=args.max_upload_mib,
        session_idle_s=args.session_idle_s,
    )
    stopped = threading.Event()

    def stop(*_: object) -> None:
        stopped.set()
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second signal stops at once, mid-step or not
            signal.signal(signum, signal.SIG_DFL)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    for text in notes or ():
        note(text, PROG)
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
