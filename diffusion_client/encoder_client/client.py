"""`RemoteTextEncoder`: FLUX.2 prompt embeddings from a flux2-encoder server, ready for `Flux2Pipeline`.

encoder = RemoteTextEncoder("encoder-box:50051")
image = pipe(prompt_embeds=encoder.encode("a cat"), ...).images[0]
detailed = encoder.upsample("a cat", seed=7)[0]  # on a server started with --enable-upsampling
RemoteTextEncoder("dns:///flux2-encoder:50051", tls_ca="ca.pem", cache_bytes=256 << 20)  # replicas, TLS, cache

Replies are held to the tensor asked for: the server's `GetInfo` (fetched once) gives the dtype and width,
the request gives the rest, and a header announcing anything else is refused before a byte is allocated.
Encode and Upsample requests are checked against the limits `GetInfo` states before they are sent (`InputError`),
and a request gRPC refuses by its size (either side's message limit) is refused at once, never retried.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from diffusion_client.encoder_client.cache import EmbeddingCache
from diffusion_client.encoder_client.calls import RetryingCalls
from diffusion_client.encoder_client.dialing import (
    PemSource,
    channel_target_text,
    open_channel,
    tls_credentials,
)
from diffusion_client.encoder_client.model_choice import choose_model
from diffusion_client.encoder_client.upsampling import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_UPSAMPLE_TEMPERATURE,
    ReferenceImage,
    check_upsample_request,
    check_upsampled,
    read_reference_files,
)
from diffusion_client.errors import (
    BadReplyError,
    InputError,
    ModelMismatchError,
    printable_line,
)
from shared.defaults import DEFAULT_MAX_SEQUENCE_LENGTH
from shared.lru import CacheKey
from shared.protocol import encoder_pb2, encoder_pb2_grpc
from shared.server_info import ServedModel, ServerInfo
from shared.wire import WIRE_ENCODE_METHOD, TensorSpec, WireFormatError, parse_frame, responses_to_tensor

log = logging.getLogger(__name__)


class RemoteTextEncoder(RetryingCalls):
    """A client for `flux2.encoder.v1.TextEncoder` with one deadline per call, retries and verified replies.

    Args:
        target: `host:port` of the server; or replicas, as `"a:50051,b:50051"`, a list of such entries, or a
            `dns:///name:port` target naming all of them, balanced round robin over those reporting SERVING
            (see `diffusion_client.encoder_client.dialing`).
        timeout: seconds each `encode()` or `info()` may take, retries included; positive and finite.
        connect_timeout: until a server has answered once, a call gives up after this many seconds (positive and
            finite) with an `EncoderUnavailableError` saying why: nothing listening, not gRPC, or TLS refused.
            Once one has answered, an unreachable server is retried until `timeout`, as a lost replica is.
        token: sent as `authorization: Bearer <token>` for servers behind an authenticating proxy.
        retries: most extra attempts when the server is UNAVAILABLE or RESOURCE_EXHAUSTED (nothing else is
            retried, nor a message over a size limit); None keeps trying until the deadline.
        backoff_s, max_backoff_s: the first retry delay, doubled each attempt up to the cap, with jitter.
        expected_fingerprint: refuse (`ModelMismatchError`) a server whose weights fingerprint does not
            start with this, to pin a deployment to one model.
        tls: use TLS, verifying the server with the system's root certificates; implied by any `tls_*` file.
        tls_ca: the CA certificate (PEM path or bytes) that signed the server's certificate.
        tls_cert, tls_key: this client's certificate and key (PEM paths or bytes), both or neither, for servers
            that require client certificates (mTLS).
        cache_bytes: keep up to this many bytes of embeddings and fetch each (prompt, length, layers) once;
            0 (the default) keeps none.
        model: which of the server's models to use (a name `GetInfo` lists); None: the server's first, until
            `select_model` picks the one a pipeline needs.
    """

    def __init__(
        self,
        target: str | Sequence[str],
        *,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        token: str | None = None,
        retries: int | None = None,
        backoff_s: float = 0.1,
        max_backoff_s: float = 2.0,
        channel_options: Sequence[tuple[str, Any]] = (),
        expected_fingerprint: str | None = None,
        tls: bool = False,
        tls_ca: PemSource | None = None,
        tls_cert: PemSource | None = None,
        tls_key: PemSource | None = None,
        cache_bytes: int = 0,
        model: str | None = None,
    ) -> None:
        for name, seconds in (("timeout", timeout), ("connect_timeout", connect_timeout)):
            if not (isinstance(seconds, int | float) and math.isfinite(seconds) and seconds > 0):
                raise ValueError(f"{name} must be a positive finite number of seconds, not {seconds!r}")
        if retries is not None and retries < 0:
            raise ValueError(f"retries must be None (until the deadline) or at least 0, not {retries}")
        if not 0 < backoff_s <= max_backoff_s:
            raise ValueError(f"need 0 < backoff_s <= max_backoff_s, not {backoff_s} and {max_backoff_s}")
        self.cache = EmbeddingCache(cache_bytes) if cache_bytes else None  # refuses a negative budget
        credentials = tls_credentials(tls, tls_ca, tls_cert, tls_key)
        self.target = channel_target_text(target)  # the user's words, for messages
        self.tls = credentials is not None
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        # gRPC's own reconnect backoff grows to 2 minutes; cap it at ours so a server that comes back is
        # reached within one retry step, not long after the deadline.
        options = {"grpc.max_reconnect_backoff_ms": int(max_backoff_s * 1000), **dict(channel_options)}
        self._channel = open_channel(target, credentials, options)
        self._closed = False
        self._reached = False  # whether any call has reached a server; until one has, calls stop at connect_timeout
        self._stub = encoder_pb2_grpc.TextEncoderStub(self._channel)
        # Encode's chunks arrive as views into gRPC's buffers (`parse_frame`), copied once into the tensor.
        self._encode_frames = self._channel.unary_stream(
            WIRE_ENCODE_METHOD,
            request_serializer=encoder_pb2.EncodeRequest.SerializeToString,
            response_deserializer=parse_frame,
        )
        self._info: ServerInfo | None = None
        self._upsampling_info: ServerInfo | None = None  # when another of the server's models rewrites prompts
        self._expected_fingerprint = expected_fingerprint
        self.model = model

    def __enter__(self) -> RemoteTextEncoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True  # calls cancelled from here on were cancelled by us, not by a departing server
        self._channel.close()

    def info(self) -> ServerInfo:
        """The server's model description (fetched once, then cached); checks a pinned fingerprint."""
        return self._info_by(time.monotonic() + self.timeout)

    def select_model(self, pipeline: str, joint_attention_dim: int, layers: Sequence[int] = ()) -> ServedModel:
        """Use the served model that feeds `pipeline` at `joint_attention_dim` (or check the one named at start).

        Raises `PipelineMismatchError` when none serves embeddings for that pipeline, naming both sides, and
        `ModelMismatchError` when the width or depth does not fit.
        """
        info = self._unpinned_info(time.monotonic() + self.timeout)  # the pin applies to the model chosen below
        model = choose_model(
            info.models or (info.served(),),
            pipeline=pipeline,
            joint_attention_dim=joint_attention_dim,
            layers=layers,
            name=self.model,
            pinned_fingerprint=self._expected_fingerprint,
            target=self.target,
        )
        if model.name != info.model_name:
            self.model, self._info = model.name, None  # the next GetInfo describes the chosen model
        else:
            self.model = model.name
        self.check_fits(joint_attention_dim, layers or model.default_hidden_state_layers)
        return model

    def check_fits(self, joint_attention_dim: int, layers: Sequence[int] = ()) -> None:
        """Raise `ModelMismatchError` unless these layers' embeddings fit a transformer of that width."""
        info = self.info()
        layers = tuple(layers) or info.default_hidden_state_layers
        produced = info.embedding_dim(layers)
        model = printable_line(info.model_name)
        if produced != joint_attention_dim:
            raise ModelMismatchError(
                f"the encoder at {self.target} serves {model} (hidden size {info.hidden_size} x "
                f"{len(layers)} layers = {produced}), but this transformer expects {joint_attention_dim}; "
                "use an encoder server running the same FLUX.2 model",
                target=self.target,
            )
        if max(layers) > info.max_layer:
            raise ModelMismatchError(
                f"the encoder at {self.target} loaded only {info.max_layer} layers but layer {max(layers)} "
                "is needed; restart it with a larger --max-layer",
                target=self.target,
            )

    def encode(
        self,
        prompts: str | Sequence[str],
        *,
        max_sequence_length: int = DEFAULT_MAX_SEQUENCE_LENGTH,
        layers: Sequence[int] = (),
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """`prompt_embeds` `[B, max_sequence_length, len(layers) * hidden]`, on `device` in `dtype` if given; layers
        default to the model's (10, 20, 30 for FLUX.2-dev, 9, 18, 27 for klein)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        deadline = time.monotonic() + self.timeout  # one deadline for GetInfo (first time) and Encode
        info = self._info_by(deadline)
        layers = tuple(layers) or info.default_hidden_state_layers
        if self.cache is None or not prompts:
            embeds = self._fetch(prompts, max_sequence_length, layers, info, deadline)
        else:
            embeds = self._fetch_cached(self.cache, prompts, max_sequence_length, layers, info, deadline)
        if device is not None or dtype is not None:
            embeds = embeds.to(device=device, dtype=dtype)
        return embeds  # [B, max_sequence_length, len(layers) * hidden_size]

    def _fetch(
        self, prompts: list[str], max_sequence_length: int, layers: tuple[int, ...], info: ServerInfo, deadline: float
    ) -> torch.Tensor:
        self.check_prompts(prompts, info)
        expected = info.embedding_spec(len(prompts), max_sequence_length, layers)
        request = encoder_pb2.EncodeRequest(
            prompts=prompts, max_sequence_length=max_sequence_length, hidden_state_layers=list(layers), model=self.model
        )
        return self._call(lambda options: self._receive(request, expected, options), deadline)  # [B, L, D]

    def check_prompts(self, prompts: Sequence[str], info: ServerInfo | None = None) -> None:
        """Raise `InputError` unless one Encode request may carry `prompts`, by the limits the server states (a server
        stating none, 0, is not checked): the request is then never sent."""
        info = info or self.info()
        most = info.max_prompts_per_request
        if most and len(prompts) > most:
            raise InputError(
                f"{len(prompts)} prompts in one request; the encoder at {self.target} takes at most {most} "
                "(split them into several requests)"
            )
        limit = info.max_prompt_chars
        for index, prompt in enumerate(prompts):
            if limit and len(prompt) > limit:
                which = "the prompt" if len(prompts) == 1 else f"prompt {index}"
                raise InputError(
                    f"{which} is {len(prompt):,} characters; the encoder at {self.target} takes at most {limit:,} "
                    "(it uses only the first 512 tokens anyway)"
                )

    def _fetch_cached(
        self,
        cache: EmbeddingCache,
        prompts: list[str],
        max_sequence_length: int,
        layers: tuple[int, ...],
        info: ServerInfo,
        deadline: float,
    ) -> torch.Tensor:
        """Fetch only the prompts not cached (each once) in one request, then assemble a fresh `[B, L, D]`."""
        keys = {prompt: CacheKey(info.fingerprint, prompt, max_sequence_length, layers) for prompt in prompts}
        rows: dict[str, torch.Tensor] = {}  # each [L, D]
        for prompt, key in keys.items():
            row = cache.get(key)
            if row is not None:
                rows[prompt] = row
        missing = [prompt for prompt in keys if prompt not in rows]
        if missing:
            fetched = self._fetch(missing, max_sequence_length, layers, info, deadline)  # [M, L, D]
            for prompt, row in zip(missing, fetched, strict=True):
                cache.put(keys[prompt], row)  # the cache keeps its own copy
                rows[prompt] = row
            if missing == prompts:
                return fetched  # all new and distinct: the reply itself, which nothing else holds
        return torch.stack([rows[prompt] for prompt in prompts])  # new storage, never the cache's

    def upsample(
        self,
        prompts: str | Sequence[str],
        images: Sequence[Sequence[ReferenceImage]] | None = None,
        *,
        temperature: float = DEFAULT_UPSAMPLE_TEMPERATURE,
        seed: int | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    ) -> list[str]:
        """Detailed rewrites of `prompts`, one per prompt, as diffusers' `Flux2Pipeline.upsample_prompt` makes.

        Args:
            images: None, or one sequence of reference images per prompt (file paths or file bytes; PNG, JPEG
                or WebP), sent as the files are. Either every prompt has images or none does.
            seed: seeds the server's sampling, so the same seed gives the same rewrites; None is unseeded.

        The request is checked against the limits `GetInfo` states (`InputError`) before anything is sent. A
        server started without `--enable-upsampling` refuses it (`EncoderRejectedError`, FAILED_PRECONDITION).
        Rewriting is FLUX.2-dev's (Mistral3's): a client using a klein model sends it to a model of the same server
        that upsamples, if there is one (`upsampling_info`).
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        deadline = time.monotonic() + self.timeout  # one deadline for GetInfo (first time) and Upsample
        info = self._upsampling_info_by(deadline)
        max_bytes = info.max_upsample_image_bytes if info.upsampling_available else None
        files = read_reference_files(len(prompts), images, max_bytes)
        check_upsample_request(info, prompts, files, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
        request = encoder_pb2.UpsampleRequest(
            prompts=[
                encoder_pb2.UpsamplePrompt(prompt=prompt, images=[reference.data for reference in references])
                for prompt, references in zip(prompts, files, strict=True)
            ],
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            seed=seed,
            model=info.model_name if info.models else self.model,  # a server from before names: as before
        )
        reply = self._call(lambda options: self._stub.Upsample(request, **options), deadline)
        return check_upsampled(reply.prompts, len(prompts), max_new_tokens, self.target)

    def upsampling_info(self) -> ServerInfo:
        """`GetInfo` of the model that rewrites prompts: this client's model if it upsamples, else the first of
        the server's models that does (a klein client's prompts are rewritten by FLUX.2-dev's Mistral3 beside
        it), else this client's model (whose `upsampling_available` then says no)."""
        return self._upsampling_info_by(time.monotonic() + self.timeout)

    def _upsampling_info_by(self, deadline: float) -> ServerInfo:
        info = self._info_by(deadline)
        if info.upsampling_available:
            return info
        other = next((model.name for model in info.models if model.upsampling_available), None)
        if other is None:
            return info
        if self._upsampling_info is None or self._upsampling_info.model_name != other:
            asked = encoder_pb2.GetInfoRequest(model=other)
            reply = self._call(lambda options: self._stub.GetInfo(asked, **options), deadline)
            self._upsampling_info = ServerInfo.from_pb(reply)
        return self._upsampling_info

    def _unpinned_info(self, deadline: float) -> ServerInfo:
        if self._info is None:
            asked = encoder_pb2.GetInfoRequest(model=self.model)
            reply = self._call(lambda options: self._stub.GetInfo(asked, **options), deadline)
            self._info = ServerInfo.from_pb(reply)
        return self._info

    def _info_by(self, deadline: float) -> ServerInfo:
        info = self._unpinned_info(deadline)
        expected = self._expected_fingerprint
        if expected and not info.fingerprint.startswith(expected):
            raise ModelMismatchError(
                f"the encoder at {self.target} serves weights {printable_line(info.fingerprint[:16])}, "
                f"not the expected {expected[:16]}; it runs a different model",
                target=self.target,
            )
        return info

    def _receive(
        self, request: encoder_pb2.EncodeRequest, expected: TensorSpec, options: dict[str, Any]
    ) -> torch.Tensor:
        replies = self._encode_frames(request, **options)
        try:
            return responses_to_tensor(replies, expected)
        except WireFormatError as error:
            replies.cancel()  # stop the server streaming bytes we will not read
            raise BadReplyError(
                f"bad reply from the encoder at {self.target}: {printable_line(error)}", target=self.target
            ) from None
