"""The executable-docs tier: every test under tests/docs gets the `docs` marker. The YAML
dry-runs need the e2e cluster (tests/support/cluster.py); the rest needs nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cluster import cluster  # noqa: F401  (fixture, found by name)

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.docs)
