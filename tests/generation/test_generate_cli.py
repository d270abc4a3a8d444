"""`flux2-generate` as a command: light to start, and the bearer token kept out of `ps`."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from diffusion_client.generation.cli import main as generate_main
from tests.support.cli_runs import assert_one_line_error
from tests.support.fake_encoder import FakeEncoder, fake_server

HEAVY = ("torch", "diffusers", "transformers", "grpc", "PIL", "numpy")
SIZE = ["--height", "64", "--width", "64", "--steps", "2"]


def test_importing_the_cli_imports_nothing_heavy():
    probe = f"import sys, diffusion_client.generation.cli; print([m for m in {HEAVY!r} if m in sys.modules])"
    finished = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == "[]"


def test_help_answers_in_well_under_a_second():
    started = time.monotonic()
    finished = subprocess.run(
        [sys.executable, "-m", "diffusion_client.generation.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    elapsed = time.monotonic() - started
    assert finished.returncode == 0 and "--token-file" in finished.stdout
    assert elapsed < 3, f"--help took {elapsed:.1f} s"


@pytest.fixture
def recorded_token(tiny_snapshot, tmp_path):  # type: ignore[no-untyped-def]
    """Runs flux2-generate against a recording server; returns (exit code, the token the server saw)."""

    def run(*flags: str) -> tuple[int, str | None]:
        servicer = FakeEncoder()
        with fake_server(servicer) as target:
            code = generate_main(
                ["a cat", "--encoder", target, "--model", str(tiny_snapshot), "--quiet"]
                + ["--out", str(tmp_path / "x.png"), *SIZE, *flags]
            )
        sent = servicer.metadata[0].get("authorization") if servicer.metadata else None
        return code, sent

    return run


def test_token_file_is_sent_as_bearer_token(recorded_token, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("team-secret-42\n")
    code, sent = recorded_token("--token-file", str(token_file))
    assert code == 0
    assert sent == "Bearer team-secret-42"


def test_token_from_the_environment_is_sent(recorded_token, monkeypatch):
    monkeypatch.setenv("FLUX2_ENCODER_TOKEN", "from-env")
    code, sent = recorded_token()
    assert (code, sent) == (0, "Bearer from-env")


def test_token_and_token_file_together_exit_2(recorded_token, tmp_path, capsys):
    (tmp_path / "token").write_text("a")
    code, sent = recorded_token("--token", "b", "--token-file", str(tmp_path / "token"))
    assert code == 2 and sent is None
    assert_one_line_error(capsys.readouterr().err, "give --token or --token-file, not both")


@pytest.mark.parametrize("content,message", [(None, "cannot read token file"), ("\n", "is empty")])
def test_unreadable_or_empty_token_file_exits_2(recorded_token, tmp_path, capsys, content, message):
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)
    code, sent = recorded_token("--token-file", str(token_file))
    assert code == 2 and sent is None
    assert_one_line_error(capsys.readouterr().err, message, str(token_file))
