"""What a shared service records of its callers: the call log and the Prometheus metrics."""
