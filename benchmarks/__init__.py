"""Benchmarks: each script answers one question and writes its report (run as `python -m benchmarks.NAME`)."""
