"""`flux2-serve` through the official `openai` SDK and the bodies Open WebUI sends: the images are the CLI's, pixel
for pixel; replies and errors are in OpenAI's shapes; `url` images belong to their caller."""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
from PIL import Image

from diffusion_client import RemoteTextEncoder
from tests.support.cli_runs import run_cli
from tests.support.helpers import RunningServer, sample_value, start_server
from tests.support.lora_files import load_tiny_transformer, random_lora
from tests.support.serve_runs import ServeProcess, health, http, pixels, post_and_never_read, start_serve

TOKENS = (
    "alice alice-token-0123456789abcdef\nbob bob-token-0123456789abcdef\n"
    "carol carol-token-0123456789abcd max_in_flight=1\n"
)
FAST = {"seed": 7, "num_inference_steps": 3}
METRICS_TOKEN = "metrics-token-0123456789abcdef"
UPSAMPLE_TOKENS = 8


@pytest.fixture(scope="module")
def encoder(tiny_snapshot: Path) -> Iterator[RunningServer]:
    """This module's encoder server, which upsamples too (8 new tokens at most, so a rewrite takes little time)."""
    with start_server(tiny_snapshot, enable_upsampling=True, upsample_max_new_tokens=UPSAMPLE_TOKENS) as server:
        yield server


@pytest.fixture(scope="module")
def serve(
    tiny_snapshot: Path, encoder: RunningServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeProcess]:
    folder = tmp_path_factory.mktemp("serve")
    (folder / "tokens").write_text(TOKENS)
    (folder / "metrics-token").write_text(METRICS_TOKEN + "\n")
    (folder / "loras").mkdir()
    random_lora(load_tiny_transformer(tiny_snapshot), folder / "loras", seed=1).rename(
        folder / "loras" / "style.safetensors"
    )
    process = start_serve(
        tiny_snapshot,
        encoder.target,
        "--tokens-file",
        str(folder / "tokens"),
        "--metrics-token-file",
        str(folder / "metrics-token"),
        "--lora-dir",
        str(folder / "loras"),
        "--out-dir",
        str(folder / "images"),
        "--max-queue-per-caller",
        "32",
        "--name",
        "tiny-flux2",
    )
    try:
        yield process.wait_serving()
    finally:
        process.stop()


def client(serve: ServeProcess, token: str = "alice-token-0123456789abcdef", **options) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=serve.base_url, api_key=token, max_retries=0, timeout=120, **options)


