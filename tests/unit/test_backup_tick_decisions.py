"""A Backup's decisions (decisions/backups.py), one row per branch: which step a tick takes,
the lock key of its database, the phase each outcome moves to, the manifest's grace period,
and the first look of a deletion. (What a deletion does with locked objects is in
test_object_lock.py.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from timesheet_backup.api import models
from timesheet_backup.api.fields import SpecError, parse
from timesheet_backup.decisions import backups as decide
from timesheet_backup.errors import ConfigError

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 3, 6, 0, tzinfo=UTC)
RESOLVED = {"components": ["database"], "storage": {"bucket": "bkt"},
            "deletionPolicy": "Delete"}


@pytest.mark.parametrize(("body", "step"), [
    ({"metadata": {}}, "start"),  # new: no status yet
    ({"metadata": {}, "status": {"phase": "Pending"}}, "start"),  # waited for the database
    ({"metadata": {}, "status": {"phase": "Running"}}, "follow"),
    ({"metadata": {}, "status": {"phase": "Succeeded"}}, None),
    ({"metadata": {}, "status": {"phase": "Failed"}}, None),
    ({"metadata": {}, "status": {"phase": "Deleting"}}, None),
    # being deleted: the delete handler has it, whatever the phase
    ({"metadata": {"deletionTimestamp": "2026-12-03T00:00:00Z"}}, None),
    ({"metadata": {"deletionTimestamp": "x"}, "status": {"phase": "Running"}}, None),
])
def test_tick(body: dict[str, Any], step: str | None) -> None:
    assert decide.tick(body) == step


@pytest.mark.parametrize(("database", "target"), [
    (None, None),
    ({}, None),
    ({"host": "db"}, None),  # no name
    ({"name": "t"}, None),  # no host
    ({"host": "db", "name": "t"}, "db:5432/t"),  # the default port
    ({"host": "db", "port": 6432, "name": "t"}, "db:6432/t"),
])
def test_database_target(database: dict[str, Any] | None, target: str | None) -> None:
    assert decide.database_target(database) == target


def test_transitions() -> None:
    assert decide.failed("SecretMissing", "no s3") == decide.Transition(
        "Failed", "SecretMissing", "no s3", "Warning")
    # Waiting for the database says so in status, without an Event on every tick.
    assert decide.waiting_for("Restore r1") == decide.Transition(
        "Pending", "WaitingForRestore", "waiting for Restore r1 of the same database to finish")
    assert decide.started("b-1-backup") == decide.Transition(
        "Running", "JobStarted", "backup Job b-1-backup started", "Normal")
    assert decide.succeeded(["database", "uploads"], "1.2 MiB", "s3://bkt/ns/b/") == \
        decide.Transition("Succeeded", "Completed",
                          "backed up database, uploads (1.2 MiB) to s3://bkt/ns/b/", "Normal")


@pytest.mark.parametrize(("completed", "retry"), [
    (NOW, True),  # just finished
    (NOW - timedelta(seconds=decide.MANIFEST_GRACE_SECONDS - 1), True),
    (NOW - timedelta(seconds=decide.MANIFEST_GRACE_SECONDS), False),  # the grace is over
    (None, False),  # no completion time: nothing to wait for
])
def test_manifest_unreadable(completed: datetime | None, retry: bool) -> None:
    step = decide.manifest_unreadable("NoSuchKey", completed, NOW)
    if retry:
        assert step == "the Job finished; reading the manifest: NoSuchKey"
    else:
        assert step == decide.failed(
            "ManifestUnreadable", "the agent finished but its manifest cannot be read: NoSuchKey")


def test_completion_time() -> None:
    assert decide.completion_time(None) is None
    assert decide.completion_time({"status": {}}) is None
    assert decide.completion_time({"status": {"completionTime": "2026-12-03T06:00:00Z"}}) == NOW


@pytest.mark.parametrize(("status", "pods_left", "action"), [
    # The Job's pods still run: stop them first (an agent could still write a manifest).
    ({"jobName": "j", "resolved": RESOLVED, "manifestKey": "k"}, True, "stop-job"),
    # No pods left, or no Job: go on.
    ({"jobName": "j", "resolved": RESOLVED, "manifestKey": "k"}, False, "objects"),
    ({"resolved": RESOLVED, "manifestKey": "k"}, True, "objects"),
    # Never started: nothing can be in the bucket.
    ({}, False, "nothing"),
    ({"resolved": RESOLVED}, False, "nothing"),
    ({"manifestKey": "k"}, False, "nothing"),
    ({"resolved": {**RESOLVED, "deletionPolicy": "Retain"}, "manifestKey": "k"}, False,
     "retain"),
    ({"resolved": {"components": ["database"]}, "manifestKey": "k"}, False, "retain"),
])
def test_cleanup(status: dict[str, Any], pods_left: bool, action: str) -> None:
    chosen, spec = decide.cleanup(status, pods_left)
    assert chosen == action
    assert (spec is not None) == (action in ("retain", "objects"))
    if action == "objects":
        assert spec is not None and spec.storage is not None and spec.storage.bucket == "bkt"


def test_cleanup_refuses_a_resolved_spec_it_cannot_read() -> None:
    with pytest.raises(SpecError):
        decide.cleanup({"resolved": {"nope": 1}, "manifestKey": "k"}, False)


def test_manifest_key() -> None:
    body = {"metadata": {"namespace": "ns", "name": "b"}}
    with_prefix = parse(models.BackupSpec, {"storage": {"bucket": "bkt", "prefix": "p"}})
    assert decide.manifest_key(body, with_prefix).startswith("p/ns/b")
    assert decide.manifest_key(body, parse(models.BackupSpec, {})).startswith("ns/b")
    with pytest.raises(ConfigError):
        decide.manifest_key(body, parse(models.BackupSpec,
                                        {"storage": {"bucket": "bkt", "prefix": "a/../b"}}))
