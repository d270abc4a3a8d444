"""gRPC server for FLUX.2 prompt embeddings."""

__version__ = "0.1.0"
