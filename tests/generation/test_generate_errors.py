"""Every failure of `flux2-generate` exits non-zero with one readable line and no traceback."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from diffusion_client.generation.cli import main as generate_main
from shared.tiny_snapshot import TinySnapshotShape, build_tiny_snapshot
from tests.support.cli_runs import assert_one_line_error, dead_port, error_lines, run_cli
from tests.support.fake_encoder import FakeEncoder, embeds_for, fake_server
from tests.support.helpers import TINY_EMBED_DIM, TINY_HIDDEN_SIZE, start_server
from tests.support.rlimits import measured, peak_rss_kib

SIZE = ["--height", "64", "--width", "64", "--steps", "2"]


@pytest.fixture
def not_grpc_port() -> Iterator[int]:
    """A port where something that is not a gRPC server accepts connections and hangs up."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            connection.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join(5)
    listener.close()


@pytest.fixture
def generate(encoder_server, tiny_snapshot):  # type: ignore[no-untyped-def]
    """`flux2-generate` in process against the session's server and snapshot; returns the exit code."""
    return lambda *args: generate_main(["--encoder", encoder_server.target, "--model", str(tiny_snapshot), *args])


def test_server_not_running_exits_3_with_one_line(tiny_snapshot, tmp_path):
    finished = run_cli(
        "a cat",
        "--encoder",
        f"127.0.0.1:{dead_port()}",
        "--model",
        str(tiny_snapshot),
        "--timeout",
        "2",
        "--out",
        str(tmp_path / "x.png"),
        *SIZE,
    )
    assert finished.returncode == 3
    assert_one_line_error(finished.stderr, "cannot reach the encoder", "flux2-encoder serve")
    assert not (tmp_path / "x.png").exists()


def test_wrong_port_exits_3_with_one_line(tiny_snapshot, tmp_path, not_grpc_port, capsys):
    code = generate_main(
        [
            "a cat",
            "--encoder",
            f"127.0.0.1:{not_grpc_port}",
            "--model",
            str(tiny_snapshot),
            "--timeout",
            "2",
            "--out",
            str(tmp_path / "x.png"),
            *SIZE,
        ]
    )
    assert code == 3
    assert_one_line_error(capsys.readouterr().err, f"127.0.0.1:{not_grpc_port}")


def test_model_mismatch_exits_4_before_denoising(tiny_snapshot, tmp_path, tmp_path_factory, capsys):
    hidden_size = 2 * TINY_HIDDEN_SIZE
    wider = build_tiny_snapshot(tmp_path_factory.mktemp("wider") / "w", TinySnapshotShape(text_hidden_size=hidden_size))
    with start_server(wider) as other_server:
        capsys.readouterr()
        code = generate_main(
            [
                "a cat",
                "--encoder",
                other_server.target,
                "--model",
                str(tiny_snapshot),
                "--quiet",
                "--out",
                str(tmp_path / "x.png"),
                *SIZE,
            ]
        )
    assert code == 4
    expected = f"hidden size {hidden_size} x 3 layers = {3 * hidden_size}"
    assert_one_line_error(capsys.readouterr().err, expected, f"expects {TINY_EMBED_DIM}")
    assert not (tmp_path / "x.png").exists()


def test_unreadable_reference_image_exits_2(generate, tmp_path, capsys):
    bogus = tmp_path / "ref.png"
    bogus.write_text("not an image")
    code = generate("edit", "--image", str(bogus), "--out", str(tmp_path / "x.png"), *SIZE)
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, f"cannot read reference image {bogus}")


def test_missing_reference_image_exits_2(generate, tmp_path, capsys):
    code = generate("edit", "--image", str(tmp_path / "nope.png"), *SIZE)
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, "does not exist")


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--height", "100"], "height 100 is not a multiple of 16; use 96 or 112"),
        (["--width", "8"], "width 8 is out of range"),
        (["--steps", "0"], "steps must be at least 1"),
    ],
    ids=["height-not-multiple", "width-too-small", "zero-steps"],
)
def test_odd_sizes_exit_2_with_the_nearest_valid_values(generate, tmp_path, capsys, flags, message):
    code = generate("a cat", "--out", str(tmp_path / "x.png"), *SIZE, *flags)
    assert code == 2
    line = assert_one_line_error(capsys.readouterr().err, message)
    assert f"--{flags[0][2:]} " not in line  # the library's words, not the flag's


def test_bad_prompts_file_line_exits_2_naming_the_line(generate, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "ok"}\n{"prompt": "x", "sead": 3}\n')
    code = generate("--prompts", str(prompts))
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, f"{prompts}:2: unknown keys ['sead']")


def test_nf4_without_gpu_exits_2_suggesting_quantize_none(generate, capsys):
    code = generate("a cat", "--quantize", "nf4", "--device", "cpu")
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, "NF4 quantisation needs a CUDA GPU", "quantize none")


