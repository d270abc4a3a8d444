"""`flux2-generate --upsample`: each prompt rewritten on the server, the image made from the rewrite, both recorded."""

from __future__ import annotations

import dataclasses
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffusion_client import RemoteTextEncoder
from diffusion_client.errors import InputError, printable_line
from diffusion_client.generation.cli import main as generate_main
from tests.support.cli_runs import assert_one_line_error
from tests.support.fake_encoder import TINY_UPSAMPLING_INFO, FakeEncoder, embeds_for, fake_server
from tests.support.helpers import start_server

SIZE = ["--height", "64", "--width", "64", "--steps", "2"]
TOKENS = 12  # the server's --max-new-tokens below: the CLI asks for 512 or the server's limit if lower


@pytest.fixture(scope="module")
def upsampling_server(tiny_snapshot):  # type: ignore[no-untyped-def]
    with start_server(tiny_snapshot, enable_upsampling=True, upsample_max_new_tokens=TOKENS) as server:
        yield server


def generate(target: str, snapshot: Path, *args: str) -> int:
    return generate_main(["--encoder", target, "--model", str(snapshot), "--quiet", *SIZE, *args])


def png_text(path: Path) -> dict[str, str]:
    with Image.open(path) as image:
        return dict(image.text)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def noise_image(path: Path, size: tuple[int, int] = (64, 64), seed: int = 0) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


def upsampled_lines(stdout: str) -> list[str]:
    return [line.removeprefix("upsampled: ") for line in stdout.splitlines() if line.startswith("upsampled: ")]


def test_upsample_prints_the_rewrite_and_records_both_prompts_in_the_png(
    upsampling_server, tiny_snapshot, tmp_path, capsys
):
    out = tmp_path / "fox.png"
    assert (
        generate(upsampling_server.target, tiny_snapshot, "a red fox", "--upsample", "--seed", "5", "--out", str(out))
        == 0
    )
    with RemoteTextEncoder(upsampling_server.target) as encoder:
        rewrite = encoder.upsample("a red fox", seed=5, max_new_tokens=TOKENS)[0]  # the job's seed seeds upsampling
    text = png_text(out)
    assert rewrite != "a red fox"
    assert (text["prompt"], text["original_prompt"]) == (rewrite, "a red fox")
    assert (text["upsample_temperature"], text["upsample_max_new_tokens"], text["seed"]) == ("0.15", str(TOKENS), "5")
    assert json.loads(text["flux2-split"])["original_prompt"] == "a red fox"
    (printed,) = upsampled_lines(capsys.readouterr().out)
    assert printed.isprintable() and printed == printable_line(rewrite, len(rewrite))  # one line, not shortened


def test_upsampled_image_is_the_image_of_the_rewritten_prompt(upsampling_server, tiny_snapshot, tmp_path):
    upsampled, direct = tmp_path / "upsampled.png", tmp_path / "direct.png"
    flags = ["--seed", "2", "--upsample-temperature", "0.7"]
    assert (
        generate(upsampling_server.target, tiny_snapshot, "a tin robot", "--upsample", *flags, "--out", str(upsampled))
        == 0
    )
    rewrite = png_text(upsampled)["prompt"]
    prompts = tmp_path / "direct.jsonl"  # a file, so a rewrite starting with "-" is not read as a flag
    prompts.write_text(json.dumps({"prompt": rewrite, "out": str(direct)}) + "\n")
    assert generate(upsampling_server.target, tiny_snapshot, "--prompts", str(prompts), *flags) == 0
    assert png_text(upsampled)["upsample_temperature"] == "0.7"
    np.testing.assert_array_equal(pixels(upsampled), pixels(direct))


def test_upsample_sends_each_jobs_reference_files_and_encodes_the_rewrite(tiny_snapshot, tmp_path, capsys):
    reference = noise_image(tmp_path / "ref.jpg", (64, 80))
    prompts = tmp_path / "p.jsonl"
    lines = [
        {"prompt": "make it blue", "images": [str(reference)], "upsample": True, "upsample_temperature": 0.3},
        {"prompt": "an owl", "upsample": False},
    ]
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    encoded: list[str] = []

    def recording(request, _context):  # type: ignore[no-untyped-def]
        encoded.extend(request.prompts)
        return embeds_for(request)

    servicer = FakeEncoder(recording, info=TINY_UPSAMPLING_INFO)
    with fake_server(servicer) as target:
        assert (
            generate(target, tiny_snapshot, "--prompts", str(prompts), "--out", str(tmp_path / "b.png"), "--seed", "4")
            == 0
        )
    (request,) = servicer.upsample_requests
    assert [item.prompt for item in request.prompts] == ["make it blue"]
    assert list(request.prompts[0].images) == [reference.read_bytes()]  # the file as it is, not re-encoded
    assert (request.seed, request.max_new_tokens, round(request.temperature, 6)) == (4, 512, 0.3)
    assert sorted(encoded) == ["an owl", "make it blue (upsampled)"]
    assert upsampled_lines(capsys.readouterr().out) == ["make it blue (upsampled)"]
    assert "original_prompt" not in png_text(tmp_path / "b-001.png")


