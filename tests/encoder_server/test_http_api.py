"""The Hugging Face–compatible HTTP endpoint: the hosted encoder's callers get gRPC's embeddings bit for bit."""

from __future__ import annotations

import contextlib
import http.client
import io
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import safetensors.torch
import torch

from diffusion_client import RemoteTextEncoder
from encoder_server.api.status import RETRY_AFTER_S
from encoder_server.config import TlsConfig
from tests.support.certs import Certificates, make_certificates
from tests.support.cli_runs import wait_until
from tests.support.helpers import RunningServer, sample_value, start_server

TOKEN = "alice-http-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
METRICS_TOKEN = "prometheus-0123456789abcdef"
MAX_PROMPTS = 4
MAX_PROMPT_CHARS = 1000


@pytest.fixture(scope="module")
def http_server(tiny_snapshot: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A loaded server with a named token, small request limits (so a too-large body is small) and HTTP on."""
    tokens_file = tmp_path_factory.mktemp("http-tokens") / "tokens"
    tokens_file.write_text(f"alice {TOKEN}\n")
    metrics_token_file = tokens_file.with_name("metrics-token")
    metrics_token_file.write_text(METRICS_TOKEN)
    with start_server(
        tiny_snapshot,
        http_port=0,
        tokens_file=tokens_file,
        metrics_token_file=metrics_token_file,
        max_batch_size=MAX_PROMPTS,
        max_prompt_chars=MAX_PROMPT_CHARS,
    ) as server:
        yield server


def _url(server: RunningServer, path: str, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{server.handle.http_port}{path}"


def _grpc_embeds(server: RunningServer, prompts: list[str]) -> torch.Tensor:
    with RemoteTextEncoder(server.target, token=TOKEN) as encoder:
        return encoder.encode(prompts)


def _predict(server: RunningServer, prompt: object) -> requests.Response:
    return requests.post(_url(server, "/predict"), json={"prompt": prompt}, headers=AUTH, timeout=30)


def test_bfl_readme_snippet_gets_the_grpc_embeddings_bitwise(http_server):
    prompts = ["a red fox in the snow", "a lighthouse at dusk"]
    # BFL's README, with the URL and token of this server.
    response = requests.post(
        _url(http_server, "/predict"), json={"prompt": prompts}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    prompt_embeds = torch.load(io.BytesIO(response.content), weights_only=True)
    assert response.headers["content-type"] == "application/octet-stream"
    assert torch.equal(prompt_embeds, _grpc_embeds(http_server, prompts))


def test_diffusers_remote_text_encoder_step_gets_the_grpc_embeddings_bitwise(http_server, monkeypatch):
    from diffusers.modular_pipelines.flux2.encoders import Flux2RemoteTextEncoderStep

    # The step sends `Bearer {huggingface_hub.get_token()}`, which reads HF_TOKEN first: a user of this server
    # sets HF_TOKEN to the token the operator gave them.
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    step = Flux2RemoteTextEncoderStep()
    step.REMOTE_URL = _url(http_server, "/predict")  # on this instance only; the class keeps the hosted URL
    prompt_embeds = step.init_pipeline()(prompt="a teapot on a stove", output="prompt_embeds")
    assert torch.equal(prompt_embeds, _grpc_embeds(http_server, ["a teapot on a stove"]))


@pytest.mark.parametrize(
    "how", [{"headers": {"Accept": "application/vnd.safetensors"}}, {"params": {"format": "safetensors"}}]
)
def test_safetensors_reply_equals_the_torch_save_reply(http_server, how):
    prompt = "a paper boat"
    torch_reply = _predict(http_server, prompt)
    headers = {**AUTH, **how.get("headers", {})}
    reply = requests.post(
        _url(http_server, "/predict"), json={"prompt": prompt}, headers=headers, params=how.get("params"), timeout=30
    )
    assert reply.headers["content-type"] == "application/vnd.safetensors"
    prompt_embeds = safetensors.torch.load(reply.content)["prompt_embeds"]
    assert torch.equal(prompt_embeds, torch.load(io.BytesIO(torch_reply.content), weights_only=True))


@pytest.mark.parametrize(
    "authorization", [None, "Bearer not-the-token-at-all", f"Basic {TOKEN}"], ids=["none", "wrong", "not-bearer"]
)
def test_predict_without_the_right_token_is_401_with_www_authenticate(http_server, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    response = requests.post(_url(http_server, "/predict"), json={"prompt": "x"}, headers=headers, timeout=30)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "bearer token" in response.json()["error"]


BAD_BODIES = {
    "not-json": (b"{prompt: a cat}", "not valid JSON"),
    "not-utf8": (b'{"prompt": "\xff"}', "not valid JSON"),
    "not-an-object": (b'["a cat"]', "must be a JSON object"),
    "no-prompt": (b"{}", 'the body has no "prompt"'),
    "unknown-field": (b'{"prompt": "a", "inputs": "a"}', 'unknown field "inputs"'),
    "prompt-a-number": (b'{"prompt": 7}', '"prompt" must be a string or an array of strings, not a number'),
    "prompt-item-not-a-string": (b'{"prompt": ["a", {"b": 1}]}', '"prompt"[1] must be a string, not an object'),
    "no-prompts": (b'{"prompt": []}', "send 1 to 4 prompts"),
    "too-many-prompts": (b'{"prompt": ["a", "b", "c", "d", "e"]}', "5 prompts in one request; the limit is 4"),
    "prompt-too-long": (b'{"prompt": "%s"}' % (b"y" * 1001), "prompt 0 has 1001 characters; the limit is 1000"),
    "duplicate-key": (b'{"prompt": "a", "prompt": "b"}', "repeats a field"),
    "huge-number": (b'{"prompt": "a", "max_sequence_length": 1%s}' % (b"0" * 4000), "fit 64 bits"),
    "huge-float": (b'{"prompt": "a", "max_sequence_length": 1e999}', "too large for a float"),
    "nan": (b'{"prompt": "a", "max_sequence_length": NaN}', "NaN, which JSON does not allow"),
    "deep-nesting": (b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
    "bool-length": (b'{"prompt": "a", "max_sequence_length": true}', "must be an integer, not true or false"),
    "length-over-limit": (b'{"prompt": "a", "max_sequence_length": 513}', "use 1 to 512"),
    "lone-surrogate": (b'{"prompt": "a\\ud800b"}', "lone surrogate"),
}


@pytest.mark.parametrize("body,message", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_bad_request_is_400_saying_what_to_fix_and_the_server_keeps_serving(http_server, body, message):
    response = requests.post(_url(http_server, "/predict"), data=body, headers=AUTH, timeout=30)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert _predict(http_server, "still serving").status_code == 200


def test_declared_100_mb_body_is_refused_with_413_before_it_is_sent(http_server):
    connection = http.client.HTTPConnection("127.0.0.1", http_server.handle.http_port, timeout=30)
    connection.putrequest("POST", "/predict")
    connection.putheader("Authorization", AUTH["Authorization"])
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(100_000_000))
    connection.endheaders()  # and not one byte of the body
    response = connection.getresponse()
    assert response.status == 413
    assert response.getheader("Connection") == "close"
    assert b"send fewer or shorter prompts" in response.read()
    connection.close()


def test_streamed_body_over_the_limit_is_refused_with_413(http_server):
    chunk = b"x" * 8192
    head = f"POST /predict HTTP/1.1\r\nHost: test\r\nAuthorization: {AUTH['Authorization']}\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n"  # no Content-Length: only counting the body can tell
    body = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in [b'{"prompt": "', *[chunk] * 8])  # > 52 KB
    with socket.create_connection(("127.0.0.1", http_server.handle.http_port), timeout=30) as connection:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the server may hang up mid-body
            connection.sendall(head.encode() + body)
        reply = connection.makefile("rb").read()
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert b"send fewer or shorter prompts" in reply


def test_health_reports_serving_without_a_token(http_server):
    response = requests.get(_url(http_server, "/health"), timeout=30)
    assert (response.status_code, response.json()) == (200, {"status": "SERVING"})


def _predict_count(server: RunningServer, status: str) -> float:
    metrics_auth = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    text = requests.get(_url(server, "/metrics"), headers=metrics_auth, timeout=30).text
    labels = {"rpc": "predict", "status": status, "token": "alice"}
    return sample_value(text, "flux2_encoder_requests_total", labels) or 0.0


def test_metrics_count_predict_calls_by_status_and_caller(http_server):
    before = _predict_count(http_server, "200"), _predict_count(http_server, "400")
    assert _predict(http_server, "a counted call").status_code == 200
    assert _predict(http_server, 42).status_code == 400
    assert (_predict_count(http_server, "200"), _predict_count(http_server, "400")) == (before[0] + 1, before[1] + 1)


def test_full_queue_is_503_with_retry_after(tiny_snapshot, http_server):
    encoder = http_server.wait_ready()  # loaded once: the other server is idle while this one runs
    limits = dict(max_batch_size=2, max_queued_prompts=2, batch_wait_ms=1000)
    with start_server(tiny_snapshot, load_encoder=lambda: encoder, http_port=0, **limits) as server:
        url = _url(server, "/predict")
        waiting = threading.Thread(target=requests.post, args=(url,), kwargs={"json": {"prompt": "a"}, "timeout": 30})
        waiting.start()
        wait_until(lambda: server.handle.engine.queued_prompts == 1, timeout_s=10)
        response = requests.post(url, json={"prompt": ["b", "c"]}, timeout=30)
        waiting.join()
    assert response.status_code == 503
    assert response.headers["retry-after"] == str(RETRY_AFTER_S)
    assert "limit 2" in response.json()["error"]


@dataclass
class LoadingServer:
    server: RunningServer
    certs: Certificates

    @property
    def client_cert(self) -> tuple[str, str]:
        return (str(self.certs.client_cert), str(self.certs.client_key))


@pytest.fixture(scope="module")
def loading_tls_server(tiny_snapshot: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadingServer]:
    """A server with mutual TLS whose model never finishes loading (it is stopped first)."""
    certs = make_certificates(tmp_path_factory.mktemp("http-certs"))
    tls = TlsConfig(cert=certs.server_cert, key=certs.server_key, client_ca=certs.ca)
    release = threading.Event()

    def never_loads():  # type: ignore[no-untyped-def]
        release.wait(60)
        raise RuntimeError("stopped before loading")

    try:
        with start_server(tiny_snapshot, load_encoder=never_loads, wait=False, http_port=0, tls=tls) as server:
            yield LoadingServer(server, certs)
    finally:
        release.set()


def test_predict_while_loading_is_503_with_retry_after(loading_tls_server):
    server, certs = loading_tls_server.server, loading_tls_server.certs
    response = requests.post(
        _url(server, "/predict", "https"),
        json={"prompt": "too early"},
        verify=str(certs.ca),
        cert=loading_tls_server.client_cert,
        timeout=30,
    )
    assert response.status_code == 503
    assert response.headers["retry-after"] == str(RETRY_AFTER_S)
    assert "still loading" in response.json()["error"]


def test_health_is_503_while_loading(loading_tls_server):
    server, certs = loading_tls_server.server, loading_tls_server.certs
    response = requests.get(
        _url(server, "/health", "https"), verify=str(certs.ca), cert=loading_tls_server.client_cert, timeout=30
    )
    assert (response.status_code, response.json()) == (503, {"status": "NOT_SERVING"})


def test_tls_port_refuses_clear_text(loading_tls_server):
    with pytest.raises(requests.ConnectionError):
        requests.get(_url(loading_tls_server.server, "/health"), timeout=30)


def test_tls_port_with_client_ca_refuses_clients_without_a_certificate(loading_tls_server):
    server, certs = loading_tls_server.server, loading_tls_server.certs
    # TLS 1.3 checks the client's certificate after the handshake: the server then drops the connection.
    with pytest.raises(requests.ConnectionError):
        requests.get(_url(server, "/health", "https"), verify=str(certs.ca), timeout=30)
