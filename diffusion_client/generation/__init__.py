"""`flux2-generate`: `cli` (the command), `jobs` (a job and the prompts file), `preflight` (every check before any
weights load), `generator` (`ImageGenerator`), `pipeline` (loading the NF4 DiT and VAE) and `references` (reference
images, decoded within bounds)."""
