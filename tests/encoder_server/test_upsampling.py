"""Upsample over gRPC: the same text as diffusers' `Flux2Pipeline.upsample_prompt`, beside encoding, bad input refused.

The tiny model has random weights, so a rewritten prompt is gibberish, but it is the same gibberish as diffusers'
for the same seed, which is what pins the system messages, image handling, chat template and sampling settings.
"""

from __future__ import annotations

import io
import statistics
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from encoder_server.model.upsampler import UpsampleRequest
from shared.protocol import encoder_pb2
from tests.support.helpers import TINY_EMBED_DIM, RunningServer, start_server

PROMPTS = ["a red fox", "a lighthouse at dusk"]
SEED = 7


@pytest.fixture(scope="module")
def upsampling_server(tiny_snapshot: Path) -> Iterator[RunningServer]:
    with start_server(tiny_snapshot, enable_upsampling=True, max_queued_prompts=64) as server:
        yield server


def _png(width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _request(
    prompts: list[str], images: list[list[bytes]] | None = None, **fields: object
) -> encoder_pb2.UpsampleRequest:
    images = images or [[] for _ in prompts]
    items = [encoder_pb2.UpsamplePrompt(prompt=p, images=i) for p, i in zip(prompts, images, strict=True)]
    return encoder_pb2.UpsampleRequest(prompts=items, **fields)  # type: ignore[arg-type]


def _diffusers(reference_pipeline, prompts: list[str], images=None) -> list[str]:  # type: ignore[no-untyped-def]
    torch.manual_seed(SEED)
    return list(reference_pipeline.upsample_prompt(prompts, images=images, temperature=0.15))


def test_batch_of_prompts_is_rewritten_as_diffusers_rewrites_it(upsampling_server, reference_pipeline):
    """A text prompt alone takes the same path as a batch of one (diffusers pads every prompt to 2048 tokens and
    samples 512 more), so the batch stands for it; a prompt alone is compared with its images below."""
    reply = upsampling_server.stub.Upsample(_request(PROMPTS, seed=SEED), timeout=300)
    assert len(reply.prompts) == 2
    assert list(reply.prompts) == _diffusers(reference_pipeline, PROMPTS)


def test_prompt_with_two_reference_images_is_rewritten_as_diffusers_rewrites_it(upsampling_server, reference_pipeline):
    files = [_png(64, 48, 0), _png(40, 72, 1)]
    reply = upsampling_server.stub.Upsample(_request(["make it blue"], [files], seed=SEED), timeout=300)
    images = [[Image.open(io.BytesIO(data)).convert("RGB") for data in files]]
    assert list(reply.prompts) == _diffusers(reference_pipeline, ["make it blue"], images)


def test_encoding_is_bitwise_unchanged_with_upsampling_enabled(upsampling_server, encoder_server):
    for layers in ([10, 20, 30], [34, 1]):
        assert torch.equal(
            upsampling_server.encode(PROMPTS, hidden_state_layers=layers),
            encoder_server.encode(PROMPTS, hidden_state_layers=layers),
        )


def test_encoding_keeps_flowing_while_an_upsample_runs(upsampling_server):
    def encode_ms() -> tuple[float, torch.Tensor]:
        started = time.perf_counter()
        embeds = upsampling_server.encode(["a quiet harbor"])
        return (time.perf_counter() - started) * 1000, embeds

    idle = [encode_ms() for _ in range(5)]
    finished = threading.Event()
    upsampling = threading.Thread(
        target=lambda: (upsampling_server.stub.Upsample(_request(PROMPTS, seed=1), timeout=300), finished.set())
    )
    upsampling.start()
    time.sleep(0.5)  # inside the prefill: two prompts padded to 2,048 tokens take seconds here
    busy = [encode_ms() for _ in range(5)]
    assert not finished.is_set(), "the upsample ended before encoding was measured beside it"
    upsampling.join(300)
    idle_ms, busy_ms = statistics.median(ms for ms, _ in idle), statistics.median(ms for ms, _ in busy)
    assert busy_ms <= 6 * idle_ms + 50, (idle_ms, busy_ms)  # two CPU cores shared with generation
    assert all(torch.equal(embeds, idle[0][1]) for _, embeds in idle + busy)


def test_get_info_states_upsampling_and_its_limits(upsampling_server, encoder_server):
    info = upsampling_server.stub.GetInfo(encoder_pb2.GetInfoRequest(), timeout=10)
    assert info.upsampling_available and (info.max_upsample_prompts, info.max_upsample_images) == (8, 8)
    assert (info.max_upsample_image_bytes, info.max_upsample_image_pixels) == (8 * 2**20, 4096 * 4096)
    assert info.max_new_tokens == 1024 and info.max_layer == info.num_layers == 34
    assert not encoder_server.stub.GetInfo(encoder_pb2.GetInfoRequest(), timeout=10).upsampling_available


def test_upsample_without_the_flag_is_refused_naming_it(encoder_server):
    with pytest.raises(grpc.RpcError) as error:
        encoder_server.stub.Upsample(_request(PROMPTS[:1]), timeout=10)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--enable-upsampling" in error.value.details()


def _png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header that claims `width` x `height` pixels, with almost no data behind it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


SHAPE_LIMITS = "send images of at least 32 px a side and an aspect ratio of at most 50:1"
BAD_REQUESTS = {
    "no-prompts": (_request([]), "0 prompts given; send 1 to 8"),
    "too-many-prompts": (_request(["x"] * 9), "9 prompts given"),
    "zero-temperature": (_request(["x"], temperature=0.0), "temperature 0 is out of range"),
    "tiny-temperature": (_request(["x"], temperature=1e-45), "use a number between 0.01 and 2"),
    "negative-temperature": (_request(["x"], temperature=-1.0), "temperature -1 is out of range"),
    "nan-temperature": (_request(["x"], temperature=float("nan")), "temperature nan is out of range"),
    "infinite-temperature": (_request(["x"], temperature=float("inf")), "temperature inf is out of range"),
    "absurd-temperature": (_request(["x"], temperature=50.0), "temperature 50 is out of range"),
    "zero-new-tokens": (_request(["x"], max_new_tokens=0), "max_new_tokens 0 is out of range; use 1 to 1024"),
    "too-many-new-tokens": (_request(["x"], max_new_tokens=5000), "max_new_tokens 5000 is out of range"),
    "not-an-image": (_request(["x"], [[b"definitely not a png"]]), "image 0 of prompt 0 is not a PNG, JPEG or WebP"),
    "too-many-images": (_request(["x"], [[_png(8, 8, 0)] * 9]), "9 reference images in one request; the limit is 8"),
    "bomb-20000-squared": (_request(["x"], [[_png_claiming(20000, 20000)]]), "the limit is 16,777,216 pixels"),
    "over-the-pixel-cap": (_request(["x"], [[_png_claiming(5000, 5000)]]), "claims 5000x5000 pixels"),
    "1x20000": (_request(["x"], [[_png_claiming(1, 20000)]]), f"is 1x20000 pixels; {SHAPE_LIMITS}"),
    "3-pixels-wide": (_request(["x"], [[_png(3, 64, 0)]]), f"is 3x64 pixels; {SHAPE_LIMITS}"),
    "51-to-1": (_request(["x"], [[_png_claiming(40, 2040)]]), f"is 40x2040 pixels; {SHAPE_LIMITS}"),
    "mixed-images": (_request(["x", "y"], [[_png(8, 8, 0)], []]), "send those in separate Upsample requests"),
    "damaged-image": (_request(["x"], [[_png(32, 32, 0)[:-40]]]), "could not be decoded"),
}


@pytest.mark.parametrize("request_,message", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_upsample_request_is_invalid_argument_and_the_server_keeps_serving(upsampling_server, request_, message):
    with pytest.raises(grpc.RpcError) as error:
        upsampling_server.stub.Upsample(request_, timeout=60)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.value.details()
    assert upsampling_server.encode(["still serving"]).shape == (1, 512, TINY_EMBED_DIM)


def test_tiny_temperature_is_refused_naming_the_minimum(upsampling_server):
    """1e-45 passed `> 0` once and then failed inside sampling ("probability tensor contains inf") as INTERNAL."""
    with pytest.raises(grpc.RpcError) as error:
        upsampling_server.stub.Upsample(_request(["x"], temperature=1e-45, max_new_tokens=4), timeout=60)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == (
        "temperature 1.4013e-45 is out of range; use a number between 0.01 and 2 (0.15 is recommended)"
    )


def test_the_minimum_temperature_still_samples(upsampling_server):
    """0.01 arrives as the float32 0.0099999998 and is taken as the minimum it is."""
    reply = upsampling_server.stub.Upsample(_request(["a red fox"], temperature=0.01, max_new_tokens=4), timeout=300)
    assert len(reply.prompts) == 1 and reply.prompts[0]


def test_images_just_inside_the_shape_limits_are_rewritten(upsampling_server):
    """32 px a side and 50:1 (both ways) pass Pixtral's processing; each prompt's image is processed alone."""
    images = [[_png(32, 32, 0)], [_png(32, 1600, 1)], [_png(1600, 32, 2)]]
    reply = upsampling_server.stub.Upsample(_request(["edit"] * 3, images, seed=SEED, max_new_tokens=2), timeout=300)
    assert len(reply.prompts) == 3


def test_image_over_the_byte_limit_is_refused(tiny_snapshot):
    with start_server(tiny_snapshot, enable_upsampling=True, upsample_max_image_bytes=1024) as server:
        with pytest.raises(grpc.RpcError) as error:
            server.stub.Upsample(_request(["x"], [[_png(64, 64, 0)]]), timeout=60)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the limit is 1,024 bytes per image" in error.value.details()


def test_generation_stops_once_its_caller_has_gone(upsampling_server):
    """The engine passes the caller's cancellation to the generation as a stopping criterion."""
    upsampler = upsampling_server.handle.engine.upsampler
    request = UpsampleRequest(prompts=("a red fox", "a lighthouse"), images=((), ()), max_new_tokens=512, seed=1)
    rewritten = upsampler.upsample(request, cancelled=lambda: True)
    assert len(rewritten) == 2
    tokenizer = upsampler.tokenizer
    assert all(len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= 2 for text in rewritten)
