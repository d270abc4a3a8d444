"""The upsample benchmark runs end to end in tiny mode and prints one JSON report on stdout."""

from __future__ import annotations

from pathlib import Path

from tests.support.cli_runs import bench_report


def test_upsample_benchmark_tiny_mode_prints_json(tiny_snapshot: Path) -> None:
    report = bench_report("upsample", "--tiny", "--model", str(tiny_snapshot), "--repeats", "3", timeout=300)
    assert report["mode"] == "tiny"
    assert report["upsample"]["latency_s"] > 0 and report["upsample"]["tokens_per_s"] > 0
    assert report["encode_ms_p50_idle"] > 0 and report["encode_ms_p50_beside_upsample"] > 0
