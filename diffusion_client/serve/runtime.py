"""What one `flux2-serve` process (or one Ray Serve replica) runs: `ServeSettings`, a picklable description of
the server, and `ServeRuntime`, which builds the app's state at once and loads the pipeline on a thread, so
`/health` and every request answer 503 "loading" until the model is in memory, and one line says why it failed.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from diffusion_client.provenance.marking import MarkingOptions
from diffusion_client.serve.app import ServeState
from diffusion_client.serve.callers import Callers
from diffusion_client.serve.fields import RequestLimits
from diffusion_client.serve.image_files import ImageFiles
from diffusion_client.serve.service import ImageService, ServiceLimits

if TYPE_CHECKING:
    from diffusion_client.encoder_client.client import RemoteTextEncoder

log = logging.getLogger("flux2-serve")

SWEEP_EVERY_S = 60.0  # expired `url` images are deleted this often


@dataclass(frozen=True)
class ServeSettings:
    """Everything a server process needs, checked by the command: plain values, so Ray can ship it to replicas."""

    model: Path
    model_id: str  # what `model` and `GET /v1/models` call it
    encoder_args: argparse.Namespace  # the encoder flags (`--encoder`, deadlines, TLS), as every command reads them
    encoder_token: str | None
    encoder_model: str | None
    marking: MarkingOptions
    out_dir: Path  # `url` images
    device: str | None = None
    quantize: str = "auto"
    cache_mib: int = 256
    tokens_file: Path | None = None
    metrics_token: str | None = None
    lora_dir: Path | None = None
    public_url: str | None = None
    url_ttl_s: float = 3600.0
    request_limits: RequestLimits = RequestLimits()
    service_limits: ServiceLimits = ServiceLimits()
    max_references: int = 8
    max_image_bytes: int = 20 << 20
    body_deadline_s: float = 60.0


class ServeRuntime:
    """The app's state now, its `ImageService` once the pipeline has loaded: on a thread (one box, which answers
    503 meanwhile), or before the constructor returns (a Ray Serve replica, which gets no traffic until then)."""

    def __init__(self, settings: ServeSettings, *, load_in_background: bool = True) -> None:
        self.settings = settings
        settings.out_dir.mkdir(parents=True, exist_ok=True)
        self.state = ServeState(
            model_id=settings.model_id,
            callers=Callers(settings.tokens_file),
            files=ImageFiles(settings.out_dir, settings.url_ttl_s),
            limits=settings.request_limits,
            size_multiple=16,
            max_references=settings.max_references,
            max_image_bytes=settings.max_image_bytes,
            lora_dir=settings.lora_dir,
            metrics_token=settings.metrics_token,
            public_url=settings.public_url,
            body_deadline_s=settings.body_deadline_s,
        )
        self._stop = threading.Event()
        self._encoder: RemoteTextEncoder | None = None
        self.loaded = threading.Event()  # set once loading ended, well or not
        threading.Thread(target=self._sweep, name="serve-sweep", daemon=True).start()
        if load_in_background:
            threading.Thread(target=self._load, name="serve-load", daemon=True).start()
            return
        self._load()
        if self.state.load_error is not None:
            raise RuntimeError(f"the model failed to load: {self.state.load_error}")

    def _load(self) -> None:
        try:
            self.state.service = self._service()
            log.info("model %s loaded; serving images", self.settings.model_id)
        except Exception as error:
            from diffusion_client.errors import failure_text

            self.state.load_error = failure_text(error)
            log.error("the model failed to load: %s", self.state.load_error)
        finally:
            self.loaded.set()

    def _service(self) -> ImageService:

        from diffusion_client.commands import default_device
        from diffusion_client.encoder_client.flags import open_encoder
        from diffusion_client.errors import TransportError
        from diffusion_client.generation.generator import ImageGenerator
        from diffusion_client.generation.pipeline import PipelineConfig, load_pipeline, model_kind, resolve_quantize
        from diffusion_client.provenance.marking import Marker

        settings = self.settings
        marker = Marker.start(settings.marking)
        device = default_device(settings.device)
        config = PipelineConfig(settings.model, device=device, quantize=resolve_quantize(settings.quantize, device))
        encoder = open_encoder(settings.encoder_args, settings.encoder_token, settings.cache_mib << 20)
        self._encoder = encoder
        pipeline = load_pipeline(config)
        generator = ImageGenerator(
            pipeline,
            encoder,
            model_name=settings.model_id,
            progress=False,
            marker=marker,
            reference_label=lambda path: path.name,  # an upload's name, never where this server kept it
        )
        try:
            generator.prepare([])  # the served model that fits this snapshot; a wrong pairing stops here
        except TransportError as error:
            log.warning("%s; requests will say so until the encoder answers", error)
        return ImageService(
            generator,
            model_kind(settings.model),
            out_dir=settings.out_dir,
            lora_dir=settings.lora_dir,
            limits=settings.service_limits,
            on_image=self.state.metrics.image,
        )

    def _sweep(self) -> None:
        while not self._stop.wait(SWEEP_EVERY_S):
            self.state.files.sweep()

    def drain(self, timeout_s: float) -> bool:
        """Refuse new requests (503) and let the job in flight finish; False if it did not within `timeout_s`."""
        self.state.draining = True
        deadline = time.monotonic() + timeout_s
        self.loaded.wait(timeout_s)
        service = self.state.service
        return service.drain(max(0.0, deadline - time.monotonic())) if service is not None else True

    def close(self) -> None:
        self._stop.set()
        if self._encoder is not None:
            self._encoder.close()
