"""Benchmark suites: each module exports SUITES = {name: fn(args) -> dict} (see tools/benchmark.py)."""
