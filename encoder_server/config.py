"""Typed server configuration, built by the CLI (or by tests) and validated once at start-up."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from shared.caller_limits import CallerLimits, ConfigError
from shared.defaults import DEFAULT_MAX_SEQUENCE_LENGTH, DEFAULT_PORT
from shared.tls import key_pair_mismatch

SUPPORTED_DTYPES = ("bfloat16", "float16", "float32")
QUANTIZE_CHOICES = ("none", "int8", "nf4")
MAX_BATCH_WAIT_MS = 10_000.0  # longer only adds latency: under any real load a pass fills far sooner
MIB = 1024 * 1024
MAX_SECONDS = 24 * 3600.0
DEFAULT_SHUTDOWN_GRACE_S = 30.0  # queued and in-flight requests get this long to finish on SIGTERM
DEFAULT_SEND_TIMEOUT_S = 30.0  # a reply that cannot be sent for this long is dropped (the reader stalled)
DEFAULT_MAX_PENDING_REPLY_BYTES = 2048 * MIB  # replies queued, computing or being sent, all streams together
DEFAULT_CACHE_BYTES = 1024 * MIB  # about 68 full-size default embeddings (15.7 MB each)
MAX_MODEL_NAME_CHARS = 128


@dataclass(frozen=True)
class ModelConfig:
    """Where the snapshot is, what requests call it, and how to run its text encoder."""

    model_path: Path
    device: str = "cpu"
    dtype: str | None = None  # None: bfloat16 on CUDA, float32 on CPU
    max_layer: int | None = None  # load decoder layers 1..max_layer only; None: up to the deepest default (30)
    quantize: str | None = None  # "none", "int8" or "nf4"; None: as the snapshot is saved (usually none)
    enable_upsampling: bool = False  # load the whole Mistral3 model (all layers, vision tower, LM head) for Upsample
    name: str | None = None  # what requests name it by (`EncodeRequest.model`); None: the snapshot's display name

    def __post_init__(self) -> None:
        if self.name is not None and (problem := model_name_problem(self.name)):
            raise ConfigError(f"{problem}.")
        if self.dtype is not None and self.dtype not in SUPPORTED_DTYPES:
            raise ConfigError(f"--dtype must be one of {', '.join(SUPPORTED_DTYPES)}, not {self.dtype!r}.")
        if self.max_layer is not None and self.max_layer < 1:
            raise ConfigError(f"--max-layer must be at least 1, not {self.max_layer}.")
        if self.quantize is not None and self.quantize not in QUANTIZE_CHOICES:
            raise ConfigError(f"--quantize must be one of {', '.join(QUANTIZE_CHOICES)}, not {self.quantize!r}.")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"--device must be 'cpu', 'cuda' or 'cuda:N', not {self.device!r}.")

    @property
    def resolved_dtype(self) -> str:
        """float32 only for an unquantised model on the CPU; bitsandbytes computes in 16 bits."""
        if self.dtype is not None:
            return self.dtype
        unquantized = self.quantize in (None, "none")
        return "float32" if self.device == "cpu" and unquantized else "bfloat16"


def model_name_problem(name: str) -> str | None:
    """Why requests cannot call a model `name`, or None: the one rule for `,name=` and for a name taken from the
    snapshot's folder, as names reach logs, metrics and error messages."""
    if 0 < len(name) <= MAX_MODEL_NAME_CHARS and name.isprintable() and "," not in name:
        return None
    return (
        f"a model name must be 1 to {MAX_MODEL_NAME_CHARS} printable characters without a comma, "
        f"not {name[:MAX_MODEL_NAME_CHARS]!r}"
    )


MODEL_OPTIONS = "name=NAME, quantize=none|int8|nf4, max_layer=N, dtype=..., device=... or upsampling"


