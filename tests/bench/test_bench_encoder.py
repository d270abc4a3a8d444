"""The encoder benchmark runs end to end in tiny mode and prints one JSON report on stdout."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support.cli_runs import bench_report
from tests.support.helpers import TINY_EMBED_DIM


def run_encoder_benchmark(snapshot: Path, *options: str) -> dict[str, Any]:
    # Reusing the session's snapshot skips a rebuild; short windows keep the run to seconds.
    window = ("--warmup-s", "0.2", "--duration-s", "1")
    return bench_report("encoder", "--tiny", "--model", str(snapshot), *options, *window, timeout=280)


def test_encoder_benchmark_tiny_mode_prints_json(tiny_snapshot: Path) -> None:
    report = run_encoder_benchmark(tiny_snapshot, "--concurrency", "1", "4")

    assert report["mode"] == "tiny" and report["dtype"] == "float32"  # the server's default on the CPU
    assert report["model"]["weights"] == "snapshot" and report["model"]["max_layer"] == 30
    results = {entry["concurrency"]: entry for entry in report["results"]}
    assert sorted(results) == [1, 4]
    for entry in results.values():
        assert entry["errors"] == 0 and entry["requests"] > 0
        assert entry["prompts_per_s"] > 0
        assert entry["latency_ms_p50"] <= entry["latency_ms_p95"]
        assert entry["forward_passes"] > 0 and entry["mean_batch_size"] >= 1
    in_process = report["in_process"]
    assert in_process["diffusers_full_forward_ms"] > 0 and in_process["truncated_forward_ms"] > 0
    assert report["ratios"]["grpc_latency_vs_in_process_truncated"] > 0
    assert report["request"]["response_bytes"] == 512 * TINY_EMBED_DIM * 4
    assert "quantized" not in report
    assert "meets_targets" not in report  # targets are stated for full size only
    [klein] = report["klein"]  # the tiny [klein] snapshot, measured like the dev one
    assert (klein["model"]["family"], klein["model"]["max_layer"]) == ("qwen3", 27)
    assert klein["model"]["default_hidden_state_layers"] == [9, 18, 27]
    assert [entry["concurrency"] for entry in klein["results"]] == [1, 4]
    assert all(entry["errors"] == 0 and entry["prompts_per_s"] > 0 for entry in klein["results"])
    assert klein["in_process"]["diffusers_full_forward_ms"] > 0 and klein["in_process"]["truncated_forward_ms"] > 0
    two = report["two_models"]  # both from one server, half the clients asking each
    assert two["models"] == ["dev", "klein"] and two["clients_per_model"] == 2
    for entry in two["per_model"].values():
        assert entry["clients"] == 2 and entry["errors"] == 0 and entry["prompts_per_s"] > 0
    assert two["prompts_per_s_total"] == sum(entry["prompts_per_s"] for entry in two["per_model"].values())


def test_encoder_benchmark_quantize_reports_weights_throughput_and_drift_per_mode(tiny_snapshot: Path) -> None:
    report = run_encoder_benchmark(tiny_snapshot, "--quantize", "none,int8,nf4", "--concurrency", "1")

    assert report["dtype"] == "bfloat16"  # the reference for int8 and nf4, which compute in bf16
    assert report["model"]["quantization"] == "none"
    quantized = report["quantized"]
    assert sorted(quantized) == ["int8", "nf4"]
    weight_bytes = {mode: quantized[mode]["model"]["weight_bytes"] for mode in quantized}
    assert 0 < weight_bytes["nf4"] < weight_bytes["int8"] < report["model"]["weight_bytes"]
    for mode, measured in quantized.items():
        assert measured["model"]["quantization"] == mode and measured["model"]["weight_gib"] >= 0
        [entry] = measured["results"]
        assert entry["concurrency"] == 1 and entry["errors"] == 0 and entry["prompts_per_s"] > 0
        assert entry["latency_ms_p50"] <= entry["latency_ms_p95"]
        assert measured["in_process"]["truncated_forward_ms"] > 0
        assert measured["ratios"]["prompts_per_s_vs_bf16"]["1"] > 0
        drift = measured["drift"]
        assert drift["against"] == "none" and drift["prompts"] == 8
        assert [layer["layer"] for layer in drift["layers"]] == [10, 20, 30]
        for layer in drift["layers"]:  # close to bf16, not equal
            assert 0 < layer["min_token_cosine"] < 1 and 0 < layer["relative_error"] < 1, (mode, layer)
    int8, nf4 = (quantized[mode]["drift"]["layers"] for mode in ("int8", "nf4"))
    assert all(ours["relative_error"] < theirs["relative_error"] for ours, theirs in zip(int8, nf4, strict=True))
    assert "meets_targets" not in report
    [klein] = report["klein"]
    assert klein["model"]["quantization"] == "none" and sorted(klein["quantized"]) == ["int8", "nf4"]
    klein_bytes = {mode: klein["quantized"][mode]["model"]["weight_bytes"] for mode in ("int8", "nf4")}
    assert 0 < klein_bytes["nf4"] < klein_bytes["int8"] < klein["model"]["weight_bytes"]
    for measured in klein["quantized"].values():
        assert [layer["layer"] for layer in measured["drift"]["layers"]] == [9, 18, 27]
        assert measured["results"][0]["errors"] == 0 and measured["results"][0]["prompts_per_s"] > 0


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_random_encoder_quantization_matches_transformers_bitsandbytes_loading(tiny_snapshot: Path, mode: str) -> None:
    # Full size quantises random weights with `quantize_linears`; on the same weights it must give exactly what
    # transformers' bitsandbytes loading gives (what the server does), so its numbers stand for a snapshot's.
    from transformers import BitsAndBytesConfig, Mistral3ForConditionalGeneration

    from bench.random_models import quantize_linears

    config = {
        "int8": BitsAndBytesConfig(load_in_8bit=True),
        "nf4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16),
    }[mode]
    load = functools.partial(
        Mistral3ForConditionalGeneration.from_pretrained, tiny_snapshot / "text_encoder", dtype=torch.bfloat16
    )
    ours = load().model.language_model.eval()
    quantize_linears(ours, "cpu", mode)
    theirs = load(quantization_config=config, device_map="cpu").model.language_model

    assert ours.get_memory_footprint() == theirs.get_memory_footprint()
    input_ids = torch.randint(0, 131072, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(ours(input_ids=input_ids).last_hidden_state, theirs(input_ids=input_ids).last_hidden_state)
