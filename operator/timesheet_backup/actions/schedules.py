"""What a BackupSchedule does to the cluster: create and delete its Backups, record restore
tests on them, start and prune restore-test Restores; every choice comes from
decisions/schedules.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from timesheet_backup import constants as c
from timesheet_backup import kube
from timesheet_backup.actions.common import post_event
from timesheet_backup.api import models
from timesheet_backup.api.fields import parse
from timesheet_backup.decisions import schedules as decide


def create_backup(body: Mapping[str, Any], spec: models.BackupScheduleSpec,
                  run: decide.Run) -> None:
    """Create the run's Backup, after deleting those it replaces (concurrencyPolicy
    Replace). A Backup of that name already there (409) is the run already made."""
    namespace = body["metadata"]["namespace"]
    assert run.name is not None
    for name in run.replace:
        kube.delete_custom(namespace, c.PLURAL_BACKUP, name)
    if kube.create_custom(namespace, c.PLURAL_BACKUP, decide.backup_body(body, spec, run.name)):
        post_event(body, "Normal", reason="BackupCreated", message=f"created Backup {run.name}")


def prune(body: Mapping[str, Any], decided: decide.RetentionPass) -> None:
    """Delete what retention prunes and say why in an Event."""
    for name in decided.prune:
        kube.delete_custom(body["metadata"]["namespace"], c.PLURAL_BACKUP, name)
    if decided.event:
        post_event(body, "Normal", reason="Pruned", message=decided.event)


def retention_status(decided: decide.RetentionPass) -> models.RetentionStatus | None:
    return (None if decided.status is None
            else parse(models.RetentionStatus, decided.status, "status.retention"))


def record_verifications(body: Mapping[str, Any], runs: Sequence[Mapping[str, Any]],
                         backups: Sequence[Mapping[str, Any]],
                         finished: decide.Finished | None) -> None:
    """Say a finished restore test in an Event, put the proof on the tested Backups (it
    outlives the Restores, pruned here to the last few)."""
    namespace = body["metadata"]["namespace"]
    if finished:
        post_event(body, finished.event_type, finished.reason, finished.message)
    for backup_name, backup_status in decide.verification_marks(runs, backups):
        kube.patch_custom_status(namespace, c.PLURAL_BACKUP, backup_name, backup_status)
    for name in decide.old_verifications(runs):
        kube.delete_custom(namespace, c.PLURAL_RESTORE, name)


def start_verification(body: Mapping[str, Any], restore: dict[str, Any]) -> None:
    kube.create_custom(body["metadata"]["namespace"], c.PLURAL_RESTORE, restore)
