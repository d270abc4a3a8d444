"""Shared fixtures: the tiny snapshot (built once per session), diffusers' reference, real servers."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `make test` runs several pytest workers, each starting servers and commands, on a few cores: one torch thread per
# process (the commands it starts inherit it) keeps them from spinning against each other. Set before torch loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Generating signs C2PA manifests with a local authority made in the user's config folder: the tests' own
# (one per test process, shared by the CLIs it starts), never the user's.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="flux2-split-test-config-")

from shared.library_logs import quiet_library_loggers  # noqa: E402

quiet_library_loggers()  # before bitsandbytes first loads: its CPU backend's kernel-download warning is not ours

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from shared.tiny_snapshot import build_tiny_snapshot  # noqa: E402
from tests.support.helpers import RunningServer, start_server  # noqa: E402


@pytest.fixture(scope="session")
def tiny_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_snapshot(tmp_path_factory.mktemp("snapshot") / "tiny-flux2")


@pytest.fixture(scope="session")
def reference_pipeline(tiny_snapshot: Path) -> Any:
    """diffusers' own Flux2Pipeline text path, the ground truth for embeddings."""
    from diffusers import Flux2Pipeline

    return Flux2Pipeline.from_pretrained(tiny_snapshot, dtype=torch.float32, transformer=None, vae=None)


@pytest.fixture(scope="session")
def diffusers_embeds(reference_pipeline: Any):  # type: ignore[no-untyped-def]
    """`diffusers_embeds(prompts, layers=..., max_sequence_length=...)` computed the way diffusers does."""
    from diffusers import Flux2Pipeline

    def compute(prompts: list[str], layers: tuple[int, ...] = (10, 20, 30), max_sequence_length: int = 512):
        with torch.no_grad():
            return Flux2Pipeline._get_mistral_3_small_prompt_embeds(
                reference_pipeline.text_encoder,
                reference_pipeline.tokenizer,
                prompts,
                max_sequence_length=max_sequence_length,
                hidden_states_layers=layers,
            )

    return compute


@pytest.fixture(scope="session")
def encoder_server(tiny_snapshot: Path) -> Iterator[RunningServer]:
    """One real encoder server on port 0 for the whole session, with all 34 layers (the default loads 30)."""
    with start_server(tiny_snapshot, max_layer=34) as server:
        yield server


@pytest.fixture(scope="session")
def tiny_klein_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny FLUX.2 [klein] snapshot (Qwen3 text encoder, hidden 64, 28 layers), built once per session."""
    from shared.tiny_klein import build_tiny_klein_snapshot

    return build_tiny_klein_snapshot(tmp_path_factory.mktemp("klein-snapshot") / "tiny-klein")


@pytest.fixture(scope="session")
def klein_server(tiny_klein_snapshot: Path) -> Iterator[RunningServer]:
    """One klein-only server for the session, with all 28 layers (the last has Qwen3's final norm) and HTTP."""
    with start_server(tiny_klein_snapshot, max_layer=28, http_port=0) as server:
        yield server


@pytest.fixture(scope="session")
def klein_reference_pipeline(tiny_klein_snapshot: Path) -> Any:
    """diffusers' own Flux2KleinPipeline text path, the ground truth for [klein] embeddings."""
    from diffusers import Flux2KleinPipeline

    return Flux2KleinPipeline.from_pretrained(tiny_klein_snapshot, dtype=torch.float32, transformer=None, vae=None)


@pytest.fixture(scope="session")
def klein_diffusers_embeds(klein_reference_pipeline: Any):  # type: ignore[no-untyped-def]
    """`klein_diffusers_embeds(prompts, layers=..., max_sequence_length=...)` computed the way diffusers does."""
    from diffusers import Flux2KleinPipeline

    def compute(prompts: list[str], layers: tuple[int, ...] = (9, 18, 27), max_sequence_length: int = 512):
        with torch.no_grad():
            return Flux2KleinPipeline._get_qwen3_prompt_embeds(
                klein_reference_pipeline.text_encoder,
                klein_reference_pipeline.tokenizer,
                prompts,
                max_sequence_length=max_sequence_length,
                hidden_states_layers=layers,
            )

    return compute
