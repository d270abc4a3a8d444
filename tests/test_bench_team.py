"""The team-service benchmark runs end to end in tiny mode and prints one JSON report on stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_team_benchmark_tiny_mode_reports_every_run(tiny_snapshot: Path) -> None:
    command = [sys.executable, "-m", "bench.team", "--tiny", "--model", str(tiny_snapshot)]
    command += ["--clients", "2", "--requests", "4"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads(completed.stdout)

    runs = report["runs"]
    assert set(runs) == {"grpc_cache_on", "grpc_cache_off", "grpc_two_replicas", "http_predict", "grpc_tls"}
    for run in runs.values():
        assert run["requests"] == 8 and run["prompts_per_s"] > 0
        assert run["latency_ms_p50"] <= run["latency_ms_p99"]
    # Half the requests repeat a prompt: with the cache some are never computed; without it every one is.
    assert runs["grpc_cache_on"]["prompts_computed"] < 8 and runs["grpc_cache_on"]["cache_hits"] > 0
    assert runs["grpc_cache_off"]["prompts_computed"] == 8 and runs["grpc_cache_off"]["cache_hits"] == 0
    assert all(ratio > 0 for ratio in report["ratios"].values())
