"""Running `flux2-serve` from tests: a real process on port 0, its log read on a thread, its health awaited."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SERVING = re.compile(r"flux2-serve: serving .* on http://[^:]+:(\d+)/v1")


@dataclass
class ServeProcess:
    process: subprocess.Popen[str]
    log: list[str] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        assert self.process.stderr is not None
        stderr = self.process.stderr
        threading.Thread(target=lambda: self.log.extend(stderr), daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def wait_serving(self, timeout_s: float = 180) -> ServeProcess:
        """Until the port is printed and `/health` says ok (the pipeline has loaded)."""
        deadline = time.monotonic() + timeout_s
        while not self.port:
            for line in list(self.log):
                if match := SERVING.search(line):
                    self.port = int(match.group(1))
            assert self.process.poll() is None, f"flux2-serve exited: {self.output()}"
            assert time.monotonic() < deadline, f"flux2-serve printed no port: {self.output()}"
            time.sleep(0.05)
        while health(self.port)[0] != 200:
            assert self.process.poll() is None, f"flux2-serve exited: {self.output()}"
            assert time.monotonic() < deadline, f"flux2-serve never became healthy: {self.output()}"
            time.sleep(0.1)
        return self

    def output(self) -> str:
        return "".join(self.log)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)


def start_serve(model: Path, encoder: str, *flags: str, env: dict[str, str] | None = None) -> ServeProcess:
    """`python -m diffusion_client.serve.cli` on 127.0.0.1, port 0, CPU, offline."""
    command = [
        sys.executable,
        "-m",
        "diffusion_client.serve.cli",
        "--encoder",
        encoder,
        "--model",
        str(model),
        "--device",
        "cpu",
        "--port",
        "0",
        *flags,
    ]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    return ServeProcess(subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=environment))


def health(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")
    except OSError:
        return 0, {}


def http(
    port: int,
    path: str,
    body: bytes | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
    timeout: float = 120,
) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP request (no SDK): status, headers, body."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        headers={"Content-Type": "application/json", **(headers or {})},
        method=method or ("POST" if data is not None else "GET"),
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def post_and_never_read(
    port: int, body: dict[str, Any], token: str | None = None, receive_buffer: int | None = None
) -> socket.socket:
    """A raw connection that has sent one image generation request and reads nothing of its reply (the caller
    closes it); `receive_buffer` shrinks the socket's buffer, so the reply's bytes wait on the server's side."""
    raw = json.dumps(body).encode()
    head = "POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    connection = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    connection.connect(("127.0.0.1", port))
    connection.sendall(f"{head}Content-Length: {len(raw)}\r\n\r\n".encode() + raw)
    return connection


def pixels(data: bytes | str) -> np.ndarray:
    """An image file's pixels (base64 text or bytes), RGB."""
    raw = base64.b64decode(data) if isinstance(data, str) else data
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
