"""What became of each job: one `JobResult` per job, the `results.jsonl` manifest, and the closing summary.

A manifest line: `{"index": 3, "origin": "prompts.jsonl:5", "output": "/out/image-000003.png", "seed": 7,
"seconds": 1.92, "status": "ok", "error": null}`; `status` is `ok` (written by this run), `failed` (`error` says why,
in one line) or `skipped` (the image was there already: written by an earlier run, or by an earlier attempt of a
task whose worker died).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Literal

MANIFEST = "results.jsonl"  # beside the images
Status = Literal["ok", "failed", "skipped"]


@dataclass(frozen=True)
class JobResult:
    index: int
    origin: str
    output: str  # the image's path or URI
    seed: int
    seconds: float  # on its worker, reading its references to writing its file
    status: Status
    error: str | None = None  # one line, for a failed job
    stop_code: int = 0  # not 0: a failure that stops the run (the encoder gone, a worker that cannot load), this exit

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> JobResult:
        return cls(**json.loads(text))

    def manifest_line(self) -> str:
        fields = asdict(self)
        del fields["stop_code"]  # how the run ended is its exit code's business, not the job's
        fields["seconds"] = round(self.seconds, 3)
        # ASCII: a name's U+2028 or U+0085 would end the line for readers that split on every line break.
        return json.dumps(fields, ensure_ascii=True)


def manifest_bytes(results: Iterable[JobResult]) -> bytes:
    """The manifest: one JSON line per job, in job order."""
    lines = [result.manifest_line() + "\n" for result in sorted(results, key=lambda result: result.index)]
    return "".join(lines).encode("utf-8")


def summary(results: Iterable[JobResult], seconds: float) -> str:
    """`12 image(s) written, 1 failed, 3 skipped in 9.4 s (1.28 images/s)`."""
    counts = Counter(result.status for result in results)
    rate = counts["ok"] / seconds if seconds > 0 else 0.0
    return (
        f"{counts['ok']} image(s) written, {counts['failed']} failed, {counts['skipped']} skipped "
        f"in {seconds:.1f} s ({rate:.2f} images/s)"
    )
