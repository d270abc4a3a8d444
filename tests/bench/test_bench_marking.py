"""The marking benchmark runs end to end in tiny mode and prints one JSON report on stdout."""

from __future__ import annotations

from pathlib import Path

from tests.support.cli_runs import bench_report


def test_marking_benchmark_tiny_mode_prints_costs_robustness_and_overlap(tiny_snapshot: Path) -> None:
    report = bench_report("marking", "--tiny", "--model", str(tiny_snapshot), "--jobs", "3", timeout=300)
    assert report["mode"] == "tiny"
    size = report["sizes"]["256"]
    assert size["cost"]["watermark_s"] > 0
    assert size["cost"]["png"]["manifest_bytes"] > 1000  # a signed manifest is in the file
    assert size["bits_of_64"]["clean"]["min"] == 64
    assert size["unmarked"]["found"] == 0
    overlap = report["overlap"]
    assert overlap["every_mark"]["images_per_s"] > 0 and overlap["no_marks"]["images_per_s"] > 0
    assert report["meets_targets"] == {
        "bits_after_jpeg_q75": True,
        "bits_after_half_resize": True,
        "unmarked_best_match": True,
    }