def cli_image(encoder, tiny_snapshot: Path, out: Path, *flags: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    finished = run_cli(
        "a red fox",
        "--encoder",
        encoder.target,
        "--model",
        str(tiny_snapshot),
        "--out",
        str(out),
        "--height",
        "64",
        "--width",
        "64",
        "--steps",
        "3",
        "--quiet",
        *flags,
    )
    assert finished.returncode == 0, finished.stderr
    return pixels(out.read_bytes())


def reference_png(path: Path, colour: tuple[int, int, int]) -> Path:
    Image.new("RGB", (80, 64), colour).save(path)
    return path


def test_sdk_generate_gives_flux2_generate_pixels(serve, encoder, tiny_snapshot, tmp_path):
    reply = client(serve).images.generate(
        model="tiny-flux2", prompt="a red fox", size="64x64", response_format="b64_json", extra_body=FAST
    )
    assert reply.data[0].b64_json is not None
    expected = cli_image(encoder, tiny_snapshot, tmp_path / "cli.png", "--seed", "7")
    assert np.array_equal(pixels(reply.data[0].b64_json), expected)
    assert reply.size == "64x64" and reply.output_format == "png" and reply.created > 0


def test_sdk_edit_with_two_images_gives_flux2_generate_pixels(serve, encoder, tiny_snapshot, tmp_path):
    a, b = reference_png(tmp_path / "a.png", (200, 30, 30)), reference_png(tmp_path / "b.png", (30, 30, 200))
    with a.open("rb") as first, b.open("rb") as second:
        reply = client(serve).images.edit(
            model="tiny-flux2", image=[first, second], prompt="a red fox", size="64x64", extra_body=FAST
        )
    expected = cli_image(
        encoder, tiny_snapshot, tmp_path / "cli.png", "--seed", "7", "--image", str(a), "--image", str(b)
    )
    assert np.array_equal(pixels(reply.data[0].b64_json or ""), expected)


def test_n_3_gives_the_images_of_three_consecutive_seeds(serve):
    sdk = client(serve)
    three = sdk.images.generate(prompt="a red fox", size="64x64", n=3, extra_body=FAST)
    assert len(three.data) == 3
    third = sdk.images.generate(prompt="a red fox", size="64x64", extra_body={**FAST, "seed": 9})
    assert np.array_equal(pixels(three.data[2].b64_json or ""), pixels(third.data[0].b64_json or ""))
    assert not np.array_equal(pixels(three.data[0].b64_json or ""), pixels(three.data[2].b64_json or ""))


def test_a_url_reply_serves_its_bytes_to_its_caller_and_404_to_another(serve):
    reply = client(serve).images.generate(prompt="a red fox", size="64x64", response_format="url", extra_body=FAST)
    url = reply.data[0].url or ""
    path = url.removeprefix(f"http://127.0.0.1:{serve.port}")
    assert path.startswith("/v1/images/files/") and len(path.rsplit("/", 1)[1]) >= 43
    status, headers, body = http(serve.port, path, headers={"Authorization": "Bearer alice-token-0123456789abcdef"})
    assert status == 200 and headers["content-type"] == "image/png"
    assert pixels(body).shape == (64, 64, 3)
    status, _, body = http(serve.port, path, headers={"Authorization": "Bearer bob-token-0123456789abcdef"})
    assert status == 404 and json.loads(body)["error"]["code"] == "image_not_found"


def test_open_webui_generation_body_is_answered_in_b64_json(serve):
    # What Open WebUI's images router posts to {base}/images/generations for the OpenAI engine.
    body = {"model": "tiny-flux2", "prompt": "a red fox", "n": 1, "size": "64x64", "response_format": "b64_json"}
    status, headers, raw = http(
        serve.port, "/v1/images/generations", body, {"Authorization": "Bearer alice-token-0123456789abcdef"}
    )
    assert status == 200 and headers["content-type"] == "application/json"
    reply = json.loads(raw)
    assert set(reply) >= {"created", "data"} and pixels(reply["data"][0]["b64_json"]).shape == (64, 64, 3)


def test_open_webui_multipart_edit_is_answered(serve, tmp_path):
    # Open WebUI's edit: multipart with `image` parts (one per picture), model, prompt, n, size.
    data = reference_png(tmp_path / "a.png", (10, 200, 10)).read_bytes()
    boundary = "openwebui-boundary"
    parts = []
    for name, value in (("model", "tiny-flux2"), ("prompt", "a red fox"), ("n", "1"), ("size", "64x64")):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    headers = {
        "Authorization": "Bearer alice-token-0123456789abcdef",
        "Content-Type": f"multipart/form-data; boundary={boundary}",
    }
    status, _, raw = http(serve.port, "/v1/images/edits", body, headers)
    assert status == 200, raw
    assert pixels(json.loads(raw)["data"][0]["b64_json"]).shape == (64, 64, 3)


def test_a_stream_sends_every_step_the_partial_images_and_the_same_final_image(serve):
    sdk = client(serve)
    plain = sdk.images.generate(prompt="a red fox", size="64x64", extra_body={**FAST, "num_inference_steps": 4})
    stream = sdk.images.generate(
        prompt="a red fox", size="64x64", stream=True, partial_images=2, extra_body={**FAST, "num_inference_steps": 4}
    )
    events = list(stream)
    kinds = [event.type for event in events]
    assert kinds.count("image_generation.partial_image") == 2
    assert kinds.count("image_generation.step") == 4 and kinds[-1] == "image_generation.completed"
    partials = [event for event in events if event.type == "image_generation.partial_image"]
    assert [event.partial_image_index for event in partials] == [0, 1]
    assert pixels(partials[0].b64_json).shape == (64, 64, 3)
    assert np.array_equal(pixels(events[-1].b64_json), pixels(plain.data[0].b64_json or ""))


def lora_folder(serve: ServeProcess) -> Path:
    arguments = list(serve.process.args)  # type: ignore[arg-type]
    return Path(arguments[arguments.index("--lora-dir") + 1])


def test_a_lora_named_from_lora_dir_gives_flux2_generate_lora_pixels(serve, encoder, tiny_snapshot, tmp_path):
    lora = {"loras": [{"name": "style.safetensors", "scale": 0.8}]}
    reply = client(serve).images.generate(prompt="a red fox", size="64x64", extra_body={**FAST, **lora})
    folder = lora_folder(serve)
    expected = cli_image(
        encoder, tiny_snapshot, tmp_path / "cli.png", "--seed", "7", "--lora", f"{folder}/style.safetensors:0.8"
    )
    assert np.array_equal(pixels(reply.data[0].b64_json or ""), expected)


def test_a_lora_the_folder_does_not_offer_is_a_400_naming_only_names(serve):
    with pytest.raises(openai.BadRequestError) as raised:
        client(serve).images.generate(prompt="x", size="64x64", extra_body={"loras": [{"name": "../tokens"}]})
    assert raised.value.body["param"] == "loras"  # type: ignore[index]
    assert str(lora_folder(serve)) not in raised.value.message


def test_a_negative_prompt_for_a_guidance_distilled_model_is_a_400(serve):
    with pytest.raises(openai.BadRequestError) as raised:
        client(serve).images.generate(prompt="x", size="64x64", extra_body={"negative_prompt": "blurry"})
    assert raised.value.body["code"] == "unsupported_parameter"  # type: ignore[index]


def test_upsample_answers_the_encoders_rewrite_as_revised_prompt_and_flux2_generate_upsample_pixels(
    serve, encoder, tiny_snapshot, tmp_path
):
    reply = client(serve).images.generate(prompt="a red fox", size="64x64", extra_body={**FAST, "upsample": True})
    with RemoteTextEncoder(encoder.target) as remote:
        rewrite = remote.upsample("a red fox", seed=7, max_new_tokens=UPSAMPLE_TOKENS)[0]
    assert reply.data[0].revised_prompt == rewrite and rewrite != "a red fox"
    expected = cli_image(encoder, tiny_snapshot, tmp_path / "cli.png", "--seed", "7", "--upsample")
    np.testing.assert_array_equal(pixels(reply.data[0].b64_json), expected)


def test_metrics_count_requests_and_images_by_caller_only_behind_the_metrics_token(serve):
    client(serve, token="bob-token-0123456789abcdef").images.generate(prompt="x", size="64x64", extra_body=FAST)
    status, _, _ = http(serve.port, "/metrics")
    assert status == 401
    status, _, body = http(serve.port, "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    text = body.decode()
    assert status == 200 and (sample_value(text, "flux2_serve_images_total", {"caller": "bob"}) or 0) >= 1
    bobs = {"caller": "bob", "endpoint": "generations", "status": "200"}
    assert (sample_value(text, "flux2_serve_requests_total", bobs) or 0) >= 1
    assert "flux2_serve_queue_length" in text and "a red fox" not in text


def test_models_lists_the_served_model(serve):
    models = client(serve).models.list()
    assert [model.id for model in models.data] == ["tiny-flux2"]
    assert models.data[0].model_extra == {"loras": ["style.safetensors"]}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"sede": 7}, "sede"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"guidance_scale": -1}, "guidance_scale"),
        ({"mask": "x"}, "mask"),
        ({"quality": "hd"}, "quality"),
        ({"size": "65x64"}, "size"),
    ],
)
def test_a_bad_field_is_a_400_naming_it_and_the_sdk_raises_bad_request(serve, extra, param):
    body = {"prompt": "a red fox", "size": "64x64", **extra}
    with pytest.raises(openai.BadRequestError) as raised:
        client(serve).post("/images/generations", body=body, cast_to=object)
    assert raised.value.status_code == 400
    assert raised.value.body["param"] == param  # type: ignore[index]


