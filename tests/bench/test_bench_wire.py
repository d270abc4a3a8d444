"""The wire benchmark runs end to end in tiny mode and prints one JSON report of sane numbers on stdout."""

from __future__ import annotations

import math
from typing import Any

from tests.support.cli_runs import bench_report


def _is_positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_wire_benchmark_tiny_mode_reports_cpu_throughput_and_latency_per_side() -> None:
    # Short windows keep the run to seconds beyond the server process's imports.
    report = bench_report("wire", "--tiny", "--warmup-s", "0.1", "--duration-s", "0.3", timeout=280)

    assert report["mode"] == "tiny" and "meets_targets" not in report  # targets are stated for full size only
    assert report["embedding"]["bytes_per_prompt"] == 512 * 3 * 32 * 4
    assert report["embedding"]["grpc_messages_per_prompt"] == 2  # a header and one chunk
    levels = {"grpc": report["grpc"], "http": report["http"], "raw_socket": [report["raw_socket"]]}
    assert set(report["ratios"]) == {"grpc_vs_http_at_concurrency_1", "grpc_vs_http_at_concurrency_16"}
    assert all(_is_positive(ratio) for ratio in report["ratios"].values())
    assert [level["concurrency"] for level in report["grpc"]] == [1, 16]
    for path, measured in levels.items():
        for level in measured:
            assert level["prompts"] > 0, path
            for figure in ("prompts_per_s", "latency_ms_p50", "server_cpu_ms_per_prompt", "client_cpu_ms_per_prompt"):
                assert _is_positive(level[figure]), (path, figure, level[figure])
            assert level["latency_ms_p50"] <= level["latency_ms_p99"]
            assert level["server_page_faults_per_prompt"] >= 0 and level["client_page_faults_per_prompt"] >= 0
