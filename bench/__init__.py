"""Benchmarks: load runs against Redis and the proxy, micro-benchmarks. See bench/RESULTS.md."""
