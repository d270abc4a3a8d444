"""The committed generated code matches proto/, so a fresh clone needs no code generation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _load_generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("generate_python", REPO / "proto" / "generate_python.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_python_code_is_up_to_date(tmp_path):
    generator = _load_generator()
    for fresh in generator.generate(tmp_path):
        committed = REPO / "shared" / "protocol" / fresh.name
        assert committed.read_text() == fresh.read_text(), f"{committed} is stale: run `make proto`"
