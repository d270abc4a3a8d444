"""LoRA adapters for the FLUX.2 DiT: which files to apply at what scale (`specs`), checking a file against the
transformer before any weights load (`files`), and switching adapters on a loaded pipeline between jobs
(`adapters`). Files in diffusers', kohya's and BFL/ai-toolkit's key layouts all load: diffusers' own
`Flux2Pipeline.lora_state_dict` converts them."""
