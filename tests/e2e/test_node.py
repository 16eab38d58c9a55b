"""What only a real kubelet can show: a memory limit enforced on the agent, read-only root
filesystems and non-root users on the shipped image, DNS and Services as pods see them."""

from __future__ import annotations

import pytest

from tests.e2e.test_faults_io import assert_failed_readably
from tests.e2e.test_operator import backup_spec
from tests.support.operator import App

pytestmark = pytest.mark.e2e


def test_agent_over_its_memory_limit_fails_as_out_of_memory(app: App) -> None:
    """The kubelet kills the agent at its limit (OOMKilled); the Backup says so and which
    limit, instead of a bare exit code."""
    job = {"backoffLimit": 0,
           "resources": {"requests": {"memory": "40Mi"}, "limits": {"memory": "40Mi"}}}
    app.create("backups", "starved", backup_spec(app, job=job))
    obj = assert_failed_readably(app, "backups", "starved")
    failed = next(c for c in obj["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "OOMKilled", obj["status"]
    assert "ran out of memory (limit 40Mi)" in obj["status"]["message"], obj["status"]
    assert app.object_keys(f"e2e/{app.namespace}/starved/") == []
