"""`make bench`: the agent against the manual guide's pipeline, and the operator at scale.

Run with `python -m bench` from the repository root (see docs/benchmarks.md). Nothing here is
a test: it measures and writes results; it asserts nothing about time.
"""
