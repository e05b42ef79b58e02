"""Benchmark cases `scripts/bench.py` runs; measured output lives in results/."""