def test_upsample_against_a_server_without_upsampling_exits_2_before_loading_weights(
    encoder_server, tiny_snapshot, tmp_path, capsys, monkeypatch
):
    def must_not_load(*args: object) -> None:
        raise AssertionError("weights loaded before the encoder was checked")

    monkeypatch.setattr("diffusion_client.generation.pipeline.load_pipeline", must_not_load)
    code = generate(encoder_server.target, tiny_snapshot, "a cat", "--upsample", "--out", str(tmp_path / "x.png"))
    assert code == 2
    assert_one_line_error(
        capsys.readouterr().err, f"the encoder at {encoder_server.target} does not offer it", "--enable-upsampling"
    )
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    "limits,message",
    [
        ({"max_upsample_images": 1}, "2 reference images to upsample with; the encoder takes at most 1"),
        ({"max_upsample_image_bytes": 100}, "bytes; the encoder takes at most 100 bytes per image"),
        ({"max_upsample_image_pixels": 4000}, "claims 64x64 pixels; the encoder takes at most 4,000 pixels"),
    ],
    ids=["count", "bytes", "pixels"],
)
def test_upsample_references_over_the_servers_limits_exit_2_before_any_call(
    tiny_snapshot, tmp_path, capsys, monkeypatch, limits, message
):
    monkeypatch.setattr(
        "diffusion_client.generation.pipeline.load_pipeline", lambda *args: pytest.fail("weights loaded")
    )
    references = []
    for seed, name in enumerate(("a.png", "b.png")):
        noise_image(tmp_path / name, seed=seed)
        references += ["--image", str(tmp_path / name)]
    servicer = FakeEncoder(info=dataclasses.replace(TINY_UPSAMPLING_INFO, **limits))
    with fake_server(servicer) as target:
        code = generate(target, tiny_snapshot, "edit", "--upsample", *references, "--out", str(tmp_path / "x.png"))
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, message)
    assert servicer.upsample_requests == [] and servicer.calls == 0


@pytest.mark.parametrize("value", ["nan", "0", "1e-45", "0.009", "3", "warm"])
def test_upsample_temperature_flag_out_of_range_exits_2_in_one_line(tiny_snapshot, capsys, value):
    code = generate_main(["a cat", "--model", str(tiny_snapshot), "--upsample", f"--upsample-temperature={value}"])
    assert code == 2
    assert_one_line_error(
        capsys.readouterr().err, "argument --upsample-temperature: must be a number between 0.01 and 2"
    )


@pytest.mark.parametrize(
    "line,message",
    [
        ('{"prompt": "x", "upsample": "yes"}', "p.jsonl:1: 'upsample' must be true or false, not \"yes\""),
        ('{"prompt": "x", "upsample_temperature": "hot"}', "p.jsonl:1: 'upsample_temperature' must be a finite number"),
        ('{"prompt": "x", "upsample_temperature": 0}', "p.jsonl:1: upsample temperature must be a number between"),
    ],
    ids=["upsample-text", "temperature-text", "temperature-zero"],
)
def test_jsonl_upsample_settings_of_the_wrong_kind_exit_2_naming_the_line(
    encoder_server, tiny_snapshot, tmp_path, capsys, line, message
):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(line + "\n")
    assert generate(encoder_server.target, tiny_snapshot, "--prompts", str(prompts)) == 2
    assert_one_line_error(capsys.readouterr().err, message)


def test_tiny_upsample_temperature_is_refused_before_sending_naming_the_minimum():
    servicer = FakeEncoder(info=TINY_UPSAMPLING_INFO)
    with fake_server(servicer) as target, RemoteTextEncoder(target) as encoder:
        with pytest.raises(InputError) as error:
            encoder.upsample("a cat", temperature=1e-45)
    assert str(error.value) == (
        "upsample temperature must be a number between 0.01 and 2 (0.15 is recommended), not 1e-45"
    )
    assert servicer.upsample_requests == []


def header_only_png(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` RGB pixels, with a one-byte image stream."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "size", [(1, 20000), (3, 64), (64, 3), (40, 2040)], ids=["1x20000", "3-wide", "3-tall", "51-to-1"]
)
def test_reference_image_of_a_shape_upsampling_cannot_process_is_refused_before_sending(tmp_path, size):
    reference = tmp_path / "strip.png"
    reference.write_bytes(header_only_png(*size))
    servicer = FakeEncoder(info=TINY_UPSAMPLING_INFO)
    with fake_server(servicer) as target, RemoteTextEncoder(target) as encoder:
        with pytest.raises(InputError) as error:
            encoder.upsample("edit", [[reference]])
    assert str(error.value) == (
        f"reference image {reference} is {size[0]}x{size[1]} pixels; upsampling takes images of at least 32 px a "
        "side and an aspect ratio of at most 50:1, so pad or crop it first"
    )
    assert servicer.upsample_requests == []


def test_reference_images_just_inside_the_shape_limits_are_sent(tmp_path):
    references = [noise_image(tmp_path / "square.png", (32, 32)), noise_image(tmp_path / "strip.png", (32, 1600))]
    servicer = FakeEncoder(info=TINY_UPSAMPLING_INFO)
    with fake_server(servicer) as target, RemoteTextEncoder(target) as encoder:
        assert encoder.upsample("edit", [references]) == ["edit (upsampled)"]
    (request,) = servicer.upsample_requests
    assert list(request.prompts[0].images) == [path.read_bytes() for path in references]
