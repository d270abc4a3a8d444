"""What the wire benchmark (`bench.wire`) and its stub server (`bench.stub_server`, in a child process) agree on:
the embedding a prompt gets, the batch size, and how a process's CPU time and page faults are read."""

from __future__ import annotations

import resource
from dataclasses import dataclass

from shared.defaults import DEFAULT_HIDDEN_STATE_LAYERS, DEFAULT_MAX_SEQUENCE_LENGTH
from shared.wire import TensorSpec

MAX_BATCH_SIZE = 16


@dataclass(frozen=True)
class Embedding:
    """What the stub returns per prompt: `[max_sequence_length, len(layers) * hidden_size]` of `dtype`."""

    dtype: str
    hidden_size: int
    max_sequence_length: int = DEFAULT_MAX_SEQUENCE_LENGTH
    layers: tuple[int, ...] = DEFAULT_HIDDEN_STATE_LAYERS

    @property
    def width(self) -> int:
        return len(self.layers) * self.hidden_size

    def spec(self, prompts: int) -> TensorSpec:
        return TensorSpec(self.dtype, (prompts, self.max_sequence_length, self.width))

    @property
    def bytes_per_prompt(self) -> int:
        return self.spec(1).byte_length


def process_usage() -> tuple[float, int]:
    """This process's CPU seconds (user and system, all threads) and minor page faults so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_minflt
