"""Benchmarks: load runs against Redis and the proxy, micro-benchmarks. Current figures: bench/RESULTS.md; how they came about: bench/HISTORY.md."""
