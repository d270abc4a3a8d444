"""Typed server configuration, built by the CLI (or by tests) and validated once at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from shared.defaults import DEFAULT_MAX_SEQUENCE_LENGTH, DEFAULT_PORT


class ConfigError(ValueError):
    """Conflicting or out-of-range settings; the message is one sentence saying which."""


SUPPORTED_DTYPES = ("bfloat16", "float16", "float32")


@dataclass(frozen=True)
class ModelConfig:
    """Where the snapshot is and how to run its text encoder."""

    model_path: Path
    device: str = "cpu"
    dtype: str | None = None  # None: bfloat16 on CUDA, float32 on CPU
    max_layer: int | None = None  # load decoder layers 1..max_layer only; None loads all

    def __post_init__(self) -> None:
        if self.dtype is not None and self.dtype not in SUPPORTED_DTYPES:
            raise ConfigError(f"--dtype must be one of {', '.join(SUPPORTED_DTYPES)}, not {self.dtype!r}.")
        if self.max_layer is not None and self.max_layer < 1:
            raise ConfigError(f"--max-layer must be at least 1, not {self.max_layer}.")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"--device must be 'cpu', 'cuda' or 'cuda:N', not {self.device!r}.")

    @property
    def resolved_dtype(self) -> str:
        if self.dtype is not None:
            return self.dtype
        return "bfloat16" if self.device.startswith("cuda") else "float32"


@dataclass(frozen=True)
class BatchingConfig:
    """Dynamic batching: requests arriving within `batch_wait_ms` share one forward pass."""

    max_batch_size: int = 16  # prompts per forward pass, and the most prompts one request may carry
    batch_wait_ms: float = 5.0
    max_queued_prompts: int = 512  # beyond this, requests fail fast with RESOURCE_EXHAUSTED

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ConfigError(f"--max-batch-size must be at least 1, not {self.max_batch_size}.")
        if self.batch_wait_ms < 0:
            raise ConfigError(f"--batch-wait-ms must not be negative, not {self.batch_wait_ms}.")
        if self.max_queued_prompts < self.max_batch_size:
            raise ConfigError(
                f"--max-queued-prompts ({self.max_queued_prompts}) must be at least "
                f"--max-batch-size ({self.max_batch_size})."
            )


@dataclass(frozen=True)
class RequestLimits:
    """Per-request limits, reported by GetInfo and enforced before any work is queued."""

    max_prompt_chars: int = 20_000
    max_sequence_length: int = DEFAULT_MAX_SEQUENCE_LENGTH

    def __post_init__(self) -> None:
        if self.max_prompt_chars < 1:
            raise ConfigError(f"--max-prompt-chars must be at least 1, not {self.max_prompt_chars}.")
        if self.max_sequence_length < 1:
            raise ConfigError(f"--max-sequence-length must be at least 1, not {self.max_sequence_length}.")


@dataclass(frozen=True)
class ServerConfig:
    model: ModelConfig
    host: str = "[::]"
    port: int = DEFAULT_PORT
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    limits: RequestLimits = field(default_factory=RequestLimits)
    shutdown_grace_s: float = 5.0
    auth_token: str | None = field(default=None, repr=False)  # None: no authentication

    def __post_init__(self) -> None:
        if self.auth_token is not None and not self.auth_token.strip():
            raise ConfigError("the auth token is empty; put the shared secret in the token file.")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be between 0 and 65535, not {self.port}.")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"
