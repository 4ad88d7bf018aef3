"""Benchmark harness for the discount service: `python -m bench` (see README, docs/performance.md)."""
