"""Benchmarks: `python -m bench.run --board h743` (or `make bench BOARD=h743`)."""
