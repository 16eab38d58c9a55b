"""The safety Backup before an in-place restore (decisions/restores.py): when one is needed
(what the restore would drop), the Backup it creates (the restore's targets, the source's
bucket, no owner), how the `safety` step follows it, and the safety Backups' own retention."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes.client import ApiException

from timesheet_backup import constants as c
from timesheet_backup.actions import restores as actions
from timesheet_backup.api import models
from timesheet_backup.api.fields import parse
from timesheet_backup.decisions import restores as decide
from timesheet_backup.decisions import schedules

pytestmark = pytest.mark.unit

BOTH = {"components": ["database", "uploads"]}


def spec(**fields: Any) -> models.RestoreSpec:
    return parse(models.RestoreSpec, {"backupName": "nightly", **fields})


@pytest.mark.parametrize(("fields", "resolved", "components"), [
    # the defaults: clean into the existing database, uploads replaced
    ({}, BOTH, ["database", "uploads"]),
    ({}, {"components": ["database"]}, ["database"]),
    ({}, {"components": ["uploads"]}, ["uploads"]),
    ({}, {}, []),
    ({"safetyBackup": {"enabled": True, "keep": 5}}, BOTH, ["database", "uploads"]),
    ({"safetyBackup": {"enabled": False}}, BOTH, []),
    # nothing dropped: no clean, a database the restore creates, a scratch one, rows added
    ({"database": {"clean": False}}, {"components": ["database"]}, []),
    ({"database": {"createDatabase": True}}, {"components": ["database"]}, []),
    ({"database": {"name": "scratch", "dropAfter": True, "createDatabase": True}},
     {"components": ["database"]}, []),
    ({"database": {"dropAfter": True}}, {"components": ["database"]}, []),
    ({"database": {"dataOnly": True, "clean": False}}, {"components": ["database"]}, []),
    # an existing database cleaned is overwritten, whatever its name (a side one too)
    ({"database": {"name": "other", "tables": ["t"]}}, {"components": ["database"]},
     ["database"]),
    ({"uploads": {"mode": "merge"}}, BOTH, ["database"]),
    ({"uploads": {"mode": "replace", "subPath": "x"}}, {"components": ["uploads"]},
     ["uploads"]),
    # a throwaway emptyDir holds nothing of the app's
    ({"uploads": {"scratch": {}}}, BOTH, ["database"]),
    ({"uploads": {"scratch": {"sizeLimit": "1Gi"}}}, {"components": ["uploads"]}, []),
])
def test_which_restores_take_a_safety_backup(fields: dict[str, Any], resolved: dict[str, Any],
                                              components: list[str]) -> None:
    assert decide.safety_components(spec(**fields), resolved) == components


SCHEDULE = {"apiVersion": c.API_VERSION, "kind": c.KIND_SCHEDULE,
            "metadata": {"name": "nightly", "namespace": "ns", "uid": "u"},
            "spec": {"template": {"spec": {}}}}


@pytest.mark.parametrize(("components", "restored"), [
    ("database", ["database"]),
    ("database,uploads", ["database", "uploads"]),
    (None, ["database"]),  # a status without components: the database, as before
])
def test_a_restore_test_restores_the_uploads_into_a_scratch_volume(
        components: str | None, restored: list[str]) -> None:
    status: dict[str, Any] = {"resolved": {"database": {"name": "timesheet_db"}}}
    if components is not None:
        status["components"] = components
    body = schedules.verification_body(
        SCHEDULE, models.VerificationSpec(
            schedule="0 3 * * 0",
            decryption=models.DecryptionSpec(secret_ref=parse(
                models.SecretKeyRef, {"name": "age", "key": "identity"}))),
        {"metadata": {"name": "nightly-1"}, "status": status}, "nightly-verify-1")
    restore = parse(models.RestoreSpec, body["spec"])
    assert restore.components == restored
    if "uploads" in restored:
        assert body["spec"]["uploads"] == {"scratch": {}}
        # never the app's claim, and nothing of it backed up first
        resolved = decide.resolve(restore, decide.Source(
            storage={"bucket": "b"}, manifest_key="p/ns/nightly/manifest.json",
            backup_id="id", components=["database", "uploads"],
            encrypted=["database", "uploads"],
            database={"host": "db", "name": "timesheet_db", "user": "u",
                      "passwordSecretRef": {"name": "db", "key": "password"}},
            uploads={"claimName": "app-uploads", "subPath": "files"}))
        assert resolved["uploads"] == {"scratch": {}, "mode": "replace"}
        assert decide.safety_components(restore, resolved) == []
    else:
        assert "uploads" not in body["spec"]
    # the key goes along whatever is restored
    assert body["spec"]["decryption"] == {"secretRef": {"name": "age", "key": "identity"}}


def test_a_schedules_restore_test_takes_no_safety_backup() -> None:
    """Restore tests restore into a scratch database: not in place."""
    schedule = {"apiVersion": c.API_VERSION, "kind": c.KIND_SCHEDULE,
                "metadata": {"name": "nightly", "namespace": "ns", "uid": "u"},
                "spec": {"template": {"spec": {}}}}
    backup = {"metadata": {"name": "nightly-1"},
              "status": {"resolved": {"database": {"name": "timesheet_db"}}}}
    body = schedules.verification_body(
        schedule, models.VerificationSpec(schedule="0 3 * * 0", checks=["SELECT 1"]), backup,
        "nightly-verify-1")
    restore = parse(models.RestoreSpec, body["spec"])
    assert decide.safety_components(restore, {"components": restore.components}) == []
    # not only because it restores into a new scratch database: it says so
    assert decide.safety_components(restore, {"components": ["database", "uploads"]}) == []


UID = "0f3c2a91-5b6e-4c1d-9a8f-2e7b6c5d4e3f"
RESOLVED = {
    "storage": {"bucket": "backups", "prefix": "prod",
                "credentialsSecretRef": {"name": "s3"}},
    "manifestKey": "prod/ns/nightly/manifest.json",
    "components": ["database", "uploads"],
    "database": {"host": "db", "port": 5432, "name": "timesheet_db", "user": "timesheet",
                 "passwordSecretRef": {"name": "db", "key": "password"}, "clean": True,
                 "tables": ["t"]},
    "uploads": {"claimName": "uploads", "subPath": "files", "mode": "replace"},
}


def test_the_safety_backup_is_of_the_restores_targets_into_the_sources_bucket() -> None:
    body = decide.safety_backup_body("ns", "r1", UID, spec(job={"activeDeadlineSeconds": 600}),
                                     RESOLVED, ["database", "uploads"])
    assert body["metadata"] == {
        "name": "r1-safety-0f3c2a91", "namespace": "ns",
        "labels": {c.LABEL_MANAGED_BY: c.MANAGED_BY, c.LABEL_SAFETY_FOR: "r1"}}
    assert "ownerReferences" not in body["metadata"]  # it outlives the Restore
    assert body["spec"] == {
        "components": ["database", "uploads"],
        "storage": RESOLVED["storage"],
        # the connection only: the restore's own fields (clean, tables) are not a dump's
        "database": {"host": "db", "port": 5432, "name": "timesheet_db", "user": "timesheet",
                     "passwordSecretRef": {"name": "db", "key": "password"}},
        "uploads": {"claimName": "uploads", "subPath": "files"},
        "job": {"activeDeadlineSeconds": 600},
    }
    parse(models.BackupSpec, body["spec"])  # a valid Backup


def test_the_safety_backup_of_one_component() -> None:
    body = decide.safety_backup_body("ns", "r1", UID, spec(), RESOLVED, ["uploads"])
    assert set(body["spec"]) == {"components", "storage", "uploads"}
    body = decide.safety_backup_body("ns", "r1", UID, spec(), {"components": ["database"]},
                                     ["database"])
    assert body["spec"] == {"components": ["database"], "storage": {}, "database": {}}


def test_the_safety_backup_name_is_deterministic_and_short() -> None:
    assert decide.safety_backup_name("r1", UID) == "r1-safety-0f3c2a91"
    # a Restore created again under the same name gets its own
    assert decide.safety_backup_name("r1", "7d1e" + UID[4:]) == "r1-safety-7d1e2a91"
    long = decide.safety_backup_name("r" * 80, UID)
    assert long == decide.safety_backup_name("r" * 80, UID) and len(long) <= 63


def backup(phase: str | None, message: str | None = None, deleting: bool = False,
           **status: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "r1-safety"}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-26T12:00:00Z"
    st: dict[str, Any] = {**status}
    if phase:
        st["phase"] = phase
    if message:
        st["message"] = message
    return {"metadata": meta, "status": st}


@pytest.mark.parametrize(("recorded", "observed", "expected"), [
    (None, None, decide.SafetyStep("create", "Backup r1-safety created")),
    # created before a crash, before status recorded it: found, followed (no second one)
    (None, backup("Pending"), decide.SafetyStep("wait",
                                                "waiting for safety Backup r1-safety (Pending)")),
    ("r1-safety", backup(None), decide.SafetyStep(
        "wait", "waiting for safety Backup r1-safety (Pending)")),
    ("r1-safety", backup("Running"), decide.SafetyStep(
        "wait", "waiting for safety Backup r1-safety (Running)")),
    ("r1-safety", backup("Succeeded", manifestKey="p/ns/r1-safety/manifest.json"),
     decide.SafetyStep("done", "the state before the restore is in Backup r1-safety "
                       "(p/ns/r1-safety/manifest.json)", "p/ns/r1-safety/manifest.json")),
    ("r1-safety", backup("Failed", "cannot reach the bucket"), decide.SafetyStep(
        "fail", "safety Backup r1-safety failed: cannot reach the bucket; the restore did not "
                "start (nothing was changed)")),
    ("r1-safety", backup("Failed"), decide.SafetyStep(
        "fail", "safety Backup r1-safety failed: no message; the restore did not start "
                "(nothing was changed)")),
    ("r1-safety", backup("Deleting"), decide.SafetyStep(
        "fail", "safety Backup r1-safety is being deleted; the restore did not start")),
    ("r1-safety", backup("Running", deleting=True), decide.SafetyStep(
        "fail", "safety Backup r1-safety is being deleted; the restore did not start")),
    ("r1-safety", None, decide.SafetyStep(
        "fail", "safety Backup r1-safety disappeared before it ended; the restore did not "
                "start")),
])
def test_safety_step(recorded: str | None, observed: dict[str, Any] | None,
                     expected: decide.SafetyStep) -> None:
    assert decide.safety_step("r1-safety", recorded, observed) == expected


def safety(name: str, created: str, phase: str | None, *, label: bool = True,
           deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "creationTimestamp": created,
                            "labels": {c.LABEL_SAFETY_FOR: name[:-7]} if label else {}}
    if deleting:
        meta["deletionTimestamp"] = created
    return {"metadata": meta, "status": {"phase": phase} if phase else {}}


def test_safety_backup_retention_keeps_the_newest_succeeded() -> None:
    listed = [
        safety("a-safety", "2026-11-01T00:00:00Z", "Succeeded"),
        safety("b-safety", "2026-11-02T00:00:00Z", "Succeeded"),
        safety("c-safety", "2026-11-03T00:00:00Z", "Failed"),  # nothing to go back to
        safety("d-safety", "2026-11-04T00:00:00Z", "Succeeded"),
        safety("e-safety", "2026-11-05T00:00:00Z", "Running"),  # its Restore is at work
        safety("f-safety", "2026-11-05T00:00:00Z", None),
        safety("g-safety", "2026-11-06T00:00:00Z", "Succeeded"),
        safety("h-safety", "2026-10-01T00:00:00Z", "Succeeded", deleting=True),
        safety("nightly-1xxxxxx", "2026-10-01T00:00:00Z", "Succeeded", label=False),
    ]
    assert decide.prune_safety_backups(listed, 2) == ["a-safety", "b-safety", "c-safety"]
    assert decide.prune_safety_backups(listed, 3) == ["a-safety", "c-safety"]
    assert decide.prune_safety_backups(listed, 10) == ["c-safety"]
    assert decide.prune_safety_backups([], 3) == []


def test_same_creation_time_goes_by_name() -> None:
    listed = [safety("a-safety", "2026-11-01T00:00:00Z", "Succeeded"),
              safety("b-safety", "2026-11-01T00:00:00Z", "Succeeded")]
    assert decide.prune_safety_backups(listed, 1) == ["a-safety"]


def test_safety_backup_spec_defaults() -> None:
    assert spec().safety_backup is None  # on by default (safety_components)
    assert parse(models.SafetyBackupSpec, {}) == models.SafetyBackupSpec(enabled=True, keep=3)


@pytest.mark.parametrize(("status", "body", "said"), [
    (422, json.dumps({"message": 'Backup.backup.northstar.io "x" is invalid'}),
     'Backup.backup.northstar.io "x" is invalid'),
    (403, "not json", "Forbidden"),
    (400, None, "Forbidden"),
])
def test_a_safety_backup_the_api_server_refuses_fails_the_restore(
        monkeypatch: pytest.MonkeyPatch, status: int, body: str | None, said: str) -> None:
    """Not retried forever: the server's words end the Restore (SafetyBackupFailed)."""
    def refuse(namespace: str, plural: str, obj: Any) -> bool:
        exc = ApiException(status=status, reason="Forbidden")
        exc.body = body
        raise exc

    monkeypatch.setattr(actions.kube, "create_custom", refuse)
    with pytest.raises(decide.RestoreFailed) as info:
        actions.create_safety_backup("ns", {"metadata": {"name": "r1-safety-0f3c2a91"}})
    assert info.value.reason == "SafetyBackupFailed"
    assert str(info.value) == (f"the API server refused safety Backup r1-safety-0f3c2a91: "
                               f"{said}; the restore did not start")


