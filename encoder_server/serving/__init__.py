"""The serving core: the engine, dynamic batcher, embedding cache, per-caller quotas, warm-up."""
