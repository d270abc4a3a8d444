"""Values both sides agree on: FLUX.2's text-encoder defaults and the service's name."""

from __future__ import annotations

DEFAULT_HIDDEN_STATE_LAYERS: tuple[int, ...] = (10, 20, 30)
DEFAULT_MAX_SEQUENCE_LENGTH = 512
DEFAULT_PORT = 50051
SERVICE_NAME = "flux2.encoder.v1.TextEncoder"

# Upsample: what diffusers' `Flux2Pipeline.upsample_prompt` uses (BFL's recommended temperature, its hard-coded token
# count), the hottest temperature the server accepts (sampling a 131k vocabulary hotter is noise), and the image
# formats it decodes (PIL's names; MPO is how PIL names many camera JPEGs).
DEFAULT_UPSAMPLE_TEMPERATURE = 0.15
DEFAULT_MAX_NEW_TOKENS = 512
MAX_UPSAMPLE_TEMPERATURE = 2.0
UPSAMPLE_IMAGE_FORMATS = ("PNG", "JPEG", "MPO", "WEBP")
