"""`flux2-train-lora`: LoRA training for the FLUX.2 DiT with captions encoded by a flux2-encoder server.

data        the examples: images with captions (folder + .txt, or metadata.jsonl), checked before weights load
captions    each distinct caption encoded once by the server, cached on disk by the server's fingerprint
latents     each image through the VAE once, cached on disk; the VAE then leaves the device
objective   one loss: diffusers' FLUX.2 flow-matching step (timestep sampling and weighting from
            `diffusers.training_utils`, latents packed by `Flux2Pipeline`'s own helpers)
checkpoints adapter, optimizer and RNG state written atomically; the final LoRA in diffusers' format
trainer     the loop: peft adapters on the DiT, AdamW, accumulation, checkpoints, validation images, signals
cli         the command line
"""
