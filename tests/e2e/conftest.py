"""e2e fixtures. The cluster, namespace and client fixtures live in tests/support/cluster.py
(re-exported here); a failed test gets its namespace's pods, logs and events attached."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from tests.support.cluster import (  # noqa: F401  (fixtures, found by pytest by name)
    apps_v1,
    batch_v1,
    cluster,
    core_v1,
    namespace,
    rbac_v1,
    report_namespace_on_failure,
)
from tests.support.operator import app, operator  # noqa: F401


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    report_namespace_on_failure(item, report)
    return report
