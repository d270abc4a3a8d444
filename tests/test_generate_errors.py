"""Every failure of `flux2-generate` exits non-zero with one readable line and no traceback."""

from __future__ import annotations

import socket
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from diffusion_client.cli import main as generate_main
from shared.tiny_snapshot import TinySnapshotShape, build_tiny_snapshot
from tests.cli_runs import assert_one_line_error, free_port, run_cli
from tests.fake_encoder import FakeEncoder, embeds_for, fake_server
from tests.helpers import TINY_EMBED_DIM, TINY_HIDDEN_SIZE, start_server

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
        f"127.0.0.1:{free_port()}",
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
        f"127.0.0.1:{free_port()}",
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
