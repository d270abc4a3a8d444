"""`diffusion_client`'s public API is pinned: what users import from the package, loaded lazily."""

from __future__ import annotations

import subprocess
import sys

import diffusion_client

PUBLIC = [
    "BadReplyError",
    "ClientError",
    "EncoderCallError",
    "EncoderError",
    "EncoderFailedError",
    "EncoderRejectedError",
    "EncoderTimeoutError",
    "EncoderUnavailableError",
    "FailedJob",
    "GeneratedImage",
    "GenerationJob",
    "ImageGenerator",
    "InputError",
    "LoraSpec",
    "Marker",
    "MarkingOptions",
    "ModelMismatchError",
    "PipelineConfig",
    "PipelineMismatchError",
    "PreparedJob",
    "RemoteTextEncoder",
    "ServerInfo",
    "TransportError",
    "jobs_from_file",
    "load_pipeline",
    "model_kind",
]


def test_the_public_names_are_exactly_the_pinned_ones():
    assert diffusion_client.__all__ == PUBLIC


def test_every_public_name_resolves_to_what_its_module_defines():
    for name in PUBLIC:
        value = getattr(diffusion_client, name)
        assert getattr(value, "__name__", name) == name


def test_importing_the_package_loads_neither_torch_nor_grpc():
    code = "import sys, diffusion_client; print(any(m in sys.modules for m in ('torch', 'grpc', 'diffusers')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_an_unknown_name_is_an_attribute_error():
    try:
        _ = diffusion_client.RemoteEncoderInfo  # type: ignore[attr-defined]  # an alias that is gone
    except AttributeError as error:
        assert "RemoteEncoderInfo" in str(error)
    else:
        raise AssertionError("RemoteEncoderInfo should be gone")