def test_a_wrong_token_is_a_401_authentication_error(serve):
    with pytest.raises(openai.AuthenticationError) as raised:
        client(serve, token="not-a-token").images.generate(prompt="a red fox", size="64x64")
    assert "bearer token" in raised.value.message


def test_an_unknown_model_is_a_404_not_found_error(serve):
    with pytest.raises(openai.NotFoundError) as raised:
        client(serve).images.generate(model="dall-e-3", prompt="a red fox", size="64x64")
    assert raised.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_a_caller_over_its_in_flight_limit_gets_429_with_retry_after(serve):
    carol = client(serve, token="carol-token-0123456789abcd")
    stream = carol.images.generate(
        prompt="a red fox", size="64x64", stream=True, extra_body={"seed": 1, "num_inference_steps": 40}
    )
    first = next(iter(stream))  # carol's one place is held while this stream is open
    assert first.type in ("image_generation.step", "image_generation.partial_image")
    with pytest.raises(openai.RateLimitError) as raised:
        carol.images.generate(prompt="a red fox", size="64x64", extra_body=FAST)
    assert raised.value.response.headers.get("retry-after")
    stream.close()


def test_a_token_in_the_query_string_is_refused(serve):
    status, _, raw = http(serve.port, "/v1/images/generations?api_key=alice-token-0123456789abcdef", {"prompt": "x"})
    assert status == 400 and json.loads(raw)["error"]["code"] == "query_not_allowed"


