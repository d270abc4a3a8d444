"""Every command's failure is exactly one line on stderr: on a first run, which makes the local C2PA signing
authority, and where bitsandbytes believes the CPU has AVX512-BF16 (its import then warns)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.generation.test_demo import AVX512_BF16_SITECUSTOMIZE, REPO_ROOT
from tests.support.cli_runs import dead_port

BIN = Path(sys.executable).parent
SIGNS = {"flux2-generate", "flux2-batch", "flux2-studio"}  # what makes the authority before it fails


def failing_invocation(command: str, snapshot: Path, tmp_path: Path, taken_port: int) -> tuple[list[str], str]:
    """A run of `command` that fails after the start-up checks, and a fragment of its one error line."""
    encoder = f"127.0.0.1:{dead_port()}"  # nothing listens there
    if command == "flux2-generate":
        return ["a fox", "--encoder", encoder, "--model", str(snapshot), "--out", str(tmp_path / "x.png")], encoder
    if command == "flux2-batch":
        (tmp_path / "prompts.txt").write_text("a fox\n")
        flags = ["--prompts", str(tmp_path / "prompts.txt"), "--out-dir", str(tmp_path / "out"), "--device", "cpu"]
        return [*flags, "--encoder", encoder, "--model", str(snapshot)], encoder
    if command == "flux2-studio":  # listening wide without a login, the encoder down: two notes, then the error
        flags = ["--host", "0.0.0.0", "--port", str(taken_port), "--out-dir", str(tmp_path / "images")]
        return [*flags, "--encoder", encoder, "--model", str(snapshot)], str(taken_port)
    if command == "flux2-train-lora":
        (tmp_path / "data").mkdir()
        Image.new("RGB", (64, 64), "red").save(tmp_path / "data" / "fox.png")
        (tmp_path / "data" / "fox.txt").write_text("a red fox")
        flags = ["--data", str(tmp_path / "data"), "--model", str(snapshot), "--out", str(tmp_path / "lora")]
        return [*flags, "--encoder", encoder, "--device", "cpu", "--steps", "1", "--resolution", "64"], encoder
    if command == "flux2-verify":
        return [str(tmp_path / "missing.png")], "missing.png"
    if command == "flux2-serve":  # listening wide without tokens on a taken port: no warning, the error alone
        flags = ["--host", "0.0.0.0", "--port", str(taken_port), "--out-dir", str(tmp_path / "images")]
        return [*flags, "--encoder", encoder, "--model", str(snapshot), "--device", "cpu"], str(taken_port)
    assert command == "flux2-encoder"
    return ["serve", "--model", str(tmp_path / "missing"), "--port", "0"], "is not a directory"


@pytest.mark.parametrize(
    "command",
    [
        "flux2-generate",
        "flux2-batch",
        "flux2-studio",
        "flux2-train-lora",
        "flux2-verify",
        "flux2-encoder",
        "flux2-serve",
    ],
)
def test_a_failing_first_run_prints_exactly_one_line_even_with_avx512_bf16(command, tiny_snapshot, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(AVX512_BF16_SITECUSTOMIZE)
    config = tmp_path / "config"  # fresh: a command that signs makes its local authority here
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(REPO_ROOT)]),
        "XDG_CONFIG_HOME": str(config),
        "HF_HUB_OFFLINE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    with socket.socket() as taken:  # the page's port, already in use
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        args, fragment = failing_invocation(command, tiny_snapshot, tmp_path, taken.getsockname()[1])
        finished = subprocess.run(
            [str(BIN / command), *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
    assert finished.returncode != 0
    lines = finished.stderr.splitlines()  # no note, no library warning, no traceback: the error alone
    assert len(lines) == 1 and lines[0].startswith(f"{command}: error: ") and fragment in lines[0], finished.stderr
    # The commands that sign made the authority before failing, and said nothing of it.
    assert (config / "flux2-split" / "c2pa" / "signer.key").is_file() == (command in SIGNS)