def test_model_path_that_is_not_a_snapshot_exits_2(encoder_server, tmp_path: Path, capsys):
    code = generate_main(["a cat", "--encoder", encoder_server.target, "--model", str(tmp_path)])
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, "no model_index.json")


@pytest.mark.parametrize(
    "line,message",
    [
        ('{"prompt": "x", "seed": NaN}', "'seed' must be a finite number"),
        ('{"prompt": "x", "steps": 2.5}', "'steps' must be a whole number"),
        ('{"prompt": "x", "out": "same.png"}\n{"prompt": "y", "out": "same.png"}', "p.jsonl:2: writes same.png, as"),
    ],
    ids=["nan-seed", "fractional-steps", "duplicate-output"],
)
def test_bad_prompts_file_values_exit_2(generate, tmp_path, capsys, line, message):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(line + "\n")
    code = generate("--prompts", str(prompts))
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, message)


def test_seed_out_of_range_exits_2_before_loading(generate, capsys):
    code = generate("a cat", "--seed", str(2**64))
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, "seed must be between 0 and")


def test_output_path_that_is_a_directory_exits_2(generate, tmp_path, capsys):
    code = generate("a cat", "--quiet", "--out", str(tmp_path), *SIZE)
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, f"cannot write {tmp_path}: it is a directory")


def test_cuda_device_without_a_gpu_exits_2(generate, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code = generate("a cat", "--device", "cuda", "--quantize", "none")
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, "no CUDA GPU is visible")


@pytest.mark.parametrize(
    "line,message",
    [
        ('{"prompt": "x", "out": 5}', "p.jsonl:1: 'out' must be a non-empty path string, not 5"),
        ('{"prompt": "x", "out": ""}', "p.jsonl:1: 'out' must be a non-empty path string"),
        ('{"prompt": "x", "images": ["a.png", 3]}', "p.jsonl:1: 'images' must be a list of path strings"),
        ('{"prompt": "x", "images": "a.png"}', "p.jsonl:1: 'images' must be a list of path strings"),
        ('{"prompt": null}', 'p.jsonl:1: each JSON line needs a "prompt" string'),
        ('{"prompt": "x", "guidance": "high"}', "p.jsonl:1: 'guidance' must be a finite number"),
        ('{"prompt": "x", "seed": true}', "p.jsonl:1: 'seed' must be a finite number"),
        ('{"prompt": "x", "height": 100}', "p.jsonl:1: height 100 is not a multiple of 16"),
    ],
    ids=[
        "out-number",
        "out-empty",
        "images-number",
        "images-string",
        "prompt-null",
        "guidance-text",
        "seed-bool",
        "size",
    ],
)
def test_jsonl_field_of_the_wrong_type_exits_2_naming_file_and_line(generate, tmp_path, capsys, line, message):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(line + "\n")
    code = generate("--prompts", str(prompts))
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, message)


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-5", "soon"])
def test_timeout_flag_that_is_not_a_positive_finite_number_exits_2_in_one_line(tiny_snapshot, capsys, value):
    code = generate_main(["a cat", "--model", str(tiny_snapshot), f"--timeout={value}"])
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, "argument --timeout: must be a positive number of seconds")


def test_unknown_flag_exits_2_in_one_line(tiny_snapshot, capsys):
    assert generate_main(["a cat", "--model", str(tiny_snapshot), "--colour", "red"]) == 2
    assert_one_line_error(capsys.readouterr().err, "unrecognized arguments: --colour red")


def test_reply_with_a_wrong_last_dimension_exits_3_not_a_pipeline_crash(tiny_snapshot, tmp_path, capsys):
    lying = FakeEncoder(lambda request, _context: embeds_for(request, width=97))
    with fake_server(lying) as target:
        code = generate_main(
            ["a cat", "--encoder", target, "--model", str(tiny_snapshot), "--quiet", "--out", str(tmp_path / "x.png")]
            + SIZE
        )
    assert code == 3
    assert_one_line_error(capsys.readouterr().err, f"bad reply from the encoder at {target}", "97")
    assert not (tmp_path / "x.png").exists()


