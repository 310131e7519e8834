"""Benchmarks (see bench/RESULTS.md once they exist)."""