def test_other_api_errors_are_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(namespace: str, plural: str, obj: Any) -> bool:
        raise ApiException(status=503, reason="Service Unavailable")

    monkeypatch.setattr(actions.kube, "create_custom", unavailable)
    with pytest.raises(ApiException):
        actions.create_safety_backup("ns", {"metadata": {"name": "r1-safety-0f3c2a91"}})


def test_pruning_deletes_what_retention_decides_and_never_holds_up_the_restore(
        monkeypatch: pytest.MonkeyPatch) -> None:
    listed = [safety(f"{x}-safety", f"2026-11-0{i}T00:00:00Z", "Succeeded")
              for i, x in enumerate("abcd", start=1)]
    selectors, deleted = [], []
    monkeypatch.setattr(actions.kube, "list_custom",
                        lambda ns, plural, selector: selectors.append(selector) or listed)
    monkeypatch.setattr(actions.kube, "delete_custom",
                        lambda ns, plural, name: deleted.append((plural, name)))
    actions.prune_safety_backups("ns", spec(safetyBackup={"keep": 2}))
    assert selectors == [c.LABEL_SAFETY_FOR]
    assert deleted == [("backups", "a-safety"), ("backups", "b-safety")]

    def refuse(ns: str, plural: str, name: str) -> None:
        raise ApiException(status=403, reason="Forbidden")

    monkeypatch.setattr(actions.kube, "delete_custom", refuse)
    actions.prune_safety_backups("ns", spec())  # logged, not raised
