"""The upsample benchmark runs end to end in tiny mode and prints one JSON report on stdout."""

from __future__ import annotations

from pathlib import Path

from tests.support.cli_runs import bench_report


def test_upsample_benchmark_tiny_mode_prints_json(tiny_snapshot: Path) -> None:
    flags = ["--repeats", "3", "--max-new-tokens", "32"]
    report = bench_report("upsample", "--tiny", "--model", str(tiny_snapshot), *flags, timeout=300)
    assert report["mode"] == "tiny" and report["max_new_tokens"] == 32
    assert 0 < report["upsample"]["new_tokens"] <= 2 * 2 * 32  # re-tokenized text: about, not exactly, 32 each
    assert report["upsample"]["latency_s"] > 0 and report["upsample"]["tokens_per_s"] > 0
    assert report["encode_ms_p50_idle"] > 0 and report["encode_ms_p50_beside_upsample"] > 0
