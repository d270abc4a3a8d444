"""One server, several models: FLUX.2-dev and FLUX.2 [klein] side by side, each request routed by its model name."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import requests
import torch

from encoder_server.cli import main as encoder_main
from encoder_server.config import ConfigError, ModelConfig, ServerConfig, parse_model_option
from encoder_server.errors import NotEnabledError
from encoder_server.model.prompt_encoder import PromptEncoder
from encoder_server.model.request import EncodeRequest
from encoder_server.model.upsampler import UpsampleRequest
from encoder_server.server import create_server, ready_line
from encoder_server.serving.forward_lock import forward_lock
from encoder_server.serving.models import ServedEngines
from shared.protocol import encoder_pb2
from shared.server_info import ServerInfo
from tests.support.cli_runs import serve_encoder
from tests.support.helpers import RunningServer, encode_model_via, sample_value, start_models_server

DEV, KLEIN = "dev", "klein"


@pytest.fixture(scope="module")
def two_models(tiny_snapshot: Path, tiny_klein_snapshot: Path) -> Iterator[RunningServer]:
    models = (
        ModelConfig(tiny_snapshot, device="cpu", name=DEV),
        ModelConfig(tiny_klein_snapshot, device="cpu", name=KLEIN),
    )
    with start_models_server(models, http_port=0, batch_wait_ms=50) as server:
        yield server


def get_info(server: RunningServer, model: str | None = None) -> ServerInfo:
    return ServerInfo.from_pb(server.stub.GetInfo(encoder_pb2.GetInfoRequest(model=model), timeout=30))


def test_each_model_matches_its_own_diffusers_function_bitwise(two_models, diffusers_embeds, klein_diffusers_embeds):
    prompts = ["a fox in the snow", "雪の中の狐", ""]

    dev = encode_model_via(two_models.stub, prompts, DEV)
    klein = encode_model_via(two_models.stub, prompts, KLEIN, hidden_state_layers=[3, 27])

    assert torch.equal(dev, diffusers_embeds(prompts))
    assert torch.equal(klein, klein_diffusers_embeds(prompts, layers=(3, 27)))


def test_a_request_naming_no_model_gets_the_first(two_models, diffusers_embeds):
    embeds = encode_model_via(two_models.stub, ["an owl"], None)

    assert torch.equal(embeds, diffusers_embeds(["an owl"]))
    assert get_info(two_models).model_name == DEV


def test_get_info_lists_every_model_and_describes_the_one_asked_for(two_models, tiny_snapshot, tiny_klein_snapshot):
    default, dev, klein = get_info(two_models), get_info(two_models, DEV), get_info(two_models, KLEIN)

    assert [model.name for model in default.models] == [DEV, KLEIN]  # the first is the default
    assert default == dev and dev.models == klein.models
    assert (dev.model_name, dev.family, dev.pipeline, dev.default_hidden_state_layers) == (
        DEV,
        "mistral3",
        "Flux2Pipeline",
        (10, 20, 30),
    )
    assert (klein.model_name, klein.family, klein.pipeline, klein.default_hidden_state_layers) == (
        KLEIN,
        "qwen3",
        "Flux2KleinPipeline",
        (9, 18, 27),
    )
    assert dev.model_path == str(tiny_snapshot.resolve()) and klein.model_path == str(tiny_klein_snapshot.resolve())
    assert klein.served() == klein.models[1] and dev.served() == dev.models[0]
    assert dev.fingerprint != klein.fingerprint


@pytest.mark.parametrize("rpc", ["Encode", "GetInfo", "Upsample"])
def test_an_unknown_model_is_not_found_listing_the_served_names(two_models, rpc):
    stub = two_models.stub
    calls = {
        "Encode": lambda: list(stub.Encode(encoder_pb2.EncodeRequest(prompts=["a"], model="FLUX.2-pro"), timeout=30)),
        "GetInfo": lambda: stub.GetInfo(encoder_pb2.GetInfoRequest(model="FLUX.2-pro"), timeout=30),
        "Upsample": lambda: stub.Upsample(
            encoder_pb2.UpsampleRequest(prompts=[encoder_pb2.UpsamplePrompt(prompt="a")], model="FLUX.2-pro"),
            timeout=30,
        ),
    }
    with pytest.raises(grpc.RpcError) as refused:
        calls[rpc]()

    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no model named 'FLUX.2-pro'; it serves dev, klein" in refused.value.details()


def test_predict_picks_the_model_by_query_and_an_unknown_one_is_404(
    two_models, diffusers_embeds, klein_diffusers_embeds
):
    url = f"http://127.0.0.1:{two_models.handle.http_port}/predict"

    def predict(query: str) -> requests.Response:
        return requests.post(url + query, json={"prompt": ["a heron"]}, timeout=60)

    queries = ("", "?model=klein")
    embeds = {query: torch.load(io.BytesIO(predict(query).content), weights_only=True) for query in queries}
    missing = predict("?model=FLUX.2-pro")

    assert torch.equal(embeds[""], diffusers_embeds(["a heron"]))
    assert torch.equal(embeds["?model=klein"], klein_diffusers_embeds(["a heron"]))
    assert missing.status_code == 404
    assert "no model named 'FLUX.2-pro'; it serves dev, klein" in missing.json()["error"]


def test_dev_and_klein_clients_running_at_once_each_get_their_own_prompts(
    two_models, diffusers_embeds, klein_diffusers_embeds
):
    expected = {DEV: diffusers_embeds, KLEIN: klein_diffusers_embeds}
    calls = [(model, f"client {client} of {model}, prompt {index}: a {model} balloon") for index in range(4)
             for client in range(2) for model in (DEV, KLEIN)]  # fmt: skip
    stub = two_models.stub
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda call: encode_model_via(stub, [call[1]], call[0]), calls))

    for (model, prompt), embeds in zip(calls, results, strict=True):
        # A prompt batched with others can differ from diffusers' single pass in the last bits of float32.
        torch.testing.assert_close(embeds, expected[model]([prompt]), rtol=0, atol=1e-5)
    assert two_models.background.batch_counts(DEV)[1] >= 8 and two_models.background.batch_counts(KLEIN)[1] >= 8


def test_models_on_one_device_never_run_forward_passes_at_the_same_time(two_models, monkeypatch):
    passes: list[tuple[float, float]] = []  # (start, end) of every pass, both models
    encode_many = PromptEncoder.encode_many

    def timed(self: PromptEncoder, requests: Sequence[EncodeRequest]) -> list[torch.Tensor]:
        started = time.monotonic()
        time.sleep(0.02)  # a longer pass: two unlocked forward threads would overlap all the more
        try:
            return encode_many(self, requests)
        finally:
            passes.append((started, time.monotonic()))

    monkeypatch.setattr(PromptEncoder, "encode_many", timed)
    calls = [(model, f"pass {index} of {model}: {uuid.uuid4()}") for index in range(6) for model in (DEV, KLEIN)]
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:  # both models' batchers fill at once
        list(pool.map(lambda call: encode_model_via(two_models.stub, [call[1]], call[0]), calls))

    assert len(passes) >= 2  # at least one pass of each model (each batch holds one model's prompts)
    ordered = sorted(passes)
    overlaps = [(a, b) for a, b in zip(ordered, ordered[1:], strict=False) if b[0] < a[1]]
    assert overlaps == [], f"{len(overlaps)} of {len(passes)} passes overlapped the one before"


def test_one_forward_lock_per_device():
    assert forward_lock("cpu") is forward_lock("cpu:0")
    assert forward_lock("cuda") is forward_lock("cuda:0")  # the current CUDA device (0 without a GPU)
    assert forward_lock("cuda:0") is not forward_lock("cuda:1")
    assert forward_lock("cpu") is not forward_lock("cuda:0")


def test_health_metrics_and_ready_line_cover_every_model(two_models):
    handle = two_models.handle
    line = ready_line(handle, 1.0)
    exposition = requests.get(f"http://127.0.0.1:{handle.http_port}/metrics", timeout=30).text

    assert "dev (mistral3 for Flux2Pipeline), 30/34 layers" in line
    assert "; klein (qwen3 for Flux2KleinPipeline), 27/28 layers" in line
    assert "cache 1024 MiB per caller (512 MiB per model)" in line
    assert [engine.cache.capacity_bytes for engine in handle.engines] == [512 << 20, 512 << 20]
    assert handle.engines.default.budget is handle.engines.engine_for(KLEIN).budget  # one reply budget
    assert sample_value(exposition, "flux2_encoder_queued_prompts") == 0
    assert requests.get(f"http://127.0.0.1:{handle.http_port}/health", timeout=30).status_code == 200


def test_duplicate_model_names_are_refused_before_binding(tiny_snapshot):
    config = ServerConfig(models=(ModelConfig(tiny_snapshot), ModelConfig(tiny_snapshot)), host="127.0.0.1", port=0)
    with pytest.raises(ConfigError, match="two --model options are both named 'tiny-flux2'"):
        asyncio.run(create_server(config))


@pytest.mark.parametrize(
    "text,expected",
    [
        ("/m/dev", {}),
        ("/m/dev,name=FLUX.2-dev", {"name": "FLUX.2-dev"}),
        ("/m/klein,quantize=int8,max_layer=27", {"quantize": "int8", "max_layer": 27}),
        ("/m/dev,dtype=bfloat16,device=cuda:1,upsampling", {"dtype": "bfloat16", "device": "cuda:1"}),
    ],
)
def test_model_options_after_the_path_override_the_server_wide_flags(text, expected):
    defaults = ModelConfig(Path(), device="cpu", quantize="nf4")
    model = parse_model_option(text, defaults)

    assert model.model_path == Path(text.split(",")[0])
    assert model.quantize == expected.get("quantize", "nf4")  # the server-wide flag where none is given
    for key, value in expected.items():
        assert getattr(model, key) == value
    assert model.enable_upsampling == text.endswith(",upsampling")


@pytest.mark.parametrize(
    "option,message",
    [
        ("quantize=int4", "'quantize=int4': quantize takes none|int8|nf4, not 'int4'"),
        ("max_layer=0", "max_layer takes a whole number of at least 1, not '0'"),
        ("dtype=fp8", "dtype takes bfloat16|float16|float32, not 'fp8'"),
        ("colour=red", "'colour=red' is not a model option; after the path come name=NAME"),
        ("name=a,name=b", "'name=b' repeats an option"),
        ("name=", "a model name must be 1 to 128 printable characters"),
        ("device=tpu", "--device must be 'cpu', 'cuda' or 'cuda:N'"),
    ],
)
def test_a_bad_model_option_is_refused_with_one_line_naming_it(tiny_snapshot, capsys, option, message):
    code = encoder_main(["serve", "--model", f"{tiny_snapshot},{option}", "--device", "cpu"])

    assert code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"flux2-encoder: error: --model {tiny_snapshot},{option}: ") and message in line


def test_cli_serves_two_models_with_their_options_and_refuses_bad_ones(tiny_snapshot, tiny_klein_snapshot):
    bad = serve_encoder("--model", str(tiny_snapshot), "--model", f"{tiny_klein_snapshot},quantize=int4", "--port", "0")
    twins = serve_encoder("--model", str(tiny_snapshot), "--model", str(tiny_snapshot), "--port", "0")
    upsampling = serve_encoder("--model", str(tiny_klein_snapshot), "--enable-upsampling", "--device", "cpu")
    server = serve_encoder(
        "--model", f"{tiny_snapshot},name=dev", "--model", f"{tiny_klein_snapshot},name=klein,quantize=int8",
        "--host", "127.0.0.1", "--port", "0", "--device", "cpu", "--max-batch-size", "2",
    )  # fmt: skip
    try:
        port = server.ready_port()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            from shared.protocol import encoder_pb2_grpc

            reply = encoder_pb2_grpc.TextEncoderStub(channel).GetInfo(encoder_pb2.GetInfoRequest(), timeout=30)
        ready = next(line for line in server.log if "ready on" in line)
    finally:
        server.stop()
    described = {model.name: model.quantization for model in ServerInfo.from_pb(reply).models}
    assert described == {"dev": "none", "klein": "int8"}
    assert "dev (mistral3 for Flux2Pipeline)" in ready and "klein (qwen3 for Flux2KleinPipeline)" in ready
    assert "int8 weights" in ready
    for refused, message in (
        (bad, "quantize takes none|int8|nf4, not 'int4'"),
        (twins, "two --model options are both named 'tiny-flux2'; give each its own with ,name=NAME"),
        (upsampling, "does not upsample prompts; upsampling needs FLUX.2-dev's Mistral3: --enable-upsampling applies"),
    ):
        assert refused.process.wait(120) == 2
        output = refused.output()
        ours = [line for line in output.splitlines() if line.startswith("flux2-encoder: error:")]
        assert len(ours) == 1 and message in ours[0], output
        assert "Traceback" not in output


def test_upsample_to_a_model_that_cannot_names_the_one_that_can(tiny_snapshot, tiny_klein_snapshot):
    models = (
        ModelConfig(tiny_klein_snapshot, name=KLEIN),
        ModelConfig(tiny_snapshot, name=DEV, enable_upsampling=True),
    )
    engines = ServedEngines.build(ServerConfig(models=models))  # nothing loads until `load`
    with pytest.raises(NotEnabledError, match="klein does not upsample prompts; dev does: name it in the request"):
        asyncio.run(engines.upsample(UpsampleRequest(("a cat",), ((),)), None))


@pytest.mark.parametrize("folder", ["tiny\x1b[2Jflux2", "tiny\nflux2"], ids=["escape", "newline"])
def test_a_folder_name_that_is_no_model_name_is_refused_at_start_asking_for_one(tiny_snapshot, tmp_path, folder):
    odd = tmp_path / folder  # a snapshot whose folder name would reach the log raw, were it the model's name
    odd.mkdir()
    for part in tiny_snapshot.iterdir():
        (odd / part.name).symlink_to(part)
    server = serve_encoder("--model", str(odd), "--host", "127.0.0.1", "--port", "0", "--device", "cpu")
    try:
        code = server.process.wait(120)
    finally:
        server.stop()
    output = server.output()
    assert code == 2
    [line] = output.splitlines()
    assert line.startswith(f"flux2-encoder: error: --model {str(odd)!r} would be named after its folder, but a model")
    assert "give it a name with ,name=NAME after its path" in line and "\x1b" not in output