def parse_model_option(text: str, defaults: ModelConfig) -> ModelConfig:
    """`--model PATH[,name=NAME][,quantize=...][,max_layer=N][,dtype=...][,device=...][,upsampling]`: the model,
    with `defaults` (the server-wide flags) where the text sets nothing; a one-sentence `ConfigError` naming a bad
    option."""
    path, *options = text.split(",")
    if not path:
        raise ConfigError(f"--model {text}: the snapshot's path comes first, then options after commas.")
    settings: dict[str, object] = {}
    for option in options:
        key, equals, value = option.partition("=")
        key = key.strip().replace("-", "_")
        where = f"--model {text}: {option!r}"
        if key in settings or (key == "upsampling" and "enable_upsampling" in settings):
            raise ConfigError(f"{where} repeats an option; give each once.")
        if key == "upsampling" and not equals:
            settings["enable_upsampling"] = True
        elif key == "name" and equals:
            settings["name"] = value
        elif key == "quantize" and value in QUANTIZE_CHOICES:
            settings["quantize"] = value
        elif key == "dtype" and value in SUPPORTED_DTYPES:
            settings["dtype"] = value
        elif key == "device" and equals:
            settings["device"] = value
        elif key == "max_layer" and value.isdigit() and int(value) >= 1:
            settings["max_layer"] = int(value)
        elif key in ("quantize", "dtype", "max_layer"):
            allowed = {
                "quantize": "|".join(QUANTIZE_CHOICES),
                "dtype": "|".join(SUPPORTED_DTYPES),
                "max_layer": "a whole number of at least 1",
            }[key]
            raise ConfigError(f"{where}: {key} takes {allowed}, not {value!r}.")
        else:
            raise ConfigError(f"{where} is not a model option; after the path come {MODEL_OPTIONS}.")
    try:
        return dataclasses.replace(defaults, model_path=Path(path), **settings)  # type: ignore[arg-type]
    except ConfigError as error:
        raise ConfigError(f"--model {text}: {error}") from None


@dataclass(frozen=True)
class BatchingConfig:
    """Dynamic batching: requests arriving within `batch_wait_ms` share one forward pass."""

    max_batch_size: int = 16  # prompts per forward pass, and the most prompts one request may carry
    batch_wait_ms: float = 5.0
    max_queued_prompts: int = 512  # beyond this, requests fail fast with RESOURCE_EXHAUSTED

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ConfigError(f"--max-batch-size must be at least 1, not {self.max_batch_size}.")
        if not 0 <= self.batch_wait_ms <= MAX_BATCH_WAIT_MS:  # also refuses nan
            raise ConfigError(f"--batch-wait-ms must be between 0 and {MAX_BATCH_WAIT_MS:g}, not {self.batch_wait_ms}.")
        if self.max_queued_prompts < self.max_batch_size:
            raise ConfigError(
                f"--max-queued-prompts ({self.max_queued_prompts}) must be at least "
                f"--max-batch-size ({self.max_batch_size})."
            )


@dataclass(frozen=True)
class RequestLimits:
    """Per-request limits, reported by GetInfo and enforced before any work is queued."""

    max_prompts: int = BatchingConfig.max_batch_size  # a request must fit one forward pass
    max_prompt_chars: int = 20_000
    max_sequence_length: int = DEFAULT_MAX_SEQUENCE_LENGTH
    max_hidden_state_layers: int = 8  # diffusers stacks 3; repeats are legal, so the count is what is bounded
    max_reply_bytes: int = 256 * MIB  # 16 full-size default embeddings are 252 MB

    def __post_init__(self) -> None:
        for flag, value in (
            ("--max-batch-size", self.max_prompts),
            ("--max-prompt-chars", self.max_prompt_chars),
            ("--max-sequence-length", self.max_sequence_length),
            ("--max-hidden-state-layers", self.max_hidden_state_layers),
            ("--max-reply-mib", self.max_reply_bytes),
        ):
            if value < 1:
                raise ConfigError(f"{flag} must be at least 1, not {value}.")

    @property
    def max_request_bytes(self) -> int:
        """The largest well-formed `EncodeRequest`: every prompt at its limit in 4-byte UTF-8, plus framing."""
        per_prompt = 4 * self.max_prompt_chars + 8
        return self.max_prompts * per_prompt + 8 * self.max_hidden_state_layers + 64


