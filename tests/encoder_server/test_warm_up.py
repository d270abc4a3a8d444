"""A model that loads but cannot run fails at start-up with one line, instead of answering INTERNAL on every
request after reporting SERVING; the ready line gives the warm-up's time."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from encoder_server.errors import ModelLoadError
from encoder_server.model.prompt_encoder import PromptEncoder
from shared.tiny_snapshot import TinySnapshotShape, build_tiny_snapshot
from tests.generation.test_demo import AVX512_BF16_SITECUSTOMIZE
from tests.support.cli_runs import serve_encoder
from tests.support.helpers import start_server


class NoKernel:
    """The real encoder, whose passes fail the way a missing kernel does."""

    def __init__(self, encoder: PromptEncoder) -> None:
        self._encoder = encoder

    def __getattr__(self, name: str) -> object:
        return getattr(self._encoder, name)

    def encode_many(self, requests: object) -> object:
        raise RuntimeError("no kernel image is available for execution on the device")


def test_model_that_cannot_run_fails_its_start_and_never_reports_serving(tiny_snapshot, encoder_server):
    broken = NoKernel(encoder_server.wait_ready())
    with start_server(tiny_snapshot, load_encoder=lambda: broken, wait=False, warm_up=True) as server:  # type: ignore[arg-type, return-value]
        with pytest.raises(ModelLoadError) as failed:
            server.wait_ready()
        health = health_pb2_grpc.HealthStub(server.channel)
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    message = str(failed.value)
    assert "the model loaded but cannot run: a warm-up pass of 16 prompts x 512 tokens" in message
    assert "no kernel image" in message and "\n" not in message


def test_warm_up_leaves_the_cache_empty(tiny_snapshot, encoder_server):
    encoder = encoder_server.wait_ready()
    with start_server(tiny_snapshot, load_encoder=lambda: encoder, warm_up=True, max_batch_size=2) as server:
        stats = server.background.cache_stats()
        assert server.handle.engine.warm_up_s is not None
    assert stats is not None and stats.entries == 0 and stats.misses == 0


@pytest.fixture(scope="module")
def narrow_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny snapshot as it was before its widths became multiples of 64: 32-wide layers."""
    shape = TinySnapshotShape(text_hidden_size=32, text_intermediate_size=64, text_num_heads=4, text_num_kv_heads=2)
    return build_tiny_snapshot(tmp_path_factory.mktemp("narrow") / "tiny-flux2-32", shape)


def test_nf4_model_the_avx512_bf16_kernel_cannot_pack_fails_at_start_in_one_line(narrow_snapshot, tmp_path):
    """On CPUs with AVX512-BF16 bitsandbytes repacks 4-bit weights in 32-row tiles; 32-wide layers of a model that
    loaded fine failed every request with INTERNAL. The check is made to answer yes on every machine."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(AVX512_BF16_SITECUSTOMIZE)
    repo = Path(__file__).resolve().parents[2]
    server = serve_encoder(
        "--model", str(narrow_snapshot), "--host", "127.0.0.1", "--port", "0", "--quantize", "nf4",
        "--max-batch-size", "2", "--max-layer", "2",
        env={"PYTHONPATH": f"{tmp_path / 'site'}:{repo}"},
    )  # fmt: skip
    try:
        assert server.process.wait(180) == 2
    except subprocess.TimeoutExpired:
        server.stop()
        raise
    output = server.output()
    ours = [line for line in output.splitlines() if line.startswith("flux2-encoder: error: ")]
    assert len(ours) == 1, output
    assert "the model loaded but cannot run: a warm-up pass of 2 prompts" in ours[0]
    assert "ready on" not in output and "Traceback" not in output


def test_ready_line_reports_the_warm_up_pass(tiny_snapshot):
    server = serve_encoder(
        "--model", str(tiny_snapshot), "--host", "127.0.0.1", "--port", "0", "--max-batch-size", "2"
    )  # fmt: skip
    try:
        server.ready_port()
        ready = next(line for line in server.log if "ready on" in line)
    finally:
        server.stop()
    assert "max batch 2, warm-up pass " in ready
