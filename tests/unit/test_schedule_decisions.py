"""A BackupSchedule's decisions: when a run is due and what it is called (schedule/planner.py),
the Backup of a run and the Restore of a restore test (decisions/schedules.py), one row per
branch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from timesheet_backup.api import crds, models
from timesheet_backup.api.fields import parse
from timesheet_backup.decisions.schedules import backup_body, verification_body
from timesheet_backup.jobs import agent_args
from timesheet_backup.schedule import planner

pytestmark = pytest.mark.unit

CREATED = datetime(2026, 11, 26, 8, 17, 42, tzinfo=UTC)
DAILY = "0 2 * * *"


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


# --- planner ------------------------------------------------------------------------------


@pytest.mark.parametrize(("now", "last", "deadline", "on_create", "suspend", "run_at",
                          "record", "skipped"), [
    # suspended: nothing runs, nothing is recorded
    (at(27, 2), None, None, True, True, None, None, False),
    # runOnCreate: the run is named after the schedule's creation, recorded at `now`
    (CREATED + timedelta(seconds=3), None, None, True, False, CREATED,
     CREATED + timedelta(seconds=3), False),
    # runOnCreate only before the first run
    (at(27, 1), at(26, 9), None, True, False, None, None, False),
    # not due yet
    (at(27, 1, 59), None, None, False, False, None, None, False),
    # due: the firing itself is the run's time
    (at(27, 2, 0), None, None, False, False, at(27, 2), at(27, 2), False),
    # after downtime: only the latest missed firing
    (at(29, 5), at(26, 2), None, False, False, at(29, 2), at(29, 2), False),
    # missed by more than startingDeadlineSeconds: skipped, recorded
    (at(29, 5), at(26, 2), 3600, False, False, None, at(29, 2), True),
    (at(29, 2, 30), at(28, 2), 3600, False, False, at(29, 2), at(29, 2), False),
])
def test_plan(now: datetime, last: datetime | None, deadline: int | None, on_create: bool,
              suspend: bool, run_at: datetime | None, record: datetime | None,
              skipped: bool) -> None:
    plan = planner.plan(DAILY, None, now, CREATED, last, deadline, on_create, suspend)
    assert (plan.run_at, plan.record_time, bool(plan.skipped)) == (run_at, record, skipped)
    assert plan.next_time is not None and plan.next_time > now


@pytest.mark.parametrize("retry_after", [0, 1, 9, 60, 3600])
def test_run_on_create_is_named_once(retry_after: int) -> None:
    """A tick that created the runOnCreate Backup but crashed before recording
    lastScheduleTime plans the same name again: the create is a 409, not a second Backup."""
    first = planner.plan(DAILY, None, CREATED + timedelta(seconds=2), CREATED, None,
                         run_on_create=True)
    retry = planner.plan(DAILY, None, CREATED + timedelta(seconds=2 + retry_after), CREATED,
                         None, run_on_create=True)
    assert first.run_at is not None and retry.run_at is not None
    assert planner.backup_name("db", first.run_at) == planner.backup_name("db", retry.run_at) \
        == "db-20261126081742"


# --- the Backup of a run -------------------------------------------------------------------


SCHEDULED: dict[str, Any] = {
    "apiVersion": "backup.northstar.io/v1alpha1", "kind": "BackupSchedule",
    "metadata": {"name": "db", "namespace": "timesheet", "uid": "u-1"},
    "spec": {"schedule": DAILY, "template": {"spec": {"components": ["database"],
                                                      "database": {"tables": ["public.a"]}}}},
}
SCHEDULE_REF: dict[str, Any] = {
    "apiVersion": "backup.northstar.io/v1alpha1", "kind": "BackupSchedule", "name": "db",
    "uid": "u-1", "controller": False, "blockOwnerDeletion": True,
}


@pytest.mark.parametrize(("owner", "references"), [
    (None, None),  # default none: the Backups outlive their schedule
    ("none", None),
    # schedule: deleted with the schedule (an owner, not the controller)
    ("schedule", [SCHEDULE_REF]),
])
def test_backup_owner_reference(owner: str | None,
                                references: list[dict[str, Any]] | None) -> None:
    spec_fields = dict(SCHEDULED["spec"])
    if owner is not None:
        spec_fields["backupOwnerReference"] = owner
    body = {**SCHEDULED, "spec": spec_fields}
    backup = backup_body(body, parse(models.BackupScheduleSpec, spec_fields),
                         "db-20261126020000")
    meta = backup["metadata"]
    assert meta.get("ownerReferences") == references
    assert (meta["name"], meta["namespace"]) == ("db-20261126020000", "timesheet")
    assert meta["labels"] == {"app.kubernetes.io/managed-by": "timesheet-backup-operator",
                              "backup.northstar.io/schedule": "db"}
    assert (backup["kind"], backup["apiVersion"]) == ("Backup", "backup.northstar.io/v1alpha1")
    # The template's spec, copied: the Backup may be changed without touching the schedule.
    assert backup["spec"] == {"components": ["database"], "database": {"tables": ["public.a"]}}
    backup["spec"]["database"]["tables"].append("public.b")
    assert SCHEDULED["spec"]["template"]["spec"]["database"]["tables"] == ["public.a"]


# --- restore tests ------------------------------------------------------------------------


SCHEDULE = {
    "apiVersion": "backup.northstar.io/v1alpha1", "kind": "BackupSchedule",
    "metadata": {"name": "db", "namespace": "timesheet", "uid": "u-1"},
}
BACKUP = {"metadata": {"name": "db-20261126020000"},
          "status": {"resolved": {"database": {"name": "timesheet_db"}}}}
KEY = {"secretRef": {"name": "backup-age", "key": "identity"}}


@pytest.mark.parametrize(("verification", "decryption"), [
    ({"schedule": "0 5 * * 1"}, None),
    ({"schedule": "0 5 * * 1", "decryption": KEY}, KEY),
])
def test_restore_test_carries_the_decryption_key(verification: dict[str, Any],
                                                 decryption: dict[str, Any] | None) -> None:
    body = verification_body(SCHEDULE, parse(models.VerificationSpec, verification), BACKUP,
                             "db-verify-20261130050000")
    spec = parse(models.RestoreSpec, body["spec"])  # a valid Restore
    assert body["spec"].get("decryption") == decryption
    assert spec.database is not None and spec.database.name == "timesheet_db_verify"
    assert spec.database.drop_after and spec.database.create_database
    # ... and its Job gets the key when the backup is encrypted.
    resolved = {"storage": {"bucket": "b"}, "manifestKey": "k", "components": ["database"],
                "database": {"host": "db", "name": "timesheet_db_verify", "user": "u"},
                "encrypted": True}
    env = {e["name"]: e for e in agent_args.restore_env(spec, resolved)}
    if decryption:
        assert env["TSB_AGE_IDENTITY"]["valueFrom"]["secretKeyRef"] == {
            "name": "backup-age", "key": "identity"}
    else:
        assert "TSB_AGE_IDENTITY" not in env


def test_verification_decryption_is_in_the_crd_like_the_restores() -> None:
    def schema(kind: str) -> dict[str, Any]:
        (definition,) = [d for d in crds.DEFINITIONS if d.kind == kind]
        return dict(crds.crd(definition)["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
            "properties"]["spec"])

    verification = schema("BackupSchedule")["properties"]["verification"]["properties"]
    restore = schema("Restore")["properties"]
    assert verification["decryption"]["properties"] == restore["decryption"]["properties"]
