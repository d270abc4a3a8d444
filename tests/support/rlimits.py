"""Run a command under lower resource limits: `python -m tests.support.rlimits NOFILE=256 -- COMMAND...`; or measure its
peak memory: `python -m tests.support.rlimits --peak -- COMMAND...` (`measured`, `peak_rss_kib`).

Tests use this instead of `subprocess`'s `preexec_fn`: that forks the test process, which runs gRPC threads
of its own, and a fork there can leave gRPC's poller in the child printing errors into the output a test reads.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys

PEAK = "tests.support.rlimits: peak resident KiB "


def limited(command: list[str], **limits: int) -> list[str]:
    """`command`, started under `limits` (resource names without `RLIMIT_`, soft and hard alike)."""
    settings = [f"{name}={value}" for name, value in limits.items()]
    return [sys.executable, "-m", "tests.support.rlimits", *settings, "--", *command]


def measured(command: list[str]) -> list[str]:
    """`command`, run as the only child of a Python that then prints its peak resident memory (`peak_rss_kib`)."""
    return [sys.executable, "-m", "tests.support.rlimits", "--peak", "--", *command]


def peak_rss_kib(stderr: str) -> tuple[int, str]:
    """A `measured` run's stderr: the command's peak resident memory in KiB, and the command's own stderr."""
    own, _, peak = stderr.rpartition(PEAK)
    return int(peak), own


def main(argv: list[str]) -> None:
    if argv[0] == "--peak":  # the command's ru_maxrss alone: this process's only child
        finished = subprocess.run(argv[argv.index("--") + 1 :])
        print(f"{PEAK}{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}", file=sys.stderr)
        sys.exit(finished.returncode)
    split = argv.index("--")
    for setting in argv[:split]:
        name, value = setting.split("=")
        resource.setrlimit(getattr(resource, f"RLIMIT_{name}"), (int(value), int(value)))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the size limit a write fails (EFBIG) instead of killing
    command = argv[split + 1 :]
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
