"""A BackupSchedule's tick (decisions/schedules.py), one row per branch: the run it creates
or skips (cron, concurrencyPolicy, a template that cannot resolve, a Restore on the same
database), the restore test it records and starts, and the status it writes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from timesheet_backup.api import models
from timesheet_backup.api.defaults import Defaults
from timesheet_backup.api.fields import parse
from timesheet_backup.decisions import schedules as decide

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 27, 2, 0, 5, tzinfo=UTC)  # 5 s after a daily 02:00 firing
DB = {"host": "db", "name": "timesheet_db", "user": "timesheet",
      "passwordSecretRef": {"name": "db", "key": "password"}}
DEFAULTS = parse(Defaults, {"database": DB,
                            "storage": {"bucket": "bkt", "credentialsSecretRef": {"name": "s3"}}})


def schedule(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "backup.northstar.io/v1alpha1", "kind": "BackupSchedule",
            "metadata": {"name": "db", "namespace": "ns", "uid": "u-1", "generation": 2,
                         "creationTimestamp": "2026-11-20T00:00:00Z"},
            "spec": {"schedule": "0 2 * * *", "template": {"spec": {"components": ["database"]}},
                     **spec},
            "status": {"lastScheduleTime": "2026-11-26T02:00:00Z", **(status or {})}}


def spec_of(body: dict[str, Any]) -> models.BackupScheduleSpec:
    return parse(models.BackupScheduleSpec, body["spec"])


def backup(name: str, phase: str | None = None, completed: str | None = None,
           components: str = "database", deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "creationTimestamp": "2026-11-25T02:00:00Z"}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-27T00:00:00Z"
    st: dict[str, Any] = {"components": components}
    if phase:
        st["phase"] = phase
    if completed:
        st["completionTime"] = completed
    return {"metadata": meta, "status": st}


def tick(body: dict[str, Any], backups: list[dict[str, Any]],
         defaults: Defaults = DEFAULTS) -> decide.Run:
    return decide.due_run(body, spec_of(body), backups, defaults, NOW)


# --- the run ------------------------------------------------------------------------------


def test_active_leaves_out_finished_and_deleted_backups() -> None:
    found = decide.active([backup("a"), backup("b", "Running"), backup("c", "Succeeded"),
                           backup("d", "Failed"), backup("e", "Running", deleting=True)])
    assert [b["metadata"]["name"] for b in found] == ["a", "b"]


def test_a_due_run_names_its_backup_and_its_database() -> None:
    run = tick(schedule(), [])
    assert run == decide.Run(next_schedule_time="2026-11-28T02:00:00Z",
                             last_schedule_time="2026-11-27T02:00:00Z",
                             name="db-20261127020000", database_target="db:5432/timesheet_db")


def test_nothing_due() -> None:
    run = tick(schedule({"lastScheduleTime": "2026-11-27T02:00:00Z"}), [])
    assert (run.name, run.skipped, run.last_schedule_time) == (None, None, None)
    assert run.next_schedule_time == "2026-11-28T02:00:00Z"


def test_suspended_creates_and_records_nothing() -> None:
    run = tick(schedule(suspend=True), [])
    assert (run.name, run.skipped, run.last_schedule_time) == (None, None, None)


def test_past_the_starting_deadline_the_run_is_skipped_and_recorded() -> None:
    run = tick(schedule({"lastScheduleTime": "2026-11-25T02:00:00Z"},
                        startingDeadlineSeconds=1), [])
    assert run.name is None and run.skipped
    assert run.last_schedule_time == "2026-11-27T02:00:00Z"


@pytest.mark.parametrize(("policy", "name", "replace", "skipped"), [
    ("Allow", "db-20261127020000", [], None),
    ("Replace", "db-20261127020000", ["db-a"], None),
    ("Forbid", None, [], "skipped a run: Backup db-a is still running (concurrencyPolicy "
                         "Forbid)"),
])
def test_concurrency_policy(policy: str, name: str | None, replace: list[str],
                            skipped: str | None) -> None:
    run = tick(schedule(concurrencyPolicy=policy), [backup("db-a", "Running"),
                                                     backup("db-b", "Succeeded")])
    assert (run.name, run.replace, run.skipped) == (name, replace, skipped)


@pytest.mark.parametrize("policy", ["Forbid", "Replace"])
def test_concurrency_counts_only_active_backups(policy: str) -> None:
    run = tick(schedule(concurrencyPolicy=policy), [backup("db-b", "Succeeded")])
    assert (run.name, run.replace, run.skipped) == ("db-20261127020000", [], None)


def test_a_template_that_cannot_resolve_skips_the_run_and_says_why() -> None:
    run = tick(schedule(), [], Defaults())  # no bucket anywhere
    assert run.name is None and run.skipped and run.skipped.startswith(decide.CANNOT_CREATE)


def test_a_backup_without_the_database_has_no_target() -> None:
    body = schedule(template={"spec": {"components": ["uploads"],
                                       "uploads": {"claimName": "files"}}})
    run = tick(body, [])
    assert run.name == "db-20261127020000" and run.database_target is None


def test_blocked() -> None:
    assert decide.blocked("r1") == "skipped a run: Restore r1 of the same database is running"


# --- restore tests ------------------------------------------------------------------------


def restore(name: str, phase: str | None, completed: str | None = None,
            target: str = "b1", message: str = "") -> dict[str, Any]:
    st: dict[str, Any] = {"message": message}
    if phase:
        st["phase"] = phase
    if completed:
        st["completionTime"] = completed
    return {"metadata": {"name": name}, "spec": {"backupName": target}, "status": st}


T1 = "2026-11-26T05:00:00Z"


@pytest.mark.parametrize(("runs", "last", "found"), [
    ([], None, None),
    ([restore("v1", "Running")], None, None),  # not finished
    ([restore("v1", "Succeeded", T1)], {"time": T1}, None),  # recorded already
    ([restore("v1", "Succeeded", T1, message="ok")], None,
     ("Normal", "VerificationSucceeded", "restore test of b1: ok", "Succeeded")),
    ([restore("v0", "Succeeded", "2026-11-25T05:00:00Z"), restore("v1", "Failed", T1)],
     {"time": "2026-11-25T05:00:00Z"},
     ("Warning", "VerificationFailed", "restore test of b1: ", "Failed")),
])
def test_finished_verification(runs: list[dict[str, Any]], last: dict[str, Any] | None,
                               found: tuple[str, str, str, str] | None) -> None:
    finished = decide.finished_verification(runs, last)
    if found is None:
        assert finished is None
        return
    assert finished is not None
    assert (finished.event_type, finished.reason, finished.message,
            finished.result.result) == found
    assert (finished.result.time, finished.result.backup_name) == (T1, "b1")


def test_old_verifications_keep_the_newest_three() -> None:
    runs = [restore(f"v{i}", "Succeeded", T1) for i in range(5)]
    assert decide.old_verifications(runs) == ["v0", "v1"]
    assert decide.old_verifications(runs[:3]) == []


VERIFIED = {"verification": {"schedule": "0 5 * * *"}}
AT_FIVE = datetime(2026, 11, 27, 5, 0, 5, tzinfo=UTC)


def next_test(runs: list[dict[str, Any]], backups: list[dict[str, Any]],
              status: dict[str, Any] | None = None, **spec: Any) -> decide.NextTest:
    body = schedule({"lastVerificationScheduleTime": "2026-11-26T05:00:00Z", **(status or {})},
                    **spec)
    return decide.next_verification(body, spec_of(body), runs, backups, AT_FIVE)


def test_no_verification_spec_no_test() -> None:
    assert next_test([], [backup("b1", "Succeeded", T1)]) == decide.NextTest()


def test_not_due_records_nothing() -> None:
    test = next_test([], [backup("b1", "Succeeded", T1)],
                     {"lastVerificationScheduleTime": "2026-11-27T05:00:00Z"}, **VERIFIED)
    assert test == decide.NextTest()


def test_one_restore_test_at_a_time() -> None:
    test = next_test([restore("v1", "Running")], [backup("b1", "Succeeded", T1)], **VERIFIED)
    assert test == decide.NextTest("2026-11-27T05:00:00Z")


def test_no_database_backup_to_verify_fails_the_test() -> None:
    test = next_test([], [backup("b1", "Failed", T1), backup("b2", "Succeeded", T1, "uploads")],
                     **VERIFIED)
    assert test.create is None and test.failed is not None
    assert (test.failed.result, test.failed.message, test.failed.time) == (
        "Failed", "no successful database backup to verify", "2026-11-27T05:00:05Z")


def test_the_newest_good_database_backup_is_tested() -> None:
    test = next_test([restore("v1", "Succeeded", T1)],
                     [backup("b1", "Succeeded", "2026-11-25T02:10:00Z"),
                      backup("b2", "Succeeded", "2026-11-26T02:10:00Z"),
                      backup("b3", "Failed", "2026-11-27T02:10:00Z")], **VERIFIED)
    assert test.failed is None and test.create is not None
    assert test.record_time == "2026-11-27T05:00:00Z"
    assert test.create["metadata"]["name"] == "db-verify-20261127050000"
    assert test.create["spec"]["backupName"] == "b2"


# --- status -------------------------------------------------------------------------------


@pytest.mark.parametrize(("suspend", "reason", "message"), [
    (False, "Scheduled", "next run 2026-11-28T02:00:00Z"),
    (True, "Suspended", "suspended: no new Backups"),
])
def test_ready_condition(suspend: bool, reason: str, message: str) -> None:
    ready = decide.ready_condition(spec_of(schedule(suspend=suspend)), "2026-11-28T02:00:00Z",
                                   NOW, 2)
    assert (ready["type"], ready["status"], ready["reason"], ready["message"]) == (
        "Ready", "True", reason, message)


def conditions_of(fields: models.BackupScheduleStatus) -> dict[str, tuple[str, str]]:
    return {x.type: (x.status, x.reason) for x in fields.conditions or []}


def test_summary() -> None:
    fields = models.BackupScheduleStatus(observed_generation=2,
                                         next_schedule_time="2026-11-28T02:00:00Z")
    backups = [backup("b1", "Succeeded", "2026-11-25T02:10:00Z"),
               backup("b2", "Succeeded", "2026-11-26T02:10:00Z"), backup("b3", "Running")]
    decide.summary(fields, spec_of(schedule()), backups, {}, None, NOW)
    assert fields.last_successful_time == "2026-11-26T02:10:00Z"
    assert fields.active == [models.ActiveRef(name="b3")]
    assert fields.message is None
    assert conditions_of(fields) == {"Ready": ("True", "Scheduled"),
                                     "Failed": ("False", "BackupSucceeded")}


def test_summary_of_nothing_yet_and_a_run_that_could_not_be_created() -> None:
    fields = models.BackupScheduleStatus(observed_generation=2)
    decide.summary(fields, spec_of(schedule()), [], {}, f"{decide.CANNOT_CREATE}: no bucket",
                   NOW)
    assert (fields.last_successful_time, fields.active) == (None, None)
    assert fields.message == f"{decide.CANNOT_CREATE}: no bucket"
    assert conditions_of(fields)["Failed"] == ("True", "BackupNotCreated")


def test_a_skipped_run_is_not_a_failure() -> None:
    fields = models.BackupScheduleStatus(observed_generation=2)
    skipped = decide.blocked("r1")
    decide.summary(fields, spec_of(schedule()), [], {}, skipped, NOW)
    assert fields.message == skipped
    assert conditions_of(fields)["Failed"] == ("False", "NoRunYet")


def test_invalid_posts_its_event_once() -> None:
    fields = models.BackupScheduleStatus(observed_generation=2)
    assert decide.invalid(fields, {}, "bad cron", NOW) is True
    assert fields.message == "bad cron"
    assert conditions_of(fields) == {"Ready": ("False", "InvalidSchedule")}
    again = models.BackupScheduleStatus(observed_generation=2)
    assert decide.invalid(again, {"message": "bad cron"}, "bad cron", NOW) is False


def test_a_restore_test_runs_its_jobs_as_the_template_does() -> None:
    job = {"imagePullSecrets": ["registry"]}
    body = schedule(template={"spec": {"components": ["database"], "job": job}}, **VERIFIED)
    spec = spec_of(body)
    assert spec.verification is not None
    restore_body = decide.verification_body(body, spec.verification,
                                            backup("b1", "Succeeded", T1), "v")
    assert restore_body["spec"]["job"] == job
    restore_body["spec"]["job"]["imagePullSecrets"].append("other")
    assert job == {"imagePullSecrets": ["registry"]}  # a copy, not the schedule's
