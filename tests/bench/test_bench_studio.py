"""The page benchmark runs end to end in tiny mode, in Debian's Chromium, and prints one JSON report on stdout."""

from __future__ import annotations

from pathlib import Path

from tests.support.browser import chromium_path
from tests.support.cli_runs import bench_report


def test_studio_benchmark_tiny_mode_prints_page_load_and_overhead_against_the_cli(tiny_snapshot: Path) -> None:
    chromium_path()  # a missing browser is a failure saying how to install it
    report = bench_report("studio", "--tiny", "--model", str(tiny_snapshot), "--repeats", "1", timeout=300)
    assert report["mode"] == "tiny"
    assert report["page_load_s"]["median"] > 0
    assert report["page_click_to_image_s"]["median"] >= report["studio_job_s"]["median"] > 0
    assert report["cli_image_s"]["median"] > 0
    assert report["settings"] == {"size": 256, "steps": 4, "guidance": 4.0, "repeats": 1}
