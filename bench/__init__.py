"""Benchmarks of the split pipeline, each printing one JSON report: `python -m bench.encoder --tiny`."""
