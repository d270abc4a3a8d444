"""`flux2-studio`: a web page on the generator box, a thin Gradio layer over the client's own pieces.

form.py      what the page sends, checked into a `PageRequest` (one-line `InputError`s)
loras.py     the LoRA files `--lora-dir` offers, picked by name with a scale each
studio.py    `Studio`: the plain object that runs page requests one at a time on the loaded pipeline
page.py      the Gradio Blocks: components, events, the session's gallery
auth.py      `--auth-file` credentials
cli.py       flags, loading the pipeline once, launching the page
"""
