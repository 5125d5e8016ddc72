"""Benchmarks of drf-llm-keys against its peers; not part of the test suite.

Run ``python -m benchmarks --help`` from the repository root (see docs/benchmarks.md).
"""
