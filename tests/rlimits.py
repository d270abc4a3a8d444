"""Run a command under lower resource limits: `python -m tests.rlimits NOFILE=256 -- COMMAND...`.

Tests use this instead of `subprocess`'s `preexec_fn`: that forks the test process, which runs gRPC threads
of its own, and a fork there can leave gRPC's poller in the child printing errors into the output a test reads.
"""

from __future__ import annotations

import os
import resource
import signal
import sys


def limited(command: list[str], **limits: int) -> list[str]:
    """`command`, started under `limits` (resource names without `RLIMIT_`, soft and hard alike)."""
    settings = [f"{name}={value}" for name, value in limits.items()]
    return [sys.executable, "-m", "tests.rlimits", *settings, "--", *command]


def main(argv: list[str]) -> None:
    split = argv.index("--")
    for setting in argv[:split]:
        name, value = setting.split("=")
        resource.setrlimit(getattr(resource, f"RLIMIT_{name}"), (int(value), int(value)))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the size limit a write fails (EFBIG) instead of killing
    command = argv[split + 1 :]
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
