"""Benchmarks of omi-letta: live latency, concurrent streams and batch ingest (see docs/benchmarks.md)."""