@dataclass(frozen=True)
class UpsampleLimits:
    """Per-request limits of Upsample, reported by GetInfo; images are also capped at 768² by diffusers' processing."""

    max_prompts: int = 8
    max_images: int = 8  # reference images in one request, all prompts together
    max_image_bytes: int = 8 * MIB
    max_image_pixels: int = 4096 * 4096  # checked from the header, before decoding
    max_new_tokens: int = 1024
    max_queued: int = 16  # requests waiting for the generation thread; beyond it RESOURCE_EXHAUSTED

    def __post_init__(self) -> None:
        for flag, value in (
            ("--max-upsample-prompts", self.max_prompts),
            ("--max-upsample-images", self.max_images),
            ("--max-upsample-image-mib", self.max_image_bytes),
            ("--max-upsample-image-pixels", self.max_image_pixels),
            ("--max-new-tokens", self.max_new_tokens),
            ("--max-queued-upsamples", self.max_queued),
        ):
            if value < 1:
                raise ConfigError(f"{flag} must be at least 1, not {value}.")

    @property
    def max_request_bytes(self) -> int:
        """The largest well-formed `UpsampleRequest`, with the prompt limit of `RequestLimits`."""
        return self.max_images * (self.max_image_bytes + 16)


@dataclass(frozen=True)
class ConnectionLimits:
    """Bounds on connections, so no number of idle or slow ones can use up the process's file descriptors.

    The caps are lowered at start-up when the descriptor limit cannot hold them beside a reserve for the rest
    of the process (`encoder_server.file_descriptors`).
    """

    max_http_connections: int = 256  # past it a new connection gets 503 and is closed
    max_grpc_connections: int = 1024  # past it gRPC closes new connections at once
    http_header_timeout_s: float = 5.0  # a request's line and headers must arrive within this (from connect or
    # from the previous reply), or the connection gets 408 and is closed
    grpc_handshake_timeout_s: float = 10.0  # a gRPC connection must finish TLS and HTTP/2 set-up within this

    def __post_init__(self) -> None:
        for flag, count in (
            ("--max-http-connections", self.max_http_connections),
            ("--max-grpc-connections", self.max_grpc_connections),
        ):
            if count < 1:
                raise ConfigError(f"{flag} must be at least 1, not {count}.")
        for flag, seconds in (
            ("--http-header-timeout-s", self.http_header_timeout_s),
            ("--grpc-handshake-timeout-s", self.grpc_handshake_timeout_s),
        ):
            if not (math.isfinite(seconds) and 0.01 <= seconds <= 600):
                raise ConfigError(f"{flag} must be a number of seconds between 0.01 and 600, not {seconds}.")


