"""The training benchmark runs end to end in tiny mode and prints one JSON report on stdout."""

from __future__ import annotations

from pathlib import Path

from tests.support.cli_runs import bench_report


def test_train_benchmark_tiny_mode_prints_json(tiny_snapshot: Path) -> None:
    report = bench_report("train", "--tiny", "--model", str(tiny_snapshot), "--steps", "4", timeout=300)
    assert report["mode"] == "tiny" and report["steps"] == 4
    assert report["seconds_per_step"] > 0 and report["peak_memory_bytes"] > 0
    assert report["captions_from_disk"] == 4 and report["caption_cache_hit_ms"] > 0
