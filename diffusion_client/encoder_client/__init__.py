"""The connection to `flux2-encoder`, importing no diffusers: `client` (`RemoteTextEncoder`), `calls` (deadlines,
retries, gRPC status to one error), `dialing` (targets, replicas, channels, TLS files, why nothing answered),
`upsampling` (request checks, reference files), `cache` (embeddings already fetched), `model_choice` (which served
model fits a transformer) and `flags` (the encoder flags every command shares)."""
