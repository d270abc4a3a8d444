"""The team-service benchmark runs end to end in tiny mode and prints one JSON report on stdout."""

from __future__ import annotations

from pathlib import Path

from tests.support.cli_runs import bench_report


def test_team_benchmark_tiny_mode_reports_every_run(tiny_snapshot: Path) -> None:
    workload = ("--clients", "2", "--requests", "4")
    report = bench_report("team", "--tiny", "--model", str(tiny_snapshot), *workload, timeout=280)

    runs = report["runs"]
    assert set(runs) == {"grpc_cache_on", "grpc_cache_off", "grpc_two_replicas", "http_predict", "grpc_tls"}
    for run in runs.values():
        assert run["requests"] == 8 and run["prompts_per_s"] > 0
        assert run["latency_ms_p50"] <= run["latency_ms_p99"]
    # Half the requests repeat a prompt: with the cache some are never computed; without it every one is.
    assert runs["grpc_cache_on"]["prompts_computed"] < 8 and runs["grpc_cache_on"]["cache_hits"] > 0
    assert runs["grpc_cache_off"]["prompts_computed"] == 8 and runs["grpc_cache_off"]["cache_hits"] == 0
    assert all(ratio > 0 for ratio in report["ratios"].values())
