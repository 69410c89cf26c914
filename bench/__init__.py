"""Benchmarks and the reproduction pipeline; run each as ``python -m bench.NAME``."""
