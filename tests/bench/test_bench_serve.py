"""The service benchmark runs end to end in tiny mode through the `openai` SDK and prints one JSON report."""

from __future__ import annotations

from pathlib import Path

from tests.support.cli_runs import bench_report


def test_serve_benchmark_tiny_mode_prints_overhead_and_images_per_second(tiny_snapshot: Path) -> None:
    report = bench_report("serve", "--tiny", "--model", str(tiny_snapshot), "--repeats", "1", "--concurrency", "1,4")
    assert report["benchmark"] == "serve" and report["mode"] == "tiny"
    assert report["served_image_s"] > 0 and report["cli_image_s"] > 0
    assert [run["concurrency"] for run in report["concurrency"]] == [1, 4]
    for run in report["concurrency"]:
        assert run["images_per_s"] > 0 and run["latency_p95_s"] >= run["latency_p50_s"] > 0
