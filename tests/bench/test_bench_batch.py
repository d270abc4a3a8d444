"""The batch benchmark runs end to end in tiny mode and prints one JSON report on stdout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.support.cli_runs import bench_report, run_bench

pytestmark = pytest.mark.timeout(400)


def test_batch_benchmark_tiny_mode_prints_rates_for_one_and_two_workers_and_the_cli(tiny_snapshot: Path) -> None:
    flags = ["--jobs", "6", "--height", "64", "--width", "64", "--steps", "2"]
    report = bench_report("batch", "--tiny", "--model", str(tiny_snapshot), *flags, timeout=380)
    assert report["mode"] == "tiny"
    assert report["single_process_cli"]["images"] == 6 and report["single_process_cli"]["images_per_s"] > 0
    assert set(report["batch"]) == {"1", "2"}
    for workers, run in report["batch"].items():
        assert run["workers"] == int(workers) and run["images"] == 6
        assert run["images_per_s"] > 0 and run["wall_s"] > run["first_image_after_s"] > 0
    assert report["overhead_vs_cli"]["steady"] > 0
    assert report["scaling"]["workers"] == 2 and report["scaling"]["speedup"] > 0
    assert report["meets_targets"] is None  # targets are stated for GPUs only


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA, so --full-size would run")
def test_full_size_without_cuda_exits_2_with_one_error_line() -> None:
    completed = run_bench("batch", "--full-size", timeout=120)
    assert completed.returncode == 2 and completed.stdout == ""
    errors = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: --full-size needs a CUDA GPU, but torch.cuda.is_available() is False"]
