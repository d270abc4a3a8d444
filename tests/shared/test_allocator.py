"""The allocator tuning applies on glibc Linux, once, and is a no-op elsewhere."""

from __future__ import annotations

import platform
import subprocess
import sys


def test_tune_allocator_applies_once_on_glibc_and_nowhere_else():
    code = "from shared.allocator import tune_allocator; print(tune_allocator(), tune_allocator())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    on_glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert result.stdout.split() == [str(on_glibc)] * 2
