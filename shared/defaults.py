"""Values both sides agree on: FLUX.2's text-encoder defaults and the service's name."""

from __future__ import annotations

DEFAULT_HIDDEN_STATE_LAYERS: tuple[int, ...] = (10, 20, 30)
DEFAULT_MAX_SEQUENCE_LENGTH = 512
DEFAULT_PORT = 50051
SERVICE_NAME = "flux2.encoder.v1.TextEncoder"

# Upsample: what diffusers' `Flux2Pipeline.upsample_prompt` uses (BFL's recommended temperature, its hard-coded token
# count), the temperatures the server accepts (sampling a 131k vocabulary hotter than 2 is noise; colder than 0.01 it
# is already greedy, and below about 1e-37 the scaled logits overflow float32 and sampling fails), and the image
# formats it decodes (PIL's names; MPO is how PIL names many camera JPEGs).
DEFAULT_UPSAMPLE_TEMPERATURE = 0.15
DEFAULT_MAX_NEW_TOKENS = 512
MIN_UPSAMPLE_TEMPERATURE = 0.01
MAX_UPSAMPLE_TEMPERATURE = 2.0
UPSAMPLE_IMAGE_FORMATS = ("PNG", "JPEG", "MPO", "WEBP")
# Reference image shapes Pixtral's processing handles (measured with transformers 5.23 on FLUX.2's processor: 14-px
# patches merged 2x2, long edge scaled to 1540 px). An image no more than 28 px a side becomes a single image
# token, which Mistral3 fails to split; past about 1500:1 the short side scales to 0 px and the processor fails.
# From 55:1 (1540 / 28) the short side is already stretched to fill one token, so 50:1 is the widest kept.
MIN_UPSAMPLE_IMAGE_SIDE = 32
MAX_UPSAMPLE_IMAGE_ASPECT = 50
