"""The upsample benchmark runs end to end in tiny mode and prints one JSON report on stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_upsample_benchmark_tiny_mode_prints_json(tiny_snapshot: Path) -> None:
    command = [sys.executable, "-m", "bench.upsample", "--tiny", "--model", str(tiny_snapshot), "--repeats", "3"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)

    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads(completed.stdout)
    assert report["mode"] == "tiny"
    assert report["upsample"]["latency_s"] > 0 and report["upsample"]["tokens_per_s"] > 0
    assert report["encode_ms_p50_idle"] > 0 and report["encode_ms_p50_beside_upsample"] > 0
