"""The client benchmark runs end to end in tiny mode and prints one JSON report on stdout."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from tests.support.cli_runs import bench_report, run_bench


def test_client_benchmark_tiny_mode_prints_json(tiny_snapshot: Path) -> None:
    # Reusing the session's snapshot skips a rebuild; the benchmark builds its own when --model is left out.
    report = bench_report("client", "--tiny", "--model", str(tiny_snapshot), timeout=240)
    assert report["mode"] == "tiny"
    assert report["seconds_per_step"] > 0
    assert len(report["step_seconds"]) == report["settings"]["steps"] - 1
    assert report["bare_transformer_step_s"] > 0
    assert report["step_over_bare"] > 0
    assert 0 < report["decode_to_pil_s"] < report["image_s"]
    assert report["peak_memory_bytes"] > 0
    assert report["remote"]["images"] == report["monolithic"]["images"] == 4
    assert report["remote"]["seconds_per_image"] > 0
    assert report["monolithic"]["seconds_per_image"] > 0
    assert report["remote_over_monolithic"] > 0
    assert report["encoder"]["where"] == "in-process server thread (CPU)"
    assert report["targets"]["peak_gpu_memory_gib_max"] == 20.0
    assert report["meets_targets"] is None  # targets are stated for full size only


def test_random_dit_has_flux2_dev_shapes() -> None:
    # Full size builds `Flux2Transformer2DModel()`: its defaults must stay black-forest-labs/FLUX.2-dev's config.
    from diffusers import Flux2Transformer2DModel

    flux2_dev = {
        "patch_size": 1,
        "in_channels": 128,
        "out_channels": None,
        "num_layers": 8,
        "num_single_layers": 48,
        "attention_head_dim": 128,
        "num_attention_heads": 48,
        "joint_attention_dim": 15360,
        "timestep_guidance_channels": 256,
        "mlp_ratio": 3.0,
        "axes_dims_rope": (32, 32, 32, 32),
        "rope_theta": 2000,
        "eps": 1e-6,
        "guidance_embeds": True,
    }
    defaults = inspect.signature(Flux2Transformer2DModel.__init__).parameters
    assert {name: defaults[name].default for name in flux2_dev} == flux2_dev


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA, so --full-size would run")
@pytest.mark.parametrize("benchmark", ["client", "encoder"])
def test_full_size_without_cuda_exits_2_with_one_error_line(benchmark: str) -> None:
    completed = run_bench(benchmark, "--full-size", timeout=120)

    assert completed.returncode == 2
    assert completed.stdout == ""
    # Libraries may log lines of their own; ours is the only one that starts with "error:".
    errors = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: --full-size needs a CUDA GPU, but torch.cuda.is_available() is False"]