def test_callers_are_served_round_robin(serve):
    """Alice's long image holds the GPU while her 19 short ones queue; Bob's one then comes before Alice's last 18
    (the long one first, at most one short one of hers, then his)."""
    alice, bob = client(serve), client(serve, token="bob-token-0123456789abcdef")
    finished: list[tuple[str, float]] = []

    def make(sdk: openai.OpenAI, who: str, size: str, seed: int, steps: int) -> None:
        sdk.images.generate(prompt="a red fox", size=size, extra_body={"seed": seed, "num_inference_steps": steps})  # type: ignore[arg-type]
        finished.append((who, time.monotonic()))

    def wait_for(what: str, condition: Callable[[dict], bool]) -> None:  # type: ignore[type-arg]
        deadline = time.monotonic() + 60
        while not condition(health(serve.port)[1]):
            assert time.monotonic() < deadline, what
            time.sleep(0.02)

    threads = [threading.Thread(target=make, args=(alice, "alice", "512x512", 0, 100))]
    threads[0].start()
    wait_for("alice's long image never started", lambda state: state.get("busy"))
    threads += [threading.Thread(target=make, args=(alice, "alice", "64x64", seed, 2)) for seed in range(1, 20)]
    for thread in threads[1:]:
        thread.start()
    wait_for("alice's short requests never queued", lambda state: state.get("queue", 0) >= 19)
    threads.append(threading.Thread(target=make, args=(bob, "bob", "64x64", 99, 2)))
    threads[-1].start()
    for thread in threads:
        thread.join(180)
    order = [who for who, _ in sorted(finished, key=lambda item: item[1])]
    assert len(order) == 21
    assert order.index("bob") <= len(order) - 1 - 18, order  # alice's last 18 all come after bob's


def scrape_metrics(serve: ServeProcess) -> str:
    return http(serve.port, "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})[2].decode()


def bobs(metrics: str, name: str, status: str | None = None) -> float:
    labels = {"caller": "bob"} if status is None else {"caller": "bob", "endpoint": "generations", "status": status}
    return sample_value(metrics, name, labels) or 0


def hang_up_mid_job(serve: ServeProcess, body: dict) -> None:  # type: ignore[type-arg]
    """Bob asks for a 100-step 512² image, hangs up once it runs, and the server finishes with it (120 s at most)."""
    with post_and_never_read(serve.port, body, token="bob-token-0123456789abcdef"):
        deadline = time.monotonic() + 60
        while not health(serve.port)[1].get("busy"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    deadline = time.monotonic() + 120
    while health(serve.port)[1].get("busy"):
        assert time.monotonic() < deadline, "the job of a caller that left kept running"
        time.sleep(0.05)


LONG_JOB = {"prompt": "a red fox", "size": "512x512", "seed": 3, "num_inference_steps": 100}


def test_a_caller_that_hangs_up_has_its_job_stopped(serve):
    """The job ends cancelled (a 499 in the metrics), not as an image: checked by outcome, not by a clock, since
    one step's time depends on how loaded the machine is."""
    before = scrape_metrics(serve)
    hang_up_mid_job(serve, LONG_JOB)
    after = scrape_metrics(serve)
    assert bobs(after, "flux2_serve_requests_total", "499") == bobs(before, "flux2_serve_requests_total", "499") + 1
    assert bobs(after, "flux2_serve_images_total") == bobs(before, "flux2_serve_images_total")
    reply = client(serve).images.generate(prompt="a red fox", size="64x64", extra_body=FAST)  # still serving
    assert reply.data[0].b64_json


def test_a_streaming_caller_that_hangs_up_has_its_job_stopped(serve):
    before = scrape_metrics(serve)
    hang_up_mid_job(serve, {**LONG_JOB, "stream": True})
    assert bobs(scrape_metrics(serve), "flux2_serve_images_total") == bobs(before, "flux2_serve_images_total")
    reply = client(serve).images.generate(prompt="a red fox", size="64x64", extra_body=FAST)  # still serving
    assert reply.data[0].b64_json


def test_the_sdk_sees_a_real_png(serve):
    reply = client(serve).images.generate(prompt="a red fox", size="64x64", output_format="jpeg", extra_body=FAST)
    data = io.BytesIO(__import__("base64").b64decode(reply.data[0].b64_json or ""))
    assert Image.open(data).format == "JPEG" and reply.output_format == "jpeg"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
