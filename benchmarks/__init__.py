"""Benchmarks of xattn's training path (run `python -m benchmarks.throughput --help`)."""
