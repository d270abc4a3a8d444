"""FLUX.2-dev's components with random weights, made on the device by diffusers' and transformers' constructors.

Nothing is downloaded or written, and kernels cost the same whatever the weights hold, so timings and memory match
the real models': Mistral Small 3.1 (`Mistral3Config()`'s defaults) with the real Tekken tokenizer, the DiT
`Flux2Transformer2DModel()` in NF4, the VAE `AutoencoderKLFlux2()`. Also the encoder server client benchmarks use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from bench.harness import BenchError, setup_process
from diffusion_client.generation.pipeline import ModelKind, PipelineConfig, load_pipeline, model_kind, resolve_quantize
from encoder_server.config import ModelConfig, RequestLimits, ServerConfig
from encoder_server.health_check import check_health
from shared.defaults import DEFAULT_HIDDEN_STATE_LAYERS
from shared.tiny_klein import build_qwen3_tokenizer
from shared.tiny_snapshot import build_scheduler, build_tokenizer, built_on

if TYPE_CHECKING:
    from encoder_server.model.prompt_encoder import PromptEncoder

log = logging.getLogger(__name__)

RANDOM_ENCODER_NAME = "random-mistral-small-3.1"
MAX_LAYER = max(DEFAULT_HIDDEN_STATE_LAYERS)  # the server's default depth
REPO_ROOT = Path(__file__).resolve().parents[1]  # where `python -m bench.random_models` finds `bench`


def random_text_encoder(device: str) -> Any:
    """The whole `Mistral3ForConditionalGeneration` (48 GB in bf16), as diffusers' `Flux2Pipeline` holds it."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    torch.manual_seed(0)
    with built_on(device):  # Mistral Small 3.1 24B, with its own LM head as the checkpoint has
        model = Mistral3ForConditionalGeneration(Mistral3Config(tie_word_embeddings=False))
    return model.eval().requires_grad_(False)


def random_prompt_encoder(device: str, max_layer: int, quantize: str = "none") -> PromptEncoder:
    """The server's `PromptEncoder` over a random `MistralModel`, layers 1..`max_layer`, alike for every `quantize`."""
    from transformers import Mistral3Config, MistralModel

    from encoder_server.model.prompt_encoder import ModelInfo, PromptEncoder

    text_config = Mistral3Config().text_config
    num_layers, text_config.num_hidden_layers = int(text_config.num_hidden_layers), max_layer
    torch.manual_seed(0)
    with built_on(device):
        model = MistralModel(text_config).eval().requires_grad_(False)
    if quantize != "none":
        quantize_linears(model, device, quantize)
    info = ModelInfo(
        model_name=RANDOM_ENCODER_NAME,
        model_path="(random weights, in memory)",
        hidden_size=int(text_config.hidden_size),
        num_layers=num_layers,
        max_layer=max_layer,
        dtype="bfloat16",
        device=str(model.device),
        fingerprint=f"random-seed-0-{quantize}",
        quantization=quantize,
        weight_bytes=int(model.get_memory_footprint()),  # as `PromptEncoder.load` counts it
    )
    return PromptEncoder(model, build_tokenizer(), info, RequestLimits())


def quantize_linears(model: torch.nn.Module, device: str | torch.device, mode: str) -> None:
    """Swap every `nn.Linear` for bitsandbytes' `Linear8bitLt` (`mode` "int8") or `Linear4bit` ("nf4"), quantised.

    With transformers' `BitsAndBytesConfig` defaults (int8: outlier threshold 6.0, no fp16 copy, quantised from host
    memory as transformers does; NF4: 64-blocks, bf16 compute). Each bf16 weight is freed as its layer is replaced.
    """
    import bitsandbytes as bnb

    names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    for name in names:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, child_name)
        shape, bias = (linear.in_features, linear.out_features), linear.bias is not None
        # device="meta": the real weight comes next; nothing is allocated for the placeholder.
        if mode == "int8":
            quantized: Any = bnb.nn.Linear8bitLt(*shape, bias, has_fp16_weights=False, threshold=6.0, device="meta")
            weight: Any = bnb.nn.Int8Params(linear.weight.data.cpu(), requires_grad=False, has_fp16_weights=False)
        else:
            nf4: dict[str, Any] = {"compress_statistics": False, "quant_type": "nf4"}
            quantized = bnb.nn.Linear4bit(*shape, bias, compute_dtype=torch.bfloat16, device="meta", **nf4)
            weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False, module=quantized, **nf4)
        quantized.weight = weight.to(device)
        quantized.bias = linear.bias
        setattr(parent, child_name, quantized.train(linear.training))  # int8 computes otherwise in training mode


def random_pipeline(device: str) -> Any:
    """`Flux2Pipeline` with no text encoder, FLUX.2-dev's DiT in NF4 (built in bf16 first: 64 GB) and VAE in bf16."""
    from diffusers import AutoencoderKLFlux2, Flux2Pipeline, Flux2Transformer2DModel

    torch.manual_seed(0)
    with built_on(device):
        transformer = Flux2Transformer2DModel().eval().requires_grad_(False)  # its defaults are FLUX.2-dev's
        vae = AutoencoderKLFlux2().eval().requires_grad_(False)
    quantize_linears(transformer, device, "nf4")
    return Flux2Pipeline(build_scheduler(), vae, text_encoder=None, tokenizer=None, transformer=transformer)


