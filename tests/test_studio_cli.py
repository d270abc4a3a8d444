"""`flux2-studio`'s flags: a bad one is one line and exit 2, before any weights load or a port opens."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PREFIX = "flux2-studio:"


def studio_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "diffusion_client.studio.cli", *args]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment)


def assert_one_line(finished: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert finished.returncode == 2, finished.stderr
    assert "Traceback" not in finished.stderr
    ours = [line for line in finished.stderr.splitlines() if line.startswith(f"{PREFIX} error:")]
    assert len(ours) == 1, finished.stderr
    for fragment in fragments:
        assert fragment in ours[0], ours[0]


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--port", "70000"], "--port: must be a port from 0 to 65535"),
        (["--port", "nan"], "--port: must be a port"),
        (["--max-upload-mib", "inf"], "--max-upload-mib: must be a whole number of MiB"),
        (["--timeout", "nan"], "--timeout: must be a positive number of seconds"),
    ],
)
def test_a_bad_flag_is_one_line(tiny_snapshot, flags, fragment):
    assert_one_line(studio_cli("--model", str(tiny_snapshot), *flags), fragment)


def test_a_missing_auth_file_is_one_line(tiny_snapshot, tmp_path):
    finished = studio_cli("--model", str(tiny_snapshot), "--auth-file", str(tmp_path / "absent"))
    assert_one_line(finished, "cannot read auth file")


def test_a_lora_dir_that_is_a_file_is_one_line(tiny_snapshot, tmp_path):
    (tmp_path / "file").write_text("")
    finished = studio_cli("--model", str(tiny_snapshot), "--lora-dir", str(tmp_path / "file"))
    assert_one_line(finished, "is not a folder")


def test_without_gradio_it_says_which_extra_to_install(tiny_snapshot, tmp_path):
    shadow = tmp_path / "no-gradio" / "gradio"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('gradio is not installed')\n")
    root = str(Path(__file__).resolve().parents[1])
    finished = studio_cli("--model", str(tiny_snapshot), env={"PYTHONPATH": f"{shadow.parent}:{root}"})
    assert_one_line(finished, "pip install 'flux2-split[studio]'")


def test_an_out_dir_that_cannot_be_made_is_one_line(tiny_snapshot, tmp_path):
    (tmp_path / "file").write_text("")
    finished = studio_cli("--model", str(tiny_snapshot), "--out-dir", str(tmp_path / "file" / "images"))
    assert_one_line(finished, "cannot make --out-dir")
