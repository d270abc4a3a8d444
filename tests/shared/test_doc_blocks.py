"""The command blocks of the README and docs/ marked `<!-- runnable ... -->` run on the tiny model, as written (with
this machine's ports and folders put in), so the docs cannot rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli_runs import free_port

ROOT = Path(__file__).resolve().parents[2]
MARK = re.compile(r"<!-- runnable[^>]*-->\n```(?:sh|bash)\n(.*?)```", re.DOTALL)


def runnable_blocks() -> list[tuple[str, str]]:
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for number, match in enumerate(MARK.finditer(path.read_text()), start=1):
            found.append((f"{path.relative_to(ROOT)}#{number}", match.group(1)))
    return found


def test_the_readme_has_a_runnable_block():
    assert any(name.startswith("README.md") for name, _ in runnable_blocks())


@pytest.mark.parametrize(("name", "block"), runnable_blocks(), ids=[name for name, _ in runnable_blocks()])
def test_a_runnable_block_runs_on_the_tiny_model(name, block, tiny_snapshot, tmp_path):
    port = str(free_port())
    script = block.replace(".venv/bin/", f"{Path(sys.executable).parent}/").replace("50051", port)
    script = script.replace(".cache/tiny-flux2", str(tmp_path / "tiny-flux2"))
    (tmp_path / "out").mkdir()
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # Background servers the block starts stop with it.
    wrapped = f"set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{script}"
    finished = subprocess.run(
        ["bash", "-c", wrapped], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600
    )
    assert finished.returncode == 0, f"{name}:\n{finished.stdout[-2000:]}\n{finished.stderr[-4000:]}"
