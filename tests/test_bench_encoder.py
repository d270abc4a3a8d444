"""The encoder benchmark runs end to end in tiny mode and prints one JSON report on stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_encoder_benchmark_tiny_mode_prints_json(tiny_snapshot: Path) -> None:
    # Reusing the session's snapshot skips a rebuild; short windows keep the run to seconds.
    command = [
        sys.executable,
        "-m",
        "bench.encoder",
        "--tiny",
        "--concurrency",
        "1",
        "4",
        "--model",
        str(tiny_snapshot),
    ]
    command += ["--warmup-s", "0.2", "--duration-s", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)

    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads(completed.stdout)
    assert report["mode"] == "tiny"
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
    assert "meets_targets" not in report  # targets are stated for full size only
