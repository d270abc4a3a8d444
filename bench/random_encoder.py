"""An encoder server in its own process, so its GPU memory stays out of a client benchmark's numbers.

`python -m bench.random_encoder --port N` serves random Mistral Small 3.1 weights (layers 1..30, as `flux2-encoder
serve --max-layer 30` loads them) through the server's own serve loop; `encoder_process` starts it, or
`flux2-encoder serve` for a snapshot.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from bench.harness import BenchError, setup_process
from shared.defaults import DEFAULT_HIDDEN_STATE_LAYERS, SERVICE_NAME
from shared.quiet import quiet_library_loggers, quiet_model_libraries

log = logging.getLogger(__name__)

MAX_LAYER = max(DEFAULT_HIDDEN_STATE_LAYERS)
REPO_ROOT = Path(__file__).resolve().parents[1]  # where `python -m bench.random_encoder` finds `bench`


def wait_until_serving(process: subprocess.Popen[bytes], target: str, timeout_s: float) -> None:
    """Poll `grpc.health.v1` until SERVING; fail at once if the server process exits."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while process.poll() is None:
            with contextlib.suppress(grpc.RpcError):  # not listening yet
                reply = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            if time.monotonic() > deadline:
                raise BenchError(f"the encoder server at {target} was not SERVING after {timeout_s:.0f} s")
            time.sleep(1)
    raise BenchError(f"the encoder server exited with status {process.returncode} before serving")


@contextlib.contextmanager
def encoder_process(model: Path | None, device: str, timeout_s: float = 900) -> Iterator[str]:
    """Start a server on `device` in a subprocess and yield its target once SERVING; SIGTERM it on exit.

    Without `model` it serves random weights (`python -m bench.random_encoder`).
    """
    with socket.socket() as probe:  # a free port for the child to bind
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "bench.random_encoder", "--port", str(port), "--device", device]
    if model is not None:
        command = [sys.executable, "-m", "encoder_server.cli", "serve", "--model", str(model.resolve())]
        command += ["--host", "127.0.0.1", "--port", str(port), "--device", device, "--max-layer", str(MAX_LAYER)]
    log.info("starting the encoder server: %s", " ".join(command))
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=sys.stderr.fileno(), stderr=sys.stderr.fileno())
    try:
        wait_until_serving(process, f"127.0.0.1:{port}", timeout_s)
        yield f"127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT."""
    quiet_library_loggers()
    parser = argparse.ArgumentParser(description="Serve random Mistral Small 3.1 embeddings (FLUX.2-dev's shapes).")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--max-layer", type=int, default=MAX_LAYER)
    args = parser.parse_args(argv)
    setup_process()
    quiet_model_libraries()
    from bench.random_models import RANDOM_ENCODER_NAME, random_prompt_encoder
    from encoder_server.config import ModelConfig, ServerConfig
    from encoder_server.server import serve

    model = ModelConfig(Path(RANDOM_ENCODER_NAME), device=args.device, dtype="bfloat16", max_layer=args.max_layer)
    config = ServerConfig(model=model, host="127.0.0.1", port=args.port)
    asyncio.run(serve(config, lambda: random_prompt_encoder(args.device, args.max_layer)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
