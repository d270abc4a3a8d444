"""The committed generated code matches proto/, so a fresh clone needs no code generation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


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


def test_server_info_carries_every_get_info_field_both_ways():
    import dataclasses

    from shared.protocol import encoder_pb2
    from shared.server_info import ServerInfo

    proto_fields = {field.name for field in encoder_pb2.GetInfoResponse.DESCRIPTOR.fields}
    assert {field.name for field in dataclasses.fields(ServerInfo)} == proto_fields
    info = ServerInfo(
        **{
            field.name: (10, 20, 30) if field.name == "default_hidden_state_layers" else index + 1
            for index, field in enumerate(dataclasses.fields(ServerInfo))
            if field.type in ("int", "tuple[int, ...]")
        },
        **{field.name: field.name for field in dataclasses.fields(ServerInfo) if field.type == "str"},
    )
    assert ServerInfo.from_pb(info.to_pb()) == info
