"""Where `flux2-generate` writes: checked before weights load, atomic, and one failed job does not sink a run."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from diffusion_client.atomic_files import replacing, write_bytes
from diffusion_client.generation.cli import main as generate_main
from tests.support.cli_runs import assert_one_line_error, dead_port, error_lines, run_cli
from tests.support.fake_encoder import FakeEncoder, embeds_for, fake_server
from tests.support.helpers import TINY_EMBED_DIM

SIZE = ["--height", "64", "--width", "64", "--steps", "2"]


def noise_png(path: Path, size: int = 64, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path.read_bytes()


def test_output_directory_fails_in_preflight_before_any_weights_load(tiny_snapshot, tmp_path):
    # The encoder does not exist: had the output been checked after it (or after loading), this would
    # wait out the 120 s default deadline instead of answering at once.
    before = sorted(tmp_path.iterdir())
    started = time.monotonic()
    finished = run_cli(
        "a cat", "--encoder", f"127.0.0.1:{dead_port()}", "--model", str(tiny_snapshot), "--out", str(tmp_path)
    )
    assert finished.returncode == 2, finished.stderr
    assert time.monotonic() - started < 60
    assert_one_line_error(finished.stderr, f"cannot write {tmp_path}: it is a directory")
    assert sorted(tmp_path.iterdir()) == before


def test_output_under_a_file_fails_in_preflight(tiny_snapshot, tmp_path):
    (tmp_path / "plain").write_text("a file, not a folder")
    out = tmp_path / "plain" / "x.png"
    finished = run_cli(
        "a cat", "--encoder", f"127.0.0.1:{dead_port()}", "--model", str(tiny_snapshot), "--out", str(out)
    )
    assert finished.returncode == 2, finished.stderr
    assert_one_line_error(finished.stderr, f"cannot write {out}", "is not a directory")


def test_a_new_file_replaces_an_older_one_and_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "x.png"
    noise_png(out)
    write_bytes(out, b"new")
    assert [path.name for path in tmp_path.iterdir()] == ["x.png"]
    assert out.read_bytes() == b"new"


def test_an_interrupted_write_leaves_the_older_file_and_no_temporary_file(tmp_path):
    out = tmp_path / "x.png"
    old = noise_png(out)
    with pytest.raises(RuntimeError), replacing(out) as file:
        file.write(b"half an image")
        raise RuntimeError("the process is told to stop")
    assert [path.name for path in tmp_path.iterdir()] == ["x.png"]
    assert out.read_bytes() == old


def test_full_disk_keeps_the_old_png_valid_and_leaves_no_partial_file(encoder_server, tiny_snapshot, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "x.png"
    old = noise_png(out, size=16)
    finished = run_cli(
        "a cat",
        "--encoder",
        encoder_server.target,
        "--model",
        str(tiny_snapshot),
        "--quiet",
        "--out",
        str(out),
        *SIZE,
        limits={"FSIZE": 4096},  # a write past 4 KiB fails (EFBIG)
    )
    assert finished.returncode != 0
    assert_one_line_error(finished.stderr, f"cannot write {out}", "too large")
    assert [path.name for path in folder.iterdir()] == ["x.png"]
    assert out.read_bytes() == old
    with Image.open(out) as image:
        image.load()
        assert image.size == (16, 16)


def picky_reply(request, context):  # type: ignore[no-untyped-def]
    """Embeddings for most prompts; a refusal, a corrupt reply or an outage for the ones that ask for it."""
    prompt = request.prompts[0]
    if prompt == "refuse me":
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "this prompt is not allowed")
    if prompt == "unreachable":
        context.abort(grpc.StatusCode.UNAVAILABLE, "down for maintenance")
    return embeds_for(request, width=97 if prompt == "garble me" else TINY_EMBED_DIM)


def generate_from(target: str, snapshot: Path, prompts: Path, out: Path, *flags: str) -> int:
    return generate_main(
        ["--prompts", str(prompts), "--encoder", target, "--model", str(snapshot), "--quiet", "--out", str(out)]
        + [*SIZE, *flags]
    )


def test_job_that_fails_on_its_own_is_reported_and_later_jobs_still_run(tiny_snapshot, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a lighthouse\nrefuse me\ngarble me\nan owl\n")
    with fake_server(FakeEncoder(picky_reply)) as target:
        code = generate_from(target, tiny_snapshot, prompts, tmp_path / "b.png")
    assert code == 2  # the first failure's code: a refused request
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 2
    assert errors[0].startswith(f"flux2-generate: error: {prompts}:2: ") and "not allowed" in errors[0]
    assert errors[1].startswith(f"flux2-generate: error: {prompts}:3: bad reply")
    assert sorted(path.name for path in tmp_path.glob("b-*.png")) == ["b-000.png", "b-003.png"]


def test_unreachable_encoder_stops_a_prompts_run(tiny_snapshot, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a lighthouse\nunreachable\nan owl\n")
    with fake_server(FakeEncoder(picky_reply)) as target:
        code = generate_from(target, tiny_snapshot, prompts, tmp_path / "b.png", "--timeout", "1")
    assert code == 3
    assert_one_line_error(capsys.readouterr().err, "cannot reach the encoder", "down for maintenance")
    assert sorted(path.name for path in tmp_path.glob("b-*.png")) == ["b-000.png"]
