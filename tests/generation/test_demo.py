"""`make demo`'s two steps: `flux2-tiny-model` builds the snapshot, then the script runs the main job end to end
(server up, SERVING, image over gRPC, server down).

Both must print only our own lines on any CPU. bitsandbytes warns on import, on CPUs with AVX512-BF16 only, that
it cannot fetch an optional kernel from the hub; the tests make bitsandbytes believe this CPU has that
instruction set (its own `has_avx512bf16` check answers yes), so its real warning fires on every machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]

# Loaded by every Python process started with it on PYTHONPATH, before the program runs.
AVX512_BF16_SITECUSTOMIZE = """
import importlib.abc, importlib.machinery, sys

class _ClaimAvx512Bf16(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "bitsandbytes.functional":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            module.has_avx512bf16 = lambda: True

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _ClaimAvx512Bf16())
"""


@pytest.fixture(scope="module")
def claimed_avx512_bf16_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a child process whose bitsandbytes believes the CPU has AVX512-BF16."""
    site = tmp_path_factory.mktemp("site")
    (site / "sitecustomize.py").write_text(AVX512_BF16_SITECUSTOMIZE)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO_ROOT)])}


@pytest.fixture(scope="module")
def built(claimed_avx512_bf16_env, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """`make demo`'s first step, `flux2-tiny-model`: the snapshot it wrote and what it printed."""
    snapshot = tmp_path_factory.mktemp("demo") / "tiny-flux2"
    command = [str(Path(sys.executable).parent / "flux2-tiny-model"), str(snapshot)]
    finished = subprocess.run(command, env=claimed_avx512_bf16_env, capture_output=True, text=True, timeout=300)
    return snapshot, finished


def test_building_the_tiny_model_prints_only_its_own_line(built):
    snapshot, finished = built
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.stderr == ""
    (line,) = finished.stdout.splitlines()
    assert line.startswith(f"tiny FLUX.2 snapshot written to {snapshot} (sha256 ")
    assert (snapshot / "model_index.json").is_file()


@pytest.fixture(scope="module")
def built_klein(claimed_avx512_bf16_env, tmp_path_factory) -> Path:
    """`make demo`'s klein snapshot, as `flux2-tiny-model --klein distilled` writes it."""
    snapshot = tmp_path_factory.mktemp("demo-klein") / "tiny-klein"
    command = [str(Path(sys.executable).parent / "flux2-tiny-model"), str(snapshot), "--klein", "distilled"]
    finished = subprocess.run(command, env=claimed_avx512_bf16_env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return snapshot


def test_demo_script_serves_dev_and_klein_generates_marked_images_and_stops_without_library_noise(
    built, built_klein, claimed_avx512_bf16_env, tmp_path
):
    snapshot, _ = built
    env = {
        **claimed_avx512_bf16_env,
        "BIN": str(Path(sys.executable).parent),
        "PYTHON": sys.executable,
        "MODEL": str(snapshot),
        "KLEIN_MODEL": str(built_klein),
        "OUT": str(tmp_path),
        "GENERATE_ARGS": "--height 256 --width 256 --steps 2 --quiet",  # 256x256: the watermark's minimum
        "KLEIN_ARGS": "--height 256 --width 256 --quiet",
        "XDG_CONFIG_HOME": str(tmp_path / "config"),  # a first run: the demo makes its local signing authority
    }
    finished = subprocess.run(
        ["bash", "scripts/demo.sh"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert f"images written: {tmp_path}/demo.png {tmp_path}/demo-klein.png" in finished.stdout
    assert "SERVING" in finished.stdout
    for name in ("demo.png", "demo-klein.png"):
        with Image.open(tmp_path / name) as image:
            assert image.size == (256, 256)
        (verdict,) = [line for line in finished.stdout.splitlines() if line.startswith(f"{tmp_path}/{name}: ")]
        assert "marked: flux2-split watermark found (64 of 64 bits)" in verdict
        assert "C2PA valid but untrusted signer (flux2-split" in verdict
        assert "IPTC source type trainedAlgorithmicMedia" in verdict
    server_log = (tmp_path / "encoder.log").read_text()
    assert "shutting down" in server_log
    everything = finished.stdout + finished.stderr + server_log
    assert "WARNING" not in everything and "bitsandbytes" not in everything, everything
    assert everything.count("signing authority") == 1, everything  # said once, not once per image
    assert all(line.startswith("flux2-generate: note: ") for line in finished.stderr.splitlines()), finished.stderr
