"""Values both sides agree on: FLUX.2's text-encoder defaults and the service's name."""

from __future__ import annotations

DEFAULT_HIDDEN_STATE_LAYERS: tuple[int, ...] = (10, 20, 30)
DEFAULT_MAX_SEQUENCE_LENGTH = 512
DEFAULT_PORT = 50051
SERVICE_NAME = "flux2.encoder.v1.TextEncoder"
