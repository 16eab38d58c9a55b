"""The Restore's decisions (decisions/restores.py), one row per branch: which backup can be
restored and into what, what happens to a step's Job (created, followed, vanished), the
quiesce step's waits and their time limit, an unknown step, the message a failed Restore
ends with, and a Restore deleted mid-way."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from timesheet_backup.api import models
from timesheet_backup.api.fields import parse
from timesheet_backup.decisions import restores as decide
from timesheet_backup.decisions.restores import BackupNotReady, RestoreFailed

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
DB = {"host": "db", "port": 5432, "name": "timesheet_db", "user": "timesheet",
      "passwordSecretRef": {"name": "timesheet-db", "key": "password"}, "sslMode": "require",
      "format": "directory", "jobs": 4, "tables": ["public.a"]}


def done(type_: str) -> dict[str, Any]:
    return {"type": type_, "status": "True", "reason": type_}


def job(*conditions: str, deleting: bool = False, name: str = "r-restore") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-26T12:00:00Z"
    return {"metadata": meta, "status": {"conditions": [done(c) for c in conditions]}}


def pod(name: str, phase: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"phase": phase}}


# --- resolve ------------------------------------------------------------------------------


@pytest.mark.parametrize(("backup", "raises", "reason"), [
    (None, RestoreFailed, "BackupNotFound"),
    ({"status": {}}, BackupNotReady, None),
    ({"status": {"phase": "Pending"}}, BackupNotReady, None),
    ({"status": {"phase": "Running"}}, BackupNotReady, None),
    ({"status": {"phase": "Failed"}}, RestoreFailed, "BackupNotSucceeded"),
    ({"status": {"phase": "Deleting"}}, RestoreFailed, "BackupNotSucceeded"),
    ({"status": {"phase": "Succeeded"}}, None, None),
])
def test_which_backups_can_be_restored(backup: dict[str, Any] | None, raises: type | None,
                                       reason: str | None) -> None:
    if raises is None:
        decide.check_backup("nightly", backup)
        return
    with pytest.raises(raises) as info:
        decide.check_backup("nightly", backup)
    assert getattr(info.value, "reason", None) == reason


def source(**overrides: Any) -> decide.Source:
    values: dict[str, Any] = {
        "storage": {"bucket": "b"}, "manifest_key": "p/ns/nightly/manifest.json",
        "backup_id": "id-1", "components": ["database", "uploads"], "encrypted": [],
        "database": DB, "uploads": {"claimName": "uploads", "subPath": "files",
                                    "exclude": ["*.tmp"]},
    }
    return decide.Source(**{**values, **overrides})


def restore_spec(**spec: Any) -> models.RestoreSpec:
    return parse(models.RestoreSpec, {"backupName": "nightly", **spec})


def test_resolve_takes_the_connection_from_the_backup_and_the_targets_from_the_user() -> None:
    resolved = decide.resolve(
        restore_spec(database={"name": "scratch", "jobs": 2}, uploads={"mode": "merge"}),
        source())
    assert resolved["database"] == {
        "host": "db", "port": 5432, "name": "scratch", "user": "timesheet",
        "passwordSecretRef": {"name": "timesheet-db", "key": "password"}, "sslMode": "require",
        "createDatabase": False, "clean": True, "noOwner": False, "jobs": 2,
        "dropAfter": False}  # no format/tables: those belong to the dump
    assert resolved["uploads"] == {"claimName": "uploads", "subPath": "files", "mode": "merge"}
    assert resolved["components"] == ["database", "uploads"]
    assert (resolved["manifestKey"], resolved["backupId"], resolved["encrypted"]) == (
        "p/ns/nightly/manifest.json", "id-1", False)


@pytest.mark.parametrize(("spec", "src", "reason", "needle"), [
    ({"components": ["uploads"]}, {"components": ["database"]}, "ComponentMissing",
     "the backup has no uploads (it has database)"),
    ({}, {"database": {"host": "db"}}, "InvalidSpec",
     "database.name, database.user, database.passwordSecretRef"),
    ({"components": ["uploads"]}, {"uploads": {}}, "InvalidSpec", "uploads.claimName"),
    ({}, {"encrypted": ["database"]}, "DecryptionKeyMissing",
     "verification.decryption.secretRef"),
])
def test_resolve_refuses(spec: dict[str, Any], src: dict[str, Any], reason: str,
                         needle: str) -> None:
    with pytest.raises(RestoreFailed) as info:
        decide.resolve(restore_spec(**spec), source(**src))
    assert info.value.reason == reason and needle in str(info.value)


@pytest.mark.parametrize(("components", "encrypted", "decryption", "expected"), [
    (None, ["uploads"], True, True),
    (["database"], ["uploads"], False, False),  # only what is restored must be decrypted
    (["database"], ["database"], True, True),
])
def test_resolve_encryption(components: list[str] | None, encrypted: list[str],
                            decryption: bool, expected: bool) -> None:
    spec: dict[str, Any] = {"components": components} if components else {}
    if decryption:
        spec["decryption"] = {"secretRef": {"name": "age", "key": "identity"}}
    assert decide.resolve(restore_spec(**spec), source(encrypted=encrypted))["encrypted"] \
        is expected


# --- steps --------------------------------------------------------------------------------


@pytest.mark.parametrize("step", decide.STEPS)
def test_known_steps_resume(step: str) -> None:
    assert decide.unknown_step(step) is None


def test_an_unknown_step_fails_with_a_message() -> None:
    failure = decide.unknown_step("restore-v2")
    assert failure is not None and failure.reason == "UnknownStep"
    assert "'restore-v2'" in str(failure) and "resolve, wait, quiesce" in str(failure)


@pytest.mark.parametrize(("step", "deployments", "unquiesce"), [
    ("resolve", ["web"], False),
    ("wait", ["web"], False),
    ("quiesce", ["web"], True),
    ("restore", ["web"], True),
    ("hooks", ["web"], True),
    ("verify", ["web"], True),
    ("restore-v2", ["web"], True),  # unknown: give back whatever the annotation says is ours
    ("restore", [], False),
])
def test_which_failures_give_the_deployments_back(step: str, deployments: list[str],
                                                  unquiesce: bool) -> None:
    assert decide.unquiesce_after_failure(step, deployments) is unquiesce


HOOK_FAILED = "hook migrate failed: relation x does not exist (exit code 1)"


def step(name: str, phase: str, message: str | None = None) -> dict[str, Any]:
    entry = {"name": name, "phase": phase, "startTime": "2026-11-26T12:00:00Z"}
    return {**entry, "message": message} if message is not None else entry


@pytest.mark.parametrize(("status", "message"), [
    # failed at hooks, Deployments given back since: the hook's failure, not the last
    # in-progress message
    ({"failedStep": "hooks", "failureReason": "HookFailed",
      "message": decide.unquiescing_message(HOOK_FAILED),
      "steps": [step("restore", "Succeeded"), step("hooks", "Failed", HOOK_FAILED),
                step("unquiesce", "Succeeded")]}, HOOK_FAILED),
    # ... the same within the tick that failed (status.message not written yet)
    ({"failedStep": "hooks", "message": HOOK_FAILED,
      "steps": [step("hooks", "Failed", HOOK_FAILED)]}, HOOK_FAILED),
    # verify fails after a first, successful unquiesce: the verify step's message
    ({"failedStep": "verify",
      "message": decide.unquiescing_message("http://web/ answered 502"),
      "steps": [step("unquiesce", "Succeeded", "scaled back up"),
                step("verify", "Failed", "http://web/ answered 502")]},
     "http://web/ answered 502"),
    # an unknown step, recorded as it failed
    ({"failedStep": "restore-v2", "message": "status.currentStep 'restore-v2' is not ...",
      "steps": [step("restore-v2", "Failed", "status.currentStep 'restore-v2' is not ...")]},
     "status.currentStep 'restore-v2' is not ..."),
    # no message on the failed step: status.message, without the in-progress suffix
    ({"failedStep": "restore", "message": decide.unquiescing_message("pods still running"),
      "steps": [step("restore", "Failed"), step("unquiesce", "Succeeded")]},
     "pods still running"),
    ({"failedStep": "restore", "message": "pods still running",
      "steps": [step("restore", "Running", "restoring")]}, "pods still running"),
    ({"failedStep": "quiesce", "message": "scaling Deployments back up"},
     "scaling Deployments back up"),  # only the exact suffix goes
    ({"failedStep": "restore", "message": decide.unquiescing_message("")}, "restore failed"),
    ({"failedStep": "restore"}, "restore failed"),
])
def test_failure_message(status: dict[str, Any], message: str) -> None:
    assert decide.failure_message(status) == message


def test_unquiescing_message_keeps_the_failure_in_front() -> None:
    assert decide.unquiescing_message(HOOK_FAILED) == (
        f"{HOOK_FAILED}; scaling Deployments back up")


BUSY = "waiting for Restore other, which scaled Deployment web down, to give it back"


@pytest.mark.parametrize(("elapsed", "busy", "left", "action", "reason", "message"), [
    (10, BUSY, [], "wait", "", BUSY),
    (301, BUSY, [], "fail", "QuiesceBusy", f"{BUSY}; gave up after 300s"),
    (301, BUSY, ["web-1"], "fail", "QuiesceBusy", "quiesce.timeoutSeconds"),
    (10, None, ["web-1", "web-2"], "wait", "", "waiting for pods to stop: web-1, web-2"),
    (301, None, ["web-1"], "fail", "QuiesceTimeout", "pods still running after 300s: web-1"),
    (300, None, ["web-1"], "wait", "", "waiting for pods to stop"),
    (10, None, [], "done", "", ""),
    (9999, None, [], "done", "", ""),
])
def test_quiesce_progress(elapsed: int, busy: str | None, left: list[str], action: str,
                          reason: str, message: str) -> None:
    progress = decide.quiesce_progress(NOW, NOW + timedelta(seconds=elapsed), 300, busy, left)
    assert (progress.action, progress.reason) == (action, reason)
    assert message in progress.message


@pytest.mark.parametrize(("step", "recorded", "observed", "action", "reason"), [
    ("restore", None, None, "create", "JobCreated"),
    ("restore", "r-hook-0", None, "create", "JobCreated"),  # another step's Job was last
    ("restore", "r-restore", None, "fail", "JobMissing"),
    ("hooks", "r-restore", None, "fail", "JobMissing"),
    ("verify", "r-restore", None, "fail", "JobMissing"),
    ("restore", "r-restore", job(), "wait", ""),
    ("restore", None, job(), "wait", ""),  # created just before a crash: found, not recreated
    ("restore", "r-restore", job("Complete"), "done", "Completed"),
    ("restore", "r-restore", job("Failed"), "fail", "RestoreJobFailed"),
    ("hooks", "r-restore", job("Failed"), "fail", "HookFailed"),
    ("verify", "r-restore", job("Failed"), "fail", "VerificationFailed"),
])
def test_job_step(step: str, recorded: str | None, observed: dict[str, Any] | None,
                  action: str, reason: str) -> None:
    decision = decide.job_step(step, "r-restore", recorded, observed, [], NOW)
    assert (decision.action, decision.reason) == (action, reason)
    if reason == "JobMissing":
        assert "Job r-restore" in decision.message and "disappeared" in decision.message


@pytest.mark.parametrize(("recorded", "index"), [
    (None, 0), ("r-restore", 0), ("r-hook-0", 0), ("r-hook-1", 1), ("r-hook-2", 2),
])
def test_current_hook(recorded: str | None, index: int) -> None:
    assert decide.current_hook(["r-hook-0", "r-hook-1", "r-hook-2"], recorded) == index


# --- deletion -----------------------------------------------------------------------------


@pytest.mark.parametrize(("jobs", "pods", "delete", "waiting"), [
    ([], [], [], []),  # deleted before any Job: scale back up at once
    ([job()], [pod("p1", "Running")], ["r-restore"], ["p1", "Job r-restore"]),
    ([job()], [], ["r-restore"], ["Job r-restore"]),  # its pod may be starting
    ([job(deleting=True)], [pod("p1", "Running")], [], ["p1", "Job r-restore"]),
    ([], [pod("p1", "Running")], [], ["p1"]),  # Job gone, its pod still stopping
    ([], [pod("p1", "Pending")], [], ["p1"]),
    ([], [pod("p1", "Succeeded"), pod("p2", "Failed")], [], []),
    ([job("Complete")], [pod("p1", "Succeeded")], ["r-restore"], []),  # a finished Restore
    ([job("Failed", name="r-hook-0"), job(name="r-verify")], [pod("p2", "Running")],
     ["r-hook-0", "r-verify"], ["p2", "Job r-verify"]),
])
def test_deletion_waits_for_the_jobs_pods(jobs: list[dict[str, Any]],
                                          pods: list[dict[str, Any]], delete: list[str],
                                          waiting: list[str]) -> None:
    plan = decide.deletion(jobs, pods)
    assert plan.delete_jobs == delete
    assert plan.waiting_for == waiting
    assert plan.unquiesce is (not waiting)


@pytest.mark.parametrize("module", ["timesheet_backup.decisions.restores",
                                    "timesheet_backup.decisions.schedules",
                                    "timesheet_backup.jobs.manifests"])
def test_decisions_are_pure(module: str) -> None:
    """Decisions and Job builders run without kopf, the Kubernetes client or the handlers."""
    code = (f"import sys, {module}; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kopf', 'kubernetes')"
            " or m.startswith('timesheet_backup.handlers')))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert run.stdout.strip() == "[]"
