"""Benchmarks for meshproxy: ``python -m benchmarks`` (or ``./dev bench``); see benchmarks/README.md."""
