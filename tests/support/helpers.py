"""Real encoder servers on port 0 (the shared in-thread helper), and plain-stub calls to them."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import torch

from encoder_server.background import BackgroundServer, serve_in_thread
from encoder_server.config import BatchingConfig, ModelConfig, RequestLimits, ServerConfig, UpsampleLimits
from encoder_server.model.prompt_encoder import PromptEncoder
from shared.defaults import DEFAULT_HIDDEN_STATE_LAYERS
from shared.protocol import encoder_pb2, encoder_pb2_grpc
from shared.server_info import ServerInfo
from shared.tiny_snapshot import TinySnapshotShape
from shared.wire import responses_to_tensor

TINY_HIDDEN_SIZE = TinySnapshotShape().text_hidden_size  # the tiny encoder's width, per hidden-state layer
TINY_EMBED_DIM = len(DEFAULT_HIDDEN_STATE_LAYERS) * TINY_HIDDEN_SIZE  # the tiny DiT's joint_attention_dim


@dataclass
class RunningServer:
    """A background server plus one channel to it."""

    background: BackgroundServer
    channel: grpc.Channel = field(init=False)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(self.target)

    @property
    def handle(self) -> Any:
        return self.background.handle

    @property
    def target(self) -> str:
        return self.background.target

    @property
    def stub(self) -> encoder_pb2_grpc.TextEncoderStub:
        return encoder_pb2_grpc.TextEncoderStub(self.channel)

    def run(self, coroutine: Any, timeout: float = 60) -> Any:
        return self.background.run(coroutine, timeout)

    def wait_ready(self, timeout: float = 60) -> PromptEncoder:
        return self.background.wait_ready(timeout)

    def encode(self, prompts: Sequence[str], **fields: Any) -> torch.Tensor:
        return encode_via(self.stub, prompts, **fields)


def sample_value(exposition: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """A sample's value in Prometheus text (parsed with prometheus_client's own parser), or None if absent."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and (labels is None or sample.labels == labels):
                return float(sample.value)
    return None


def prompts_encoded(server: RunningServer) -> int:
    """Prompts the server has run through forward passes so far."""
    return server.background.batch_counts()[1]


def encode_via(stub: encoder_pb2_grpc.TextEncoderStub, prompts: Sequence[str], **fields: Any) -> torch.Tensor:
    """Call Encode and rebuild the tensor with the shared wire helper, as any client would."""
    info = ServerInfo.from_pb(stub.GetInfo(encoder_pb2.GetInfoRequest(), timeout=60))
    request = encoder_pb2.EncodeRequest(prompts=list(prompts), **fields)
    layers = list(request.hidden_state_layers) or list(info.default_hidden_state_layers)
    length = request.max_sequence_length if request.HasField("max_sequence_length") else 512
    expected = info.embedding_spec(len(request.prompts), length, layers)
    return responses_to_tensor(stub.Encode(request, timeout=60), expected)


def server_config(snapshot: Path, **overrides: Any) -> ServerConfig:
    """A CPU server config on 127.0.0.1:0; keyword overrides go to whichever config holds that field."""
    model = ModelConfig(model_path=snapshot, **{"device": "cpu", **_take(overrides, ModelConfig)})
    batching = BatchingConfig(**_take(overrides, BatchingConfig))
    # As the CLI does: a request may carry as many prompts as one pass holds.
    limits = RequestLimits(**{"max_prompts": batching.max_batch_size, **_take(overrides, RequestLimits)})
    upsampling = UpsampleLimits(**_take(overrides, UpsampleLimits, prefix="upsample_"))
    port = overrides.pop("port", 0)
    # A warm-up pass at 16 x 512 tokens takes seconds on a shared CPU, and tests start ~50 servers: tests of the
    # warm-up itself (tests/encoder_server/test_warm_up.py) and every `flux2-encoder serve` process run it.
    overrides.setdefault("warm_up", False)
    sections = {"batching": batching, "limits": limits, "upsampling": upsampling}
    return ServerConfig(model=model, host="127.0.0.1", port=port, **sections, **overrides)


def _take(overrides: dict[str, Any], section: Any, prefix: str = "") -> dict[str, Any]:
    """Pop the overrides naming `section`'s fields (after `prefix`, for sections whose names overlap)."""
    names = [key for key in overrides if key.startswith(prefix) and key[len(prefix) :] in section.__dataclass_fields__]
    return {key[len(prefix) :]: overrides.pop(key) for key in names}


@contextlib.contextmanager
def start_server(
    snapshot: Path,
    load_encoder: Callable[[], PromptEncoder] | None = None,
    wait: bool = True,
    **overrides: Any,
) -> Iterator[RunningServer]:
    """Start a real server on 127.0.0.1:0 in a background loop; stop it on exit."""
    with serve_in_thread(server_config(snapshot, **overrides), load_encoder, wait=wait) as background:
        server = RunningServer(background)
        try:
            yield server
        finally:
            server.channel.close()


def encode_model_via(
    stub: encoder_pb2_grpc.TextEncoderStub, prompts: Sequence[str], model: str | None, **fields: Any
) -> torch.Tensor:
    """As `encode_via`, asking the model named `model` (None: the server's first) for GetInfo and Encode."""
    info = ServerInfo.from_pb(stub.GetInfo(encoder_pb2.GetInfoRequest(model=model), timeout=60))
    request = encoder_pb2.EncodeRequest(prompts=list(prompts), model=model, **fields)
    layers = list(request.hidden_state_layers) or list(info.default_hidden_state_layers)
    length = request.max_sequence_length if request.HasField("max_sequence_length") else 512
    expected = info.embedding_spec(len(request.prompts), length, layers)
    return responses_to_tensor(stub.Encode(request, timeout=60), expected)


@contextlib.contextmanager
def start_models_server(models: Sequence[ModelConfig], wait: bool = True, **overrides: Any) -> Iterator[RunningServer]:
    """A real server on 127.0.0.1:0 serving every one of `models` (the first answers requests naming none); the
    overrides go to the server's other sections, as for `start_server`."""
    from dataclasses import replace

    config = replace(server_config(models[0].model_path, **overrides), model=models[0], models=tuple(models))
    with serve_in_thread(config, wait=wait) as background:
        server = RunningServer(background)
        try:
            yield server
        finally:
            server.channel.close()
