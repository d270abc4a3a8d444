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
    root = str(Path(__file__).resolve().parents[2])
    finished = studio_cli("--model", str(tiny_snapshot), env={"PYTHONPATH": f"{shadow.parent}:{root}"})
    assert_one_line(finished, "pip install 'flux2-split[studio]'")


def test_an_out_dir_that_cannot_be_made_is_one_line(tiny_snapshot, tmp_path):
    (tmp_path / "file").write_text("")
    finished = studio_cli("--model", str(tiny_snapshot), "--out-dir", str(tmp_path / "file" / "images"))
    assert_one_line(finished, "cannot make --out-dir")


def test_the_new_limits_are_in_the_help():
    finished = studio_cli("--help")
    assert finished.returncode == 0
    for flag in ("--max-queued-per-session", "--max-queued-per-user", "--session-upload-mib", "--total-upload-mib",
                 "--session-idle-s"):  # fmt: skip
        assert flag in finished.stdout


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--max-queued-per-session", "0"], "--max-queued-per-session: must be a whole number from 1 to 64"),
        (["--max-queued-per-user", "x"], "--max-queued-per-user: must be a whole number"),
        (["--session-upload-mib", "-1"], "--session-upload-mib: must be a whole number of MiB"),
        (["--session-idle-s", "1.5"], "--session-idle-s: must be a whole number of seconds"),
        (["--session-upload-mib", "10"], "--max-upload-mib 50, --session-upload-mib 10 and --total-upload-mib"),
        (["--total-upload-mib", "100"], "must grow in that order"),
    ],
)
def test_a_bad_limit_is_one_line(tiny_snapshot, tmp_path, flags, fragment):
    assert_one_line(studio_cli("--model", str(tiny_snapshot), "--out-dir", str(tmp_path / "images"), *flags), fragment)


def test_an_out_dir_holding_the_auth_file_is_refused_before_anything_is_served(tiny_snapshot, tmp_path):
    credentials = tmp_path / "site" / "auth"
    credentials.parent.mkdir()
    credentials.write_text("ana:secret\n")
    for out_dir in (credentials.parent, tmp_path):  # the auth file's folder, and a folder above it
        finished = studio_cli("--model", str(tiny_snapshot), "--auth-file", str(credentials), "--out-dir", str(out_dir))
        assert_one_line(finished, f"--out-dir {out_dir} holds the auth file")
        assert "secret" not in finished.stderr


def test_an_out_dir_holding_the_model_snapshot_is_refused(tiny_snapshot):
    finished = studio_cli("--model", str(tiny_snapshot), "--out-dir", str(tiny_snapshot.parent))
    assert_one_line(finished, "holds the model snapshot")


def test_an_out_dir_holding_the_local_c2pa_authority_is_refused(tiny_snapshot):
    config_home = Path(os.environ["XDG_CONFIG_HOME"])  # the tests' own (conftest), where the authority lives
    finished = studio_cli("--model", str(tiny_snapshot), "--out-dir", str(config_home))
    assert_one_line(finished, "holds the C2PA signing key")


def test_an_out_dir_holding_the_c2pa_key_given_is_refused(tiny_snapshot, tmp_path):
    key, cert = tmp_path / "keys" / "signer.key", tmp_path / "keys" / "signer.pem"
    key.parent.mkdir()
    finished = studio_cli(
        "--model", str(tiny_snapshot), "--c2pa-cert", str(cert), "--c2pa-key", str(key), "--out-dir", str(key.parent)
    )
    assert_one_line(finished, "holds the C2PA signing key")


def test_an_out_dir_overlapping_gradios_upload_folder_is_refused(tiny_snapshot, tmp_path):
    uploads = tmp_path / "gradio-uploads"
    finished = studio_cli(
        "--model", str(tiny_snapshot), "--out-dir", str(uploads / "images"), env={"GRADIO_TEMP_DIR": str(uploads)}
    )
    assert_one_line(finished, "overlaps Gradio's upload folder")
