"""`make demo`'s script runs the main job end to end: server up, SERVING, image over gRPC, server down."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_demo_script_starts_server_generates_image_and_stops(tiny_snapshot, tmp_path):
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "BIN": str(bin_dir),
        "PYTHON": sys.executable,
        "MODEL": str(tiny_snapshot),
        "OUT": str(tmp_path),
        "GENERATE_ARGS": "--height 64 --width 64 --steps 2 --quiet",
    }
    finished = subprocess.run(
        ["bash", "scripts/demo.sh"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert f"image written to {tmp_path}/demo.png" in finished.stdout
    assert "SERVING" in finished.stdout
    with Image.open(tmp_path / "demo.png") as image:
        assert image.size == (64, 64)
    assert "shutting down" in (tmp_path / "encoder.log").read_text()
