"""The Restore's decisions (decisions/restores.py), one row per branch: which backup can be
restored and into what (where it is, what its manifest adds, the Secrets), which step follows
which, what happens to a step's Job (created, followed, vanished), how a Deployment is
quiesced and given back, the quiesce step's waits and their time limit, an unknown step, how
a Restore ends and the message a failed one ends with, and a Restore deleted mid-way."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from timesheet_backup.api import models
from timesheet_backup.api.defaults import Defaults
from timesheet_backup.api.fields import dump, parse
from timesheet_backup.decisions import restores as decide
from timesheet_backup.decisions.restores import BackupNotReady, QuiesceBusy, RestoreFailed

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


def step(name: str, phase: str, message: str | None = None) -> dict[str, Any]:
    entry = {"name": name, "phase": phase, "startTime": "2026-11-26T12:00:00Z"}
    return {**entry, "message": message} if message is not None else entry


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
        "createDatabase": False, "clean": True, "noOwner": False, "globals": False, "jobs": 2,
        "dropAfter": False, "dataOnly": False, "schemaOnly": False}
    # no format/tables of the backup: those belong to the dump
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
    ({"database": {"globals": True}}, {}, "RolesMissing", "taken without database.globals"),
])
def test_resolve_refuses(spec: dict[str, Any], src: dict[str, Any], reason: str,
                         needle: str) -> None:
    with pytest.raises(RestoreFailed) as info:
        decide.resolve(restore_spec(**spec), source(**src))
    assert info.value.reason == reason and needle in str(info.value)


def test_resolve_globals_of_a_backup_with_roles() -> None:
    spec = restore_spec(database={"host": "fresh", "createDatabase": True, "owner": "timesheet",
                                  "globals": True})
    resolved = decide.resolve(spec, source(database_roles=True))
    assert resolved["database"]["globals"] is True
    # An uploads-only restore of the same spec does not need the roles.
    uploads_only = restore_spec(components=["uploads"], database={"globals": True})
    assert decide.resolve(uploads_only, source())["database"] is None


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


DEFAULTS = Defaults(
    storage=parse(models.StorageSpec, {"bucket": "default-bucket", "region": "eu-west-1"},
                  "storage"),
    database=parse(models.DatabaseSpec, {"host": "default-db", "name": "app"}, "database"),
    uploads=parse(models.UploadsSpec, {"claimName": "default-uploads"}, "uploads"))
SUCCEEDED = {"status": {"phase": "Succeeded", "manifestKey": "p/ns/nightly/manifest.json",
                        "resolved": {"storage": {"bucket": "b"}, "database": DB,
                                     "uploads": {"claimName": "uploads"}}}}


def test_locate_a_backup_by_name_takes_its_resolved_settings() -> None:
    location = decide.locate(restore_spec(), SUCCEEDED, DEFAULTS)
    assert location == decide.Location(storage={"bucket": "b"},
                                       manifest_key="p/ns/nightly/manifest.json",
                                       database=DB, uploads={"claimName": "uploads"},
                                       backup_name="nightly")


def test_locate_a_backup_whose_status_lacks_settings() -> None:
    bare = {"status": {"phase": "Succeeded", "manifestKey": "k/manifest.json"}}
    assert decide.locate(restore_spec(), bare, Defaults()) == decide.Location(
        storage={}, manifest_key="k/manifest.json", database={}, uploads={},
        backup_name="nightly")


@pytest.mark.parametrize(("backup", "raises"), [
    (None, RestoreFailed), ({"status": {"phase": "Running"}}, BackupNotReady)])
def test_locate_checks_the_backup(backup: dict[str, Any] | None, raises: type) -> None:
    with pytest.raises(raises):
        decide.locate(restore_spec(), backup, DEFAULTS)


@pytest.mark.parametrize(("defaults", "storage"), [
    (DEFAULTS, {"bucket": "dr", "region": "eu-west-1"}),  # merged over the default storage
    (Defaults(), {"bucket": "dr"}),
])
def test_locate_a_bucket_source(defaults: Defaults, storage: dict[str, Any]) -> None:
    spec = parse(models.RestoreSpec, {"source": {"storage": {"bucket": "dr"},
                                                 "manifestKey": "x/ns/b/manifest.json"}})
    location = decide.locate(spec, None, defaults)
    assert location == decide.Location(storage=storage, manifest_key="x/ns/b/manifest.json",
                                       database={}, uploads={})


def test_locate_without_a_source_is_refused() -> None:
    with pytest.raises(RestoreFailed) as info:
        decide.locate(parse(models.RestoreSpec, {}), None, DEFAULTS)
    assert (info.value.reason, str(info.value)) == (
        "InvalidSpec", "set exactly one of backupName, source or latest")


def test_an_unreadable_manifest() -> None:
    failure = decide.manifest_unreadable(decide.locate(restore_spec(), SUCCEEDED, DEFAULTS),
                                         LookupError("no such key"))
    assert (failure.reason, str(failure)) == (
        "ManifestUnreadable", "cannot read p/ns/nightly/manifest.json: no such key")


@pytest.mark.parametrize(("location", "defaults", "database", "uploads"), [
    # a Backup's own settings
    (decide.Location({"bucket": "b"}, "k", DB, {"claimName": "uploads"}), DEFAULTS, DB,
     {"claimName": "uploads"}),
    # a bucket source: the operator's defaults, when there are any
    (decide.Location({"bucket": "b"}, "k", {}, {}), DEFAULTS,
     dump(DEFAULTS.database), dump(DEFAULTS.uploads)),
    (decide.Location({"bucket": "b"}, "k", {}, {}), Defaults(), {}, {}),
])
def test_source_takes_connection_settings_from_the_backup_or_the_defaults(
        location: decide.Location, defaults: Defaults, database: dict[str, Any],
        uploads: dict[str, Any]) -> None:
    found = decide.source(location, "id-1", ("database", "uploads"), ("uploads",), defaults)
    assert found == decide.Source(storage={"bucket": "b"}, manifest_key="k", backup_id="id-1",
                                  components=["database", "uploads"], encrypted=["uploads"],
                                  database=database, uploads=uploads)


def test_missing_secrets_fail_the_restore() -> None:
    decide.check_secrets([])
    with pytest.raises(RestoreFailed) as info:
        decide.check_secrets(["Secret db not found", "Secret s3 has no key secret"])
    assert (info.value.reason, str(info.value)) == (
        "SecretMissing", "Secret db not found; Secret s3 has no key secret")


@pytest.mark.parametrize(("spec", "resolved", "expected"), [
    ({}, {"manifestKey": "k", "backupId": "id-1"},
     {"backupName": "nightly", "manifestKey": "k", "backupId": "id-1"}),
    ({"backupName": None, "source": {"storage": {"bucket": "b"}, "manifestKey": "k"}},
     {"manifestKey": "k"}, {"manifestKey": "k"}),
])
def test_restored_from(spec: dict[str, Any], resolved: dict[str, Any],
                       expected: dict[str, Any]) -> None:
    assert dump(decide.restored_from(restore_spec(**spec), resolved)) == expected


# --- steps --------------------------------------------------------------------------------


HOOK = {"name": "migrate", "image": "app"}
FULL = {"quiesce": {"deployments": ["web", "worker"]}, "hooks": {"postRestore": [HOOK]},
        "verify": {"httpGet": {"url": "http://web/health"}}}
WAIT = ("wait", "checking that no backup of the target is running")
QUIESCE = ("quiesce", "scaling web, worker to 0")
RESTORE = ("restore", "restoring")
HOOKS = ("hooks", "running hook migrate")
UNQUIESCE = ("unquiesce", "scaling Deployments back up")
VERIFY = ("verify", "checking http://web/health")


@pytest.mark.parametrize(("step", "spec", "failed", "following"), [
    ("resolve", {}, False, WAIT),
    ("wait", FULL, False, QUIESCE),
    ("wait", {}, False, RESTORE),
    ("quiesce", FULL, False, RESTORE),
    # no safety backup needed (safety_components empty): straight to the restore
    ("safety", FULL, False, RESTORE),
    ("safety", {}, False, RESTORE),
    ("restore", FULL, False, HOOKS),
    ("restore", {"quiesce": FULL["quiesce"]}, False, UNQUIESCE),
    ("restore", {"verify": FULL["verify"]}, False, VERIFY),
    ("restore", {}, False, None),
    ("hooks", FULL, False, UNQUIESCE),
    ("hooks", {"hooks": FULL["hooks"], "verify": FULL["verify"]}, False, VERIFY),
    ("hooks", {"hooks": FULL["hooks"]}, False, None),
    ("unquiesce", FULL, False, VERIFY),
    ("unquiesce", FULL, True, None),  # after a failure: the Restore ends Failed
    ("unquiesce", {"quiesce": FULL["quiesce"]}, False, None),
    ("verify", FULL, False, None),
    ("verify", {"verify": {"sqlChecks": ["SELECT 1"]}}, False, None),
])
def test_which_step_follows(step: str, spec: dict[str, Any], failed: bool,
                            following: tuple[str, str] | None) -> None:
    assert decide.following(step, restore_spec(**spec), failed) == following


SAFETY = ("safety", "backing up the current database and uploads first")


@pytest.mark.parametrize(("step", "spec", "following"), [
    ("wait", FULL, QUIESCE),  # quiesced first: no write lands between it and the restore
    ("wait", {}, SAFETY),
    ("quiesce", FULL, SAFETY),
    ("safety", FULL, RESTORE),
    ("restore", FULL, HOOKS),  # later steps do not change
])
def test_the_safety_step_comes_after_the_quiesce_and_before_the_restore(
        step: str, spec: dict[str, Any], following: tuple[str, str]) -> None:
    assert decide.following(step, restore_spec(**spec), False,
                            ["database", "uploads"]) == following


def test_the_restore_without_http_check_does_not_verify() -> None:
    spec = restore_spec(quiesce=FULL["quiesce"], verify={"sqlChecks": ["SELECT 1"]})
    assert decide.following("unquiesce", spec) is None
    assert decide.deployments_of(spec) == ["web", "worker"]
    assert decide.deployments_of(restore_spec()) == []


@pytest.mark.parametrize(("blocker", "reason"), [
    ("Backup nightly-1", "WaitingForBackup"), ("Restore other", "WaitingForRestore")])
def test_what_the_wait_step_says(blocker: str, reason: str) -> None:
    assert decide.waiting_for(blocker) == (
        reason, f"waiting for {blocker} of the same database to finish")


STAMP = "2026-11-26T12:00:00Z"
LATER = NOW + timedelta(seconds=30)


@pytest.mark.parametrize(("steps", "name", "phase", "message", "expected"), [
    # a new step, running: no completion time
    (None, "wait", "Running", None, [{"name": "wait", "phase": "Running", "startTime": STAMP}]),
    # a new step that ended at once (an unknown step's failure), with its message
    ([], "restore-v2", "Failed", "unknown",
     [{"name": "restore-v2", "phase": "Failed", "startTime": STAMP, "completionTime": STAMP,
       "message": "unknown"}]),
    ([], "verify", "Succeeded", None,
     [{"name": "verify", "phase": "Succeeded", "startTime": STAMP, "completionTime": STAMP}]),
    # an existing step ends: its start kept, the others untouched
    ([{"name": "resolve", "phase": "Succeeded", "startTime": STAMP, "completionTime": STAMP},
      {"name": "wait", "phase": "Running", "startTime": STAMP}], "wait", "Succeeded", None,
     [{"name": "resolve", "phase": "Succeeded", "startTime": STAMP, "completionTime": STAMP},
      {"name": "wait", "phase": "Succeeded", "startTime": STAMP,
       "completionTime": "2026-11-26T12:00:30Z"}]),
    ([{"name": "verify", "phase": "Running", "startTime": STAMP}], "verify", "Failed", "502",
     [{"name": "verify", "phase": "Failed", "startTime": STAMP,
       "completionTime": "2026-11-26T12:00:30Z", "message": "502"}]),
    # an existing step entered again: Running, nothing else changes
    ([{"name": "unquiesce", "phase": "Succeeded", "startTime": STAMP, "completionTime": STAMP}],
     "unquiesce", "Running", None,
     [{"name": "unquiesce", "phase": "Running", "startTime": STAMP, "completionTime": STAMP}]),
])
def test_record_step(steps: list[dict[str, Any]] | None, name: str, phase: str,
                     message: str | None, expected: list[dict[str, Any]]) -> None:
    when = NOW if not steps else LATER
    assert dump(decide.record_step(steps, name, phase, when, message)) == expected


def test_typed_steps() -> None:
    assert decide.typed_steps(None) is None
    assert decide.typed_steps([]) == []
    assert decide.typed_steps([step("wait", "Running")]) == [
        models.RestoreStep(name="wait", phase="Running", start_time=STAMP)]


@pytest.mark.parametrize(("steps", "started"), [
    (None, None),
    ([step("wait", "Succeeded")], None),
    ([step("wait", "Succeeded"), step("quiesce", "Running")], NOW),
    ([{"name": "quiesce", "phase": "Running"}], None),
])
def test_step_started(steps: list[dict[str, Any]] | None, started: datetime | None) -> None:
    assert decide.step_started(steps, "quiesce") == started


@pytest.mark.parametrize(("status", "ending"), [
    ({"resolved": {"manifestKey": "p/ns/b/manifest.json"}},
     decide.Ending("Succeeded", "Completed", "restored from p/ns/b/manifest.json", "Normal")),
    ({"resolved": {"manifestKey": "p/ns/b/manifest.json"},
      "safetyBackup": {"backupName": "r-safety"}},
     decide.Ending("Succeeded", "Completed", "restored from p/ns/b/manifest.json; the state "
                   "before it is in Backup r-safety (restore it to undo)", "Normal")),
    ({"failedStep": "restore", "failureReason": "RestoreJobFailed",
      "steps": [step("restore", "Failed", "pg_restore failed")]},
     decide.Ending("Failed", "RestoreJobFailed", "pg_restore failed", "Warning")),
])
def test_how_a_restore_ends(status: dict[str, Any], ending: decide.Ending) -> None:
    assert decide.ending(status) == ending



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


ORIGINAL = "backup.northstar.io/original-replicas"
HOLDER = "backup.northstar.io/quiesced-by"


def deployment(replicas: int | None = 3, **annotations: str) -> dict[str, Any]:
    spec = {} if replicas is None else {"replicas": replicas}
    return {"metadata": {"name": "web", "annotations": annotations or None}, "spec": spec}


@pytest.mark.parametrize(("observed", "holder"), [
    (None, None),
    (deployment(), None),
    (deployment(**{HOLDER: "r"}), None),  # this Restore's own
    (deployment(**{HOLDER: "other"}), "other"),
])
def test_holder(observed: dict[str, Any] | None, holder: str | None) -> None:
    assert decide.holder("r", observed) == holder


@pytest.mark.parametrize(("restore", "at_work"), [
    (None, False),
    ({"metadata": {"deletionTimestamp": STAMP}, "status": {"phase": "Running"}}, False),
    ({"metadata": {}, "status": {"phase": "Succeeded"}}, False),
    ({"metadata": {}, "status": {"phase": "Failed"}}, False),
    ({"metadata": {}, "status": {"phase": "Running"}}, True),
    ({"metadata": {}}, True),  # not started yet: it will quiesce
])
def test_which_restores_hold_their_deployments(restore: dict[str, Any] | None,
                                               at_work: bool) -> None:
    assert decide.at_work(restore) is at_work


def scale_down(**annotations: str) -> dict[str, Any]:
    return {"metadata": {"annotations": annotations}, "spec": {"replicas": 0}}


@pytest.mark.parametrize(("observed", "holder_at_work", "replicas", "patch"), [
    # free: scaled to 0 with its replicas and holder recorded in the same patch
    (deployment(3), False, 3, scale_down(**{ORIGINAL: "3", HOLDER: "r"})),
    (deployment(None), False, 1, scale_down(**{ORIGINAL: "1", HOLDER: "r"})),
    (deployment(0), False, 0, scale_down(**{ORIGINAL: "0", HOLDER: "r"})),
    # already ours (a later tick, or after a crash): the record stands, nothing to patch
    (deployment(0, **{ORIGINAL: "2", HOLDER: "r"}), False, 2, None),
    (deployment(0, **{HOLDER: "r"}), False, 1, None),
    # left by a Restore that is gone: its count is the true one, taken over
    (deployment(0, **{ORIGINAL: "4", HOLDER: "gone"}), False, 4, scale_down(**{HOLDER: "r"})),
    (deployment(0, **{HOLDER: "gone"}), False, 1, scale_down(**{HOLDER: "r"})),
])
def test_quiesce_deployment(observed: dict[str, Any], holder_at_work: bool, replicas: int,
                            patch: dict[str, Any] | None) -> None:
    assert decide.quiesce_deployment("r", "web", observed, holder_at_work) == decide.Quiesce(
        replicas, patch)


def test_quiesce_a_missing_deployment_fails() -> None:
    with pytest.raises(RestoreFailed) as info:
        decide.quiesce_deployment("r", "web", None, False)
    assert (info.value.reason, str(info.value)) == (
        "DeploymentNotFound", "Deployment web to quiesce not found")


def test_quiesce_waits_for_a_restore_still_holding_the_deployment() -> None:
    with pytest.raises(QuiesceBusy) as info:
        decide.quiesce_deployment("r", "web", deployment(0, **{HOLDER: "other"}), True)
    assert str(info.value) == BUSY


@pytest.mark.parametrize(("observed", "patch"), [
    (None, None),  # gone
    (deployment(2), None),  # never scaled down
    (deployment(0, **{ORIGINAL: "2", HOLDER: "other"}), None),  # another Restore's
    (deployment(0, **{ORIGINAL: "2", HOLDER: "r"}),
     {"metadata": {"annotations": {ORIGINAL: None, HOLDER: None}}, "spec": {"replicas": 2}}),
    (deployment(0, **{HOLDER: "r"}),
     {"metadata": {"annotations": {ORIGINAL: None, HOLDER: None}}, "spec": {"replicas": 1}}),
])
def test_unquiesce_patch(observed: dict[str, Any] | None, patch: dict[str, Any] | None) -> None:
    assert decide.unquiesce_patch("r", observed) == patch


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
