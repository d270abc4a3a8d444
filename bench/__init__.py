"""Benchmarks of the split pipeline; run them as scripts, e.g. `python bench/encoder.py --tiny`.

They use random weights or local snapshots only, so Hugging Face libraries are made to work offline unless the
environment says otherwise. That is done here, on import of the package, because every script imports `bench.*`
before any of those libraries.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