@dataclass(frozen=True)
class TlsConfig:
    """PEM files for TLS; with `client_ca` set, clients must present a certificate that CA signed (mTLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        """(certificate chain, private key, client CA or None), read once at start-up."""
        pems = (
            read_pem("--tls-cert", self.cert),
            read_pem("--tls-key", self.key),
            (None if self.client_ca is None else read_pem("--tls-client-ca", self.client_ca)),
        )
        if reason := key_pair_mismatch(self.cert, self.key):  # gRPC would only fail to bind, as if the port were taken
            raise ConfigError(
                f"--tls-key {self.key} is not the private key of --tls-cert {self.cert} ({reason}); "
                "give the unencrypted key the certificate was issued for."
            )
        return pems


def read_pem(flag: str, path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read {flag} {path}: {error.strerror}.") from error
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{flag} {path} is not a PEM file (no -----BEGIN line).")
    return data


@dataclass(frozen=True)
class ServerConfig:
    """The whole server. It serves `models`, each its own engine; `model` is the first, which answers requests that
    name none. Give either (`model=` alone is a one-model server, as before models had names)."""

    model: ModelConfig = None  # type: ignore[assignment]  # set from `models` when not given
    host: str = "[::]"
    port: int = DEFAULT_PORT
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    limits: RequestLimits = field(default_factory=RequestLimits)
    upsampling: UpsampleLimits = field(default_factory=UpsampleLimits)
    shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S
    send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S
    max_pending_reply_bytes: int = DEFAULT_MAX_PENDING_REPLY_BYTES
    auth_token: str | None = field(default=None, repr=False)  # one shared token, named "default"
    tokens_file: Path | None = None  # `name token` per line (or one bare token), reloaded on SIGHUP
    tls: TlsConfig | None = None  # None: plain text on every port
    cache_bytes: int = DEFAULT_CACHE_BYTES  # embedding cache budget, shared out between callers; 0 turns it off
    shared_cache: bool = False  # one cache for every caller: hits across callers, and timing shows their prompts
    log_prompts: bool = False  # prompt text in the per-request log line
    http_port: int | None = None  # the Hugging Face-compatible /predict endpoint; None: not served
    metrics_token_file: Path | None = None  # /metrics in full only with this token; None: open, without
    # per-caller or cache detail
    caller_limits: CallerLimits = field(default_factory=CallerLimits)  # each caller's, unless its tokens line says
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)
    warm_up: bool = True  # one pass at the largest batch before SERVING, so a model that cannot run fails at start
    models: tuple[ModelConfig, ...] = ()  # every model served, the first being the default; () means (model,)

    def __post_init__(self) -> None:
        self._settle_models()
        if self.auth_token is not None and not self.auth_token.strip():
            raise ConfigError("the auth token is empty; put the shared secret in the token file.")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be between 0 and 65535, not {self.port}.")
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            raise ConfigError(f"--http-port must be between 0 and 65535, not {self.http_port}.")
        if self.auth_token is not None and self.tokens_file is not None:
            raise ConfigError("give either a single token or --tokens-file, not both.")
        if self.cache_bytes < 0:
            raise ConfigError(f"--cache-mib must be 0 (off) or more, not {self.cache_bytes // MIB}.")
        if self.limits.max_prompts > self.batching.max_batch_size:
            raise ConfigError(
                f"a request may carry {self.limits.max_prompts} prompts but a pass only "
                f"--max-batch-size {self.batching.max_batch_size}; a request must fit one pass."
            )
        for flag, seconds, low in (
            ("--shutdown-grace-s", self.shutdown_grace_s, 0.0),
            ("--send-timeout-s", self.send_timeout_s, 0.001),
        ):
            if not (math.isfinite(seconds) and low <= seconds <= MAX_SECONDS):
                raise ConfigError(
                    f"{flag} must be a number of seconds between {low:g} and {MAX_SECONDS:g}, not {seconds}."
                )
        if self.max_pending_reply_bytes < self.limits.max_reply_bytes:
            raise ConfigError(
                f"--max-pending-reply-mib ({self.max_pending_reply_bytes // MIB}) must be at least "
                f"--max-reply-mib ({self.limits.max_reply_bytes // MIB}), or the largest request could never run."
            )

    def _settle_models(self) -> None:
        """`model` and `models` say the same: the first model is `model`."""
        if self.model is None and not self.models:
            raise ConfigError("serve at least one model: give --model PATH.")
        if not self.models:
            object.__setattr__(self, "models", (self.model,))
        elif self.model is None:
            object.__setattr__(self, "models", tuple(self.models))
            object.__setattr__(self, "model", self.models[0])
        elif self.model != self.models[0]:
            raise ConfigError("`model` is the first of `models`; give one or the other.")

    @property
    def cache_bytes_per_model(self) -> int:
        """Each model's embedding cache: the budget split equally between the models served."""
        return self.cache_bytes // len(self.models)

    @property
    def max_request_bytes(self) -> int:
        """The receive limit: the largest request the limits allow (upsample requests only where served)."""
        largest = self.limits.max_request_bytes
        if any(model.enable_upsampling for model in self.models):
            largest += self.upsampling.max_request_bytes
        return largest

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"
