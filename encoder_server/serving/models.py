"""The models one server serves, by name: an `EncoderEngine` each, and the routing of a request to one.

`flux2-encoder serve --model /models/FLUX.2-dev --model /models/FLUX.2-klein-9B` serves both. Each model has its
own engine (its loading and warm-up, its batcher and forward thread, its cache) and is named by `ModelConfig.name`,
else by its snapshot's display name; a request naming no model gets the first. What one server holds is shared
fairly between them: one `ReplyBudget` for all replies in memory, the cache budget split equally, one metrics
registry. Models load one after another (transformers sets process-wide defaults while it loads), and the server
reports SERVING once every one has. Nothing here imports grpc.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

from encoder_server.config import ConfigError, ModelConfig, ServerConfig, model_name_problem
from encoder_server.errors import ModelLoadError, ModelNotFoundError, NotEnabledError, NotReadyError
from encoder_server.model.loaded_models import load_models
from encoder_server.model.loading import model_display_name
from encoder_server.model.prompt_encoder import PromptEncoder
from encoder_server.model.upsampler import UpsampleRequest
from encoder_server.observability.metrics import ServerMetrics
from encoder_server.serving.engine import EncoderEngine, EncoderLoader, ReplyBudget
from shared.server_info import ServerInfo

SHOWN_NAME_CHARS = 100  # of a name a request asked for, in the error that says it is not served


def model_name(model: ModelConfig) -> str:
    """What requests call `model`: its `name`, else its snapshot's display name (`org/name` or the folder's), which
    must pass the rule `name=` does (`ConfigError` asking for a `,name=` otherwise)."""
    if model.name is not None:
        return model.name
    name = model_display_name(model.model_path)
    if problem := model_name_problem(name):
        raise ConfigError(
            f"--model {str(model.model_path)!r} would be named after its folder, but {problem}; give it a name with "
            ",name=NAME after its path."
        )
    return name


class ServedEngines:
    """Every model a server serves, by name, the first being the one a request naming none gets."""

    def __init__(self, engines: Sequence[EncoderEngine]) -> None:
        names = [engine.name for engine in engines]
        if not engines or None in names:
            raise ValueError("ServedEngines needs at least one engine, each with its name")
        self._engines: dict[str, EncoderEngine] = {engine.name: engine for engine in engines if engine.name}
        if len(self._engines) != len(engines):
            raise ValueError(f"engine names must differ: {names}")

    @classmethod
    def build(
        cls, config: ServerConfig, metrics: ServerMetrics | None = None, load_first: EncoderLoader | None = None
    ) -> ServedEngines:
        """An engine per model of `config`, sharing one reply budget and `metrics`, each with an equal share of the
        cache; `load_first` replaces loading the first model (tests and benchmarks hand it a ready encoder).

        Raises `ConfigError` when two models would have the same name."""
        names = [model_name(model) for model in config.models]
        if duplicates := sorted({name for name in names if names.count(name) > 1}):
            raise ConfigError(
                f"two --model options are both named {duplicates[0]!r}; give each its own with ,name=NAME after its "
                "path (requests pick a model by name)."
            )
        metrics = metrics or ServerMetrics()
        budget = ReplyBudget(config.max_pending_reply_bytes)
        engines = []
        for index, (model, name) in enumerate(zip(config.models, names, strict=True)):
            loader = load_first if index == 0 and load_first is not None else _loader(model, config)
            engines.append(
                EncoderEngine(
                    config,
                    loader,
                    metrics,
                    model=model,
                    name=name,
                    budget=budget,
                    cache_bytes=config.cache_bytes_per_model,
                )
            )
        return cls(engines)

    @property
    def default(self) -> EncoderEngine:
        """The first model's engine: what a request naming no model gets."""
        return next(iter(self._engines.values()))

    @property
    def names(self) -> list[str]:
        return list(self._engines)

    @property
    def metrics(self) -> ServerMetrics:
        return self.default.metrics

    def __iter__(self) -> Iterator[EncoderEngine]:
        return iter(self._engines.values())

    def __len__(self) -> int:
        return len(self._engines)

    def engine_for(self, name: str | None) -> EncoderEngine:
        """The engine of the model named `name`; None: the first. Raises `ModelNotFoundError` listing the names."""
        if name is None:
            return self.default
        engine = self._engines.get(name)
        if engine is None:
            shown = name[:SHOWN_NAME_CHARS] + ("..." if len(name) > SHOWN_NAME_CHARS else "")
            raise ModelNotFoundError(
                f"this server serves no model named {shown!r}; it serves {', '.join(self._engines)} "
                "(a request naming none gets the first)"
            )
        return engine

    def ready_engine_for(self, name: str | None) -> EncoderEngine:
        """`engine_for`, but UNAVAILABLE (`NotReadyError`) until every model has loaded: a forward pass never runs
        beside another model's load and warm-up (transformers sets process-wide defaults while loading), and no
        caller is served while health still says NOT_SERVING."""
        engine = self.engine_for(name)
        if len(self) > 1 and not self.serving():
            loading = ", ".join(repr(other.name) for other in self if not other.loaded)
            raise NotReadyError(f"the server is still loading {loading}; retry when health reports SERVING")
        return engine

    def info(self, name: str | None = None) -> ServerInfo:
        """`GetInfo` for the model named `name` (None: the first), listing every model served, the first first.

        UNAVAILABLE (`NotReadyError`) until every model has loaded, so no reply lists only some of them."""
        engine = self.ready_engine_for(name)
        return dataclasses.replace(engine.info(), models=tuple(other.served() for other in self))

    def serving(self) -> bool:
        """Whether every model has loaded."""
        return all(engine.loaded for engine in self)

    async def load(self) -> PromptEncoder:
        """Load every model, one after another; the first model's encoder. A failure names the model when there are
        several."""
        encoders = []
        for engine in self:
            try:
                encoders.append(await engine.load())
            except ModelLoadError as error:
                if len(self) == 1:
                    raise
                raise ModelLoadError(f"model {engine.name!r} ({engine.model.model_path}): {error}") from error
        return encoders[0]

    async def upsample(self, request: UpsampleRequest, name: str | None = None) -> list[str]:
        """Upsample on the model named `name` (None: the first); if it does not upsample, name one that does."""
        engine = self.engine_for(name)
        upsamplers = [other.name for other in self if other.model.enable_upsampling]
        if not engine.model.enable_upsampling and upsamplers:  # what the server was started with: said even mid-load
            raise NotEnabledError(
                f"{engine.name} does not upsample prompts; {upsamplers[0]} does: name it in the request's model field"
            )
        return await self.ready_engine_for(name).upsample(request)

    def set_callers(self, names: Sequence[str]) -> None:
        """The callers now allowed: each model's cache shares its budget between them."""
        for engine in self:
            engine.set_callers(names)

    async def close(self) -> None:
        for engine in self:
            await engine.close()


def _loader(model: ModelConfig, config: ServerConfig) -> EncoderLoader:
    return lambda: load_models(model, config.limits, config.upsampling)