def hand_made_png(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` RGB pixels, with a one-byte image stream."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def test_reference_image_claiming_20000_by_20000_pixels_exits_2_naming_the_cap(tiny_snapshot, tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(hand_made_png(20000, 20000))
    assert len(bomb.read_bytes()) < 100
    finished = run_cli(
        "edit it",
        "--image",
        str(bomb),
        "--encoder",
        f"127.0.0.1:{dead_port()}",
        "--model",
        str(tiny_snapshot),
        "--out",
        str(tmp_path / "x.png"),
        *SIZE,
    )
    assert finished.returncode == 2, finished.stderr
    assert_one_line_error(finished.stderr, f"reference image {bomb}", "8192x8192")


def test_reference_image_over_the_cap_but_under_pils_limit_exits_2(generate, tmp_path, capsys):
    wide = tmp_path / "wide.png"
    wide.write_bytes(hand_made_png(8193, 8192))
    code = generate("edit it", "--image", str(wide), "--out", str(tmp_path / "x.png"), *SIZE)
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, f"reference image {wide} is 8193x8192 pixels", "8192x8192")


def test_reference_image_too_small_for_flux2_exits_2_before_loading_weights(generate, tmp_path, capsys):
    """Flux2Pipeline refuses sides under 64 px only after the weights have loaded; the preflight runs its check."""
    from PIL import Image

    small = tmp_path / "small.png"
    Image.new("RGB", (48, 64), "white").save(small)
    code = generate("edit", "--image", str(small), "--out", str(tmp_path / "x.png"), *SIZE)
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, f"cannot read reference image {small}", "at least 64px")


def test_a_prompts_line_longer_than_the_encoder_takes_exits_2_before_any_image(tiny_snapshot, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a short one"}\n' + "y" * 65 + "\n")
    with start_server(tiny_snapshot, max_prompt_chars=64) as server:
        code = generate_main(
            ["--prompts", str(prompts), "--encoder", server.target, "--model", str(tiny_snapshot)]
            + ["--out", str(tmp_path / "x.png"), "--timeout", "60", *SIZE]
        )
    assert code == 2
    [line] = error_lines(capsys.readouterr().err)
    assert line.endswith(f"{prompts}:2: the prompt is 65 characters; the encoder at {server.target} takes at most 64 "
                         "(it uses only the first 512 tokens anyway)")  # fmt: skip
    assert list(tmp_path.glob("x-*.png")) == []  # found by preflight, before the first image


def test_a_prompt_the_servers_message_limit_refuses_fails_its_job_alone_at_once(tiny_snapshot, tmp_path, capsys):
    """A server whose gRPC receive limit (4 KiB) is below what its stated prompt limit (20,000) allows: the client
    cannot know, and gRPC answers RESOURCE_EXHAUSTED as for an overloaded server; it must not be retried."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("a short one\n" + "y" * 10_000 + "\nanother short one\n")
    with fake_server(FakeEncoder(), options=[("grpc.max_receive_message_length", 4096)]) as target:
        started = time.monotonic()
        code = generate_main(
            ["--prompts", str(prompts), "--encoder", target, "--model", str(tiny_snapshot), "--quiet"]
            + ["--out", str(tmp_path / "x.png"), "--timeout", "60", *SIZE]
        )
        seconds = time.monotonic() - started
    assert code == 2  # flux2-generate's code for a request the encoder refuses
    [line] = error_lines(capsys.readouterr().err)
    assert line.startswith(f"flux2-generate: error: {prompts}:2: the request is larger than what the encoder at")
    assert "shorten the prompt" in line
    assert sorted(path.name for path in tmp_path.glob("x-*.png")) == ["x-000.png", "x-002.png"]
    assert seconds < 45, seconds  # not retried until the 60 s deadline (loading the pipeline included)


def test_a_prompts_line_over_1_mib_is_refused_without_reading_it_whole(tiny_snapshot, tmp_path):
    """A 64 MiB line is a bad line naming its number; the file is read a line at a time, so the peak memory of the
    run stays that of a run over a small file (read whole, a 64 MiB line costs about 4 copies of it)."""
    huge, small = tmp_path / "huge.jsonl", tmp_path / "small.jsonl"
    with huge.open("w") as file:
        file.write('{"prompt": "fine"}\n{"prompt": "')
        for _ in range(64):
            file.write("y" * 2**20)
        file.write('"}\n{"prompt": "fine"}\n')
    small.write_text('{"prompt": "fine"}\n{"prompt": "x", "bad": 1}\n')
    peaks, errors = {}, {}
    generate_command = [sys.executable, "-m", "diffusion_client.generation.cli", "--model", str(tiny_snapshot)]
    for prompts in (huge, small):
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        command = measured([*generate_command, "--prompts", str(prompts)])
        finished = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        peaks[prompts], stderr = peak_rss_kib(finished.stderr)
        assert finished.returncode == 2, stderr
        [errors[prompts]] = error_lines(stderr)
    assert errors[huge] == f"flux2-generate: error: {huge}:2: the line is over 1,048,576 bytes"
    assert errors[small].startswith(f"flux2-generate: error: {small}:2: unknown keys")
    grown_mib = (peaks[huge] - peaks[small]) / 1024
    assert grown_mib < 16, f"a 64 MiB line raised the peak by {grown_mib:.0f} MiB"
