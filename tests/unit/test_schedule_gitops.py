"""What a BackupSchedule shows Argo CD: Backups it creates are not tracked by Argo CD, and its
`Failed` condition says whether the last run failed (the health script reads it)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from timesheet_backup.api import models
from timesheet_backup.api.fields import parse
from timesheet_backup.decisions.schedules import backup_body, last_run_condition

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


def schedule(template_metadata: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "backup.northstar.io/v1alpha1",
        "kind": "BackupSchedule",
        "metadata": {"name": "nightly", "namespace": "timesheet", "uid": "u-1",
                     "labels": {"app.kubernetes.io/instance": "timesheet",
                                "team": "platform"},
                     "annotations": {"argocd.argoproj.io/tracking-id": "timesheet:x"}},
        "spec": {"schedule": "0 2 * * *",
                 "template": {"metadata": template_metadata, "spec": {}}},
    }


def test_backups_do_not_carry_argocd_tracking_keys() -> None:
    body = schedule({
        "labels": {"app.kubernetes.io/instance": "timesheet", "tier": "db"},
        "annotations": {"argocd.argoproj.io/tracking-id": "timesheet:x",
                        "argocd.argoproj.io/sync-wave": "1", "note": "kept"},
    })
    spec = parse(models.BackupScheduleSpec, body["spec"])
    meta = backup_body(body, spec, "nightly-20261126020000")["metadata"]
    assert meta["labels"] == {"tier": "db",
                              "app.kubernetes.io/managed-by": "timesheet-backup-operator",
                              "backup.northstar.io/schedule": "nightly"}
    assert meta["annotations"] == {"note": "kept"}


def test_parent_metadata_is_not_copied() -> None:
    body = schedule({})
    spec = parse(models.BackupScheduleSpec, body["spec"])
    meta = backup_body(body, spec, "nightly-20261126020000")["metadata"]
    assert "team" not in meta["labels"]
    assert "app.kubernetes.io/instance" not in meta["labels"]
    assert "annotations" not in meta


def backup(name: str, phase: str | None, completed: str | None = None,
           message: str = "") -> dict[str, Any]:
    status: dict[str, Any] = {"message": message}
    if phase:
        status["phase"] = phase
    if completed:
        status["completionTime"] = completed
    return {"metadata": {"name": name, "creationTimestamp": "2026-11-20T00:00:00Z"},
            "status": status}


def failed_condition(since: str) -> dict[str, Any]:
    return {"type": "Failed", "status": "True", "reason": "BackupFailed",
            "message": "Backup old failed: boom", "lastTransitionTime": since}


def test_newest_finished_backup_failed() -> None:
    got = last_run_condition(
        [backup("a", "Succeeded", "2026-11-24T02:01:00Z"),
         backup("b", "Failed", "2026-11-25T02:01:00Z", "cannot connect to db"),
         backup("c", "Running")],
        None, None, NOW, 3)
    assert (got["status"], got["reason"]) == ("True", "BackupFailed")
    assert got["message"] == "Backup b failed: cannot connect to db"
    assert got["observedGeneration"] == 3


def test_newer_success_clears_the_failure() -> None:
    got = last_run_condition(
        [backup("b", "Failed", "2026-11-25T02:01:00Z"),
         backup("c", "Succeeded", "2026-11-26T02:01:00Z")],
        [failed_condition("2026-11-25T02:01:05Z")], None, NOW, 1)
    assert (got["status"], got["reason"], got["message"]) == \
        ("False", "BackupSucceeded", "Backup c succeeded")


def test_pruned_failure_stays_until_a_later_success() -> None:
    """keepFailed: 0 prunes the failed Backup at once; an older success does not clear it."""
    previous = failed_condition("2026-11-25T02:01:05Z")
    got = last_run_condition([backup("a", "Succeeded", "2026-11-24T02:01:00Z")],
                             [previous], None, NOW, 2)
    assert {**got, "observedGeneration": None} == {**previous, "observedGeneration": None}


def test_backup_that_cannot_be_created_is_a_failed_run() -> None:
    got = last_run_condition([], None, "cannot create a Backup: storage.bucket is missing",
                             NOW, 1)
    assert (got["status"], got["reason"]) == ("True", "BackupNotCreated")
    assert "storage.bucket" in got["message"]


def test_no_finished_backup_yet() -> None:
    got = last_run_condition([backup("a", "Running")], None, None, NOW, 1)
    assert (got["status"], got["reason"]) == ("False", "NoRunYet")
