"""A BackupSchedule's decisions: when a run is due and what it is called (schedule/planner.py),
the Backup of a run and the Restore of a restore test (decisions/schedules.py), one row per
branch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from timesheet_backup import constants as c
from timesheet_backup.api import crds, models
from timesheet_backup.api.fields import parse
from timesheet_backup.decisions.schedules import (
    RetentionPass,
    backup_body,
    backup_records,
    is_verified,
    retention_pass,
    verification_body,
    verification_marks,
    verification_runs,
)
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


def uploads_backup(content: int | None, files: int | None) -> dict[str, Any]:
    artifact: dict[str, Any] = {"component": "uploads"}
    if content is not None:
        artifact["contentBytes"] = content
    if files is not None:
        artifact["fileCount"] = files
    return {**BACKUP, "status": {**BACKUP["status"], "components": "database,uploads",
                                 "artifacts": [{"component": "database"}, artifact]}}


@pytest.mark.parametrize(("content", "files", "expected"), [
    (1 << 30, 1000, "1285Mi"),   # 1 GiB + 1000 blocks of 4 KiB, a quarter more, rounded up
    (10, 3, "64Mi"),             # at least 64 MiB
    (None, 3, None),             # a Backup from before contentBytes: no limit, as before
    (10, None, None),
])
def test_the_uploads_restore_test_has_a_size_limit(content: int | None, files: int | None,
                                                   expected: str | None) -> None:
    verification = parse(models.VerificationSpec, {"schedule": "0 5 * * 1"})
    body = verification_body(SCHEDULE, verification, uploads_backup(content, files), "v-1")
    assert body["spec"]["components"] == ["database", "uploads"]
    assert body["spec"]["uploads"]["scratch"].get("sizeLimit") == expected
    parse(models.RestoreSpec, body["spec"])
    own = parse(models.VerificationSpec, {"schedule": "0 5 * * 1", "uploadsSizeLimit": "20Gi"})
    assert verification_body(SCHEDULE, own, uploads_backup(content, files), "v-1")[
        "spec"]["uploads"]["scratch"] == {"sizeLimit": "20Gi"}


def test_verification_decryption_is_in_the_crd_like_the_restores() -> None:
    def schema(kind: str) -> dict[str, Any]:
        (definition,) = [d for d in crds.DEFINITIONS if d.kind == kind]
        return dict(crds.crd(definition)["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
            "properties"]["spec"])

    verification = schema("BackupSchedule")["properties"]["verification"]["properties"]
    restore = schema("Restore")["properties"]
    assert verification["decryption"]["properties"] == restore["decryption"]["properties"]


# --- restore tests as proof: verification_marks -------------------------------------------


def backup(name: str, completed: str | None, phase: str = "Succeeded",
           verification: dict[str, Any] | None = None, deleting: bool = False
           ) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "creationTimestamp": "2026-11-01T00:00:00Z"}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-26T00:00:00Z"
    st: dict[str, Any] = {"phase": phase}
    if completed:
        st["completionTime"] = completed
    if verification:
        st["verification"] = verification
    return {"metadata": meta, "status": st}


def run(name: str, target: str, phase: str | None, completed: str | None = None,
        message: str = "") -> dict[str, Any]:
    st: dict[str, Any] = {"phase": phase, "message": message}
    if completed:
        st["completionTime"] = completed
    return {"metadata": {"name": name}, "spec": {"backupName": target}, "status": st}


T1, T2, T3 = "2026-11-24T05:00:00Z", "2026-11-25T05:00:00Z", "2026-11-26T05:00:00Z"


def test_a_passed_restore_test_marks_its_backup_verified() -> None:
    marks = verification_marks([run("v1", "b1", "Succeeded", T1, "3 checks passed")],
                               [backup("b1", T1)])
    assert marks == [("b1", {"verification": {
        "restore": "v1", "time": T1, "result": "Succeeded", "message": "3 checks passed",
        "verifiedTime": T1}})]
    assert is_verified(backup("b1", T1, verification=marks[0][1]["verification"]))


def test_a_later_failure_is_recorded_but_keeps_the_proof() -> None:
    passed = {"restore": "v1", "time": T1, "result": "Succeeded", "verifiedTime": T1}
    marks = verification_marks([run("v1", "b1", "Succeeded", T1),
                                run("v2", "b1", "Failed", T2, "scratch db unreachable")],
                               [backup("b1", T1, verification=passed)])
    assert marks == [("b1", {"verification": {
        "restore": "v2", "time": T2, "result": "Failed", "message": "scratch db unreachable",
        "verifiedTime": T1}})]


def test_a_failed_test_of_an_unverified_backup_does_not_verify_it() -> None:
    [(_, patch)] = verification_marks([run("v1", "b1", "Failed", T1)], [backup("b1", T1)])
    assert patch["verification"]["verifiedTime"] is None
    assert not is_verified(backup("b1", T1, verification=patch["verification"]))


@pytest.mark.parametrize(("runs", "backups"), [
    # already recorded: nothing to write (the tick is idempotent)
    ([run("v1", "b1", "Succeeded", T1)],
     [backup("b1", T1, verification={"restore": "v1", "time": T1, "result": "Succeeded",
                                     "verifiedTime": T1})]),
    # still running, or no completion time yet
    ([run("v1", "b1", "Running")], [backup("b1", T1)]),
    ([run("v1", "b1", "Succeeded")], [backup("b1", T1)]),
    # the Backup is gone or being deleted
    ([run("v1", "gone", "Succeeded", T1)], [backup("b1", T1)]),
    ([run("v1", "b1", "Succeeded", T1)], [backup("b1", T1, deleting=True)]),
    # a newer test, whose Restore was pruned since, is recorded: an older run does not win
    ([run("v1", "b1", "Failed", T1)],
     [backup("b1", T1, verification={"restore": "v9", "time": T3, "result": "Succeeded",
                                     "verifiedTime": T3})]),
])
def test_nothing_to_mark(runs: list[dict[str, Any]], backups: list[dict[str, Any]]) -> None:
    assert verification_marks(runs, backups) == []


def test_the_newest_run_of_each_backup_wins_in_any_order() -> None:
    runs = [run("v3", "b2", "Succeeded", T3), run("v1", "b1", "Succeeded", T1),
            run("v2", "b1", "Failed", T2)]
    for order in (runs, runs[::-1]):
        marks = verification_marks(order, [backup("b1", T1), backup("b2", T2)])
        assert [(n, p["verification"]["restore"]) for n, p in marks] == [("b1", "v2"),
                                                                         ("b2", "v3")]


def test_only_a_succeeded_backup_counts_as_verified() -> None:
    proof = {"restore": "v1", "time": T1, "result": "Succeeded", "verifiedTime": T1}
    assert not is_verified(backup("b1", T1, phase="Failed", verification=proof))
    assert not is_verified(backup("b1", T1))


def test_backup_records_read_time_and_proof() -> None:
    proof = {"restore": "v1", "time": T2, "result": "Succeeded", "verifiedTime": T2}
    records = backup_records([backup("b1", T1, verification=proof),
                              backup("b2", None, phase="Running"),
                              backup("b3", T2, deleting=True)])
    assert [(r.name, r.phase, r.time, r.verified) for r in records] == [
        ("b1", "Succeeded", datetime(2026, 11, 24, 5, tzinfo=UTC), True),
        ("b2", "Running", datetime(2026, 11, 1, tzinfo=UTC), False)]


# --- retention_pass -----------------------------------------------------------------------


PASS_NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)
UTC_ZONE = ZoneInfo("UTC")
PROOF = {"restore": "v1", "time": T1, "result": "Succeeded", "verifiedTime": T1}


def history() -> list[dict[str, Any]]:
    """db-1 verified, db-2 and db-3 newer and not."""
    return [backup("db-1", "2026-11-23T02:05:00Z", verification=PROOF),
            backup("db-2", "2026-11-24T02:05:00Z"),
            backup("db-3", "2026-11-25T02:05:00Z")]


def test_no_policy_no_pass() -> None:
    assert retention_pass("db", history(), [], None, PASS_NOW, UTC_ZONE, None) == \
        RetentionPass()


def test_keep_last_one_and_keep_verified_one_keep_the_proof() -> None:
    policy = models.RetentionSpec(keep_last=1, keep_verified=1)
    result = retention_pass("db", history(), [], policy, PASS_NOW, UTC_ZONE, None)
    assert result.prune == ["db-2"]
    assert result.event == ("retention deleted 1 Backup(s): db-2 (not among the 1 newest "
                            "(keepLast), not verified (keepVerified))")
    assert result.status == {
        "kept": [{"name": "db-3", "reason": "newest successful, keepLast 1"},
                 {"name": "db-1", "reason": "newest verified, keepVerified 1"}],
        "lastPruneTime": "2026-11-26T12:00:00Z",
        "pruned": [{"name": "db-2", "reason": "not among the 1 newest (keepLast), "
                                              "not verified (keepVerified)"}],
        "nextPruned": [],
    }


def test_a_pass_that_prunes_nothing_leaves_the_last_prune_alone() -> None:
    policy = models.RetentionSpec(keep_last=3)
    result = retention_pass("db", history(), [], policy, PASS_NOW, UTC_ZONE, None)
    assert result.prune == [] and result.event is None
    assert result.status is not None
    assert "pruned" not in result.status and "lastPruneTime" not in result.status


def test_a_backup_a_running_restore_reads_is_kept() -> None:
    policy = models.RetentionSpec(keep_last=1)
    restores = [run("verify-1", "db-2", "Running"), run("old", "db-1", "Succeeded", T1),
                run("pending", "db-1", None)]
    result = retention_pass("db", history(), restores, policy, PASS_NOW, UTC_ZONE, None)
    assert result.prune == []
    assert result.status is not None
    kept = {e["name"]: e["reason"] for e in result.status["kept"]}
    assert kept["db-2"] == "read by a running Restore"
    assert kept["db-1"] == "newest verified, read by a running Restore"


def test_preview_of_the_pass_after_the_next_run() -> None:
    """keepLast 2: today db-2 and db-3 stay; once the 02:00 run succeeds, db-2 goes (db-1
    stays as the newest verified)."""
    policy = models.RetentionSpec(keep_last=2)
    restores = [run("verify-1", "db-3", "Running")]
    result = retention_pass("db", history(), [], policy, PASS_NOW, UTC_ZONE, at(27, 2))
    assert result.prune == []
    assert result.status is not None
    assert result.status["nextPruned"] == [
        {"name": "db-2", "reason": "not among the 2 newest (keepLast)"}]
    # What a running Restore reads is not previewed as pruned.
    policy = models.RetentionSpec(keep_last=1)
    result = retention_pass("db", history(), restores, policy, PASS_NOW, UTC_ZONE, at(27, 2))
    assert result.status is not None
    assert result.status["nextPruned"] == []


def test_the_event_names_ten_and_the_status_a_hundred() -> None:
    many = [backup(f"db-{i:03d}", (PASS_NOW - timedelta(hours=i)).isoformat())
            for i in range(1, 150)]
    result = retention_pass("db", many, [], models.RetentionSpec(keep_last=1), PASS_NOW,
                            UTC_ZONE, None)
    assert len(result.prune) == 148 and result.prune[0] == "db-149"
    assert result.event is not None and result.event.endswith(" ...")
    assert result.event.count("(keepLast)") == 10
    assert result.status is not None
    assert len(result.status["pruned"]) == models.RETENTION_STATUS_ITEMS


def test_verification_runs_are_the_schedules_restore_tests_oldest_first() -> None:
    def restore(name: str, created: str, **labels: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "creationTimestamp": created, "labels": labels}}

    ours = {c.LABEL_SCHEDULE: "db", c.LABEL_VERIFICATION: "true"}
    restores = [
        restore("newer", "2026-11-26T12:00:00Z", **ours),
        restore("older", "2026-11-25T12:00:00Z", **ours),
        restore("other-schedule", "2026-11-24T12:00:00Z",
                **{**ours, c.LABEL_SCHEDULE: "uploads"}),
        restore("not-a-test", "2026-11-24T12:00:00Z", **{c.LABEL_SCHEDULE: "db"}),
        {"metadata": {"name": "unlabelled", "creationTimestamp": "2026-11-24T12:00:00Z"}},
    ]
    assert [r["metadata"]["name"] for r in verification_runs(restores, "db")] == [
        "older", "newer"]
