"""FLUX.2 generation with remote prompt embeddings: `RemoteTextEncoder` plus a 4-bit pipeline.

The names below load on first use, so `import diffusion_client.cli` (and `flux2-generate --help`) does not
pull in grpc and torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusion_client.remote_encoder import RemoteEncoderInfo, RemoteTextEncoder

__all__ = ["RemoteEncoderInfo", "RemoteTextEncoder"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from diffusion_client import remote_encoder

        return getattr(remote_encoder, name)
    raise AttributeError(f"module 'diffusion_client' has no attribute {name!r}")
