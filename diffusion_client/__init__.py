"""FLUX.2 generation with remote prompt embeddings: `RemoteTextEncoder` plus a 4-bit pipeline."""

from diffusion_client.remote_encoder import RemoteEncoderInfo, RemoteTextEncoder

__all__ = ["RemoteEncoderInfo", "RemoteTextEncoder"]