def generator_pipeline(snapshot: Path | None, device: str) -> tuple[Any, ModelKind]:
    """The generator side's pipeline and kind: `snapshot`'s as the commands load it, else `random_pipeline`'s
    FLUX.2-dev (28 steps, guidance 4)."""
    if snapshot is None:
        return random_pipeline(device), ModelKind("Flux2Pipeline", distilled=True, steps=28, guidance=4.0)
    quantize = resolve_quantize("auto", device)
    return load_pipeline(PipelineConfig(model_path=snapshot, device=device, quantize=quantize)), model_kind(snapshot)


def server_config(model: Path | None, device: str, port: int) -> tuple[ServerConfig, Callable[[], Any] | None]:
    """What `flux2-encoder serve --model MODEL` serves on `port`; without `model`, random weights and their loader."""
    config = ServerConfig(ModelConfig(model or Path(RANDOM_ENCODER_NAME), device=device), host="127.0.0.1", port=port)
    return config, (None if model else lambda: random_prompt_encoder(device, MAX_LAYER))


@contextlib.contextmanager
def encoder_server(model: Path | None, device: str, timeout_s: float = 900) -> Iterator[tuple[str, str]]:
    """An encoder server's target once SERVING, and where it runs: a subprocess on CUDA (its memory stays out of the
    caller's numbers), a thread on the CPU (sharing the caller's torch threads rather than contending for cores)."""
    if device == "cpu":
        from encoder_server.background import serve_in_thread

        with serve_in_thread(*server_config(model, device, port=0)) as server:
            yield server.target, "in-process server thread (CPU)"
        return
    with socket.socket() as probe:  # a free port for the child to bind
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    snapshot = [str(model.resolve())] if model else []
    command = [sys.executable, "-m", "bench.random_models", str(port), device, *snapshot]
    log.info("starting the encoder server: %s", " ".join(command))
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=sys.stderr.fileno(), stderr=sys.stderr.fileno())
    target, deadline = f"127.0.0.1:{port}", time.monotonic() + timeout_s
    try:
        while check_health(target, wait_s=10) != 0:  # prints one status line per poll
            if process.poll() is not None:
                raise BenchError(f"the encoder server exited with status {process.returncode} before serving")
            if time.monotonic() > deadline:
                raise BenchError(f"the encoder server at {target} was not SERVING after {timeout_s:.0f} s")
        yield target, f"subprocess on {device} (not in this process's memory numbers)"
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(60)
        process.kill()  # nothing to do once it has exited


def main() -> None:
    """`python -m bench.random_models PORT DEVICE [SNAPSHOT]`: serve the snapshot, or random weights, until SIGTERM."""
    from encoder_server.server import serve

    port, device, *snapshot = sys.argv[1:]
    setup_process()
    asyncio.run(serve(*server_config(Path(snapshot[0]) if snapshot else None, device, int(port))))


if __name__ == "__main__":
    main()


# FLUX.2 [klein]'s Qwen3 text encoder, in its real shapes, with random weights (bench.encoder's klein modes).
KLEIN_MAX_LAYER = 27  # the deepest layer [klein] stacks, what the server loads by default


@dataclass(frozen=True)
class Qwen3Shape:
    """A Qwen3 text encoder's shape, from its released config.json (random weights are built at this shape)."""

    name: str
    hidden_size: int
    intermediate_size: int
    tie_word_embeddings: bool
    num_layers: int = 36
    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    vocab_size: int = 151936


def random_qwen3(shape: Qwen3Shape, device: str, causal_lm: bool = False, max_layer: int | None = None) -> Any:
    """`Qwen3Model` with layers 1..`max_layer` (default all), or the whole `Qwen3ForCausalLM`, random, in bf16."""
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

    config = Qwen3Config(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=max_layer or shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=40960,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=shape.tie_word_embeddings,
    )
    torch.manual_seed(0)
    with built_on(device):
        model = (Qwen3ForCausalLM if causal_lm else Qwen3Model)(config)
    return model.eval().requires_grad_(False)


def random_qwen3_encoder(shape: Qwen3Shape, device: str, quantize: str = "none") -> PromptEncoder:
    """The server's `PromptEncoder` over a random Qwen3 of `shape`, layers 1..27, alike for every `quantize`."""
    from encoder_server.model.families import QWEN3
    from encoder_server.model.prompt_encoder import ModelInfo, PromptEncoder

    model = random_qwen3(shape, device, max_layer=KLEIN_MAX_LAYER)
    if quantize != "none":
        quantize_linears(model, device, quantize)
    info = ModelInfo(
        model_name=shape.name,
        model_path="(random weights, in memory)",
        hidden_size=shape.hidden_size,
        num_layers=shape.num_layers,
        max_layer=KLEIN_MAX_LAYER,
        dtype="bfloat16",
        device=str(model.device),
        fingerprint=f"random-seed-0-{quantize}",
        quantization=quantize,
        weight_bytes=int(model.get_memory_footprint()),  # as `PromptEncoder.load` counts it
        family=QWEN3,
    )
    return PromptEncoder(model, build_qwen3_tokenizer(), info, RequestLimits())
