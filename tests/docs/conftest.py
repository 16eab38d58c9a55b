"""The executable-docs tier (the `docs` marker comes from the directory: tests/conftest.py).
The YAML dry-runs need the e2e cluster (tests/support/cluster.py); the rest needs nothing."""

from __future__ import annotations

from tests.support.cluster import cluster  # noqa: F401  (fixture, found by name)
