"""Object Lock (storage.objectLock), branch by branch: the agent's arguments and request, the
store's lock headers and checks, the manifest and status, retention that keeps a locked
Backup until its date, and what deleting a locked Backup does."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from botocore.exceptions import ClientError

from timesheet_backup.agent import cli
from timesheet_backup.agent.backup import BackupRequest
from timesheet_backup.api import crds, models
from timesheet_backup.api.defaults import Defaults
from timesheet_backup.api.fields import parse
from timesheet_backup.api.resolve import resolve_backup
from timesheet_backup.cli import build_parser
from timesheet_backup.decisions.backups import (
    CLOCK_SKEW_SECONDS,
    MAX_WAIT_SECONDS,
    Deletion,
    deletion,
)
from timesheet_backup.decisions.schedules import retention_pass
from timesheet_backup.errors import ConfigError, IntegrityError, StorageError
from timesheet_backup.jobs import agent_args
from timesheet_backup.storage import manifest as mf
from timesheet_backup.storage.s3 import (
    ObjectLock,
    ObjectVersion,
    S3Settings,
    S3Store,
    no_object_lock_message,
)
from timesheet_backup.storage.uploader import MultipartUploader, UploadResult

pytestmark = pytest.mark.unit

START = datetime(2026, 11, 20, 2, 0, 7, 123456, tzinfo=UTC)
UNTIL = datetime(2026, 12, 20, 2, 0, 7, tzinfo=UTC)
NO_LOCK = ("InvalidRequest", "Bucket is missing ObjectLockConfiguration")


def client_error(code: str, message: str = "") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message or code}}, "Op")


# --- API, resolution, the agent's arguments -----------------------------------------------


def spec_with_lock(lock: dict[str, Any] | None = None) -> dict[str, Any]:
    storage: dict[str, Any] = {"bucket": "b"}
    if lock is not None:
        storage["objectLock"] = lock
    return {"components": ["uploads"], "uploads": {"claimName": "data"}, "storage": storage}


def test_the_crd_has_object_lock_and_locked_until() -> None:
    (definition,) = [d for d in crds.DEFINITIONS if d.kind == "Backup"]
    schema = crds.crd(definition)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    lock = schema["properties"]["spec"]["properties"]["storage"]["properties"]["objectLock"]
    assert lock["properties"]["mode"]["enum"] == ["GOVERNANCE", "COMPLIANCE"]
    assert lock["properties"]["days"]["minimum"] == 1
    assert set(lock["required"]) == {"mode", "days"}
    assert schema["properties"]["status"]["properties"]["lockedUntil"]["format"] == "date-time"


def test_operator_defaults_carry_the_lock_and_a_backup_may_set_its_own() -> None:
    defaults = parse(Defaults, {"storage": {"bucket": "b", "objectLock": {
        "mode": "COMPLIANCE", "days": 30}}})
    resolved = resolve_backup(spec_with_lock(), defaults)
    assert resolved.storage and resolved.storage.object_lock == models.ObjectLockSpec(
        mode="COMPLIANCE", days=30)
    own = resolve_backup(spec_with_lock({"mode": "GOVERNANCE", "days": 7}), defaults)
    assert own.storage and own.storage.object_lock == models.ObjectLockSpec(
        mode="GOVERNANCE", days=7)


@pytest.mark.parametrize(("lock", "expected"), [
    (None, []),
    ({"mode": "GOVERNANCE", "days": 7},
     ["--object-lock-mode=GOVERNANCE", "--object-lock-days=7"]),
])
def test_backup_args_pass_the_lock_to_the_agent(lock: dict[str, Any] | None,
                                                expected: list[str]) -> None:
    spec = resolve_backup(spec_with_lock(lock), Defaults())
    args = agent_args.backup_args("uid", "ns", "b1", spec)
    assert [a for a in args if a.startswith("--object-lock")] == expected
    parsed = build_parser().parse_args(args)
    request = cli.backup_request(parsed, {})
    assert request.object_lock_mode == (lock or {}).get("mode")
    assert request.object_lock_days == (lock or {}).get("days")


def request(**kwargs: Any) -> BackupRequest:
    return BackupRequest(backup_id="id", namespace="ns", name="b1", components=("uploads",),
                         uploads_dir=None, **kwargs)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"object_lock_mode": "GOVERNANCE"}, "go together"),
    ({"object_lock_days": 3}, "go together"),
    ({"object_lock_mode": "LEGAL", "object_lock_days": 3}, "must be one of"),
    ({"object_lock_mode": "COMPLIANCE", "object_lock_days": 0}, "at least 1"),
])
def test_the_agent_refuses_half_a_lock(kwargs: dict[str, Any], message: str) -> None:
    from pathlib import Path
    bad = BackupRequest(backup_id="id", namespace="ns", name="b1", components=("uploads",),
                        uploads_dir=Path("/x"), **kwargs)
    with pytest.raises(ConfigError, match=message):
        bad.validate()


def test_retain_until_is_the_start_plus_days_in_whole_seconds() -> None:
    assert request().object_lock(START) is None
    lock = request(object_lock_mode="COMPLIANCE", object_lock_days=30).object_lock(START)
    assert lock == ObjectLock("COMPLIANCE", UNTIL)
    assert lock.args() == {"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": UNTIL}


def test_object_lock_refuses_bad_values() -> None:
    with pytest.raises(ConfigError):
        ObjectLock("LEGAL", UNTIL)
    with pytest.raises(ValueError, match="timezone"):
        ObjectLock("GOVERNANCE", UNTIL.replace(tzinfo=None))


# --- the store --------------------------------------------------------------------------


class LockStore:
    """A fake S3 client that knows Object Lock."""

    def __init__(self, *, lock_config: str | None = None, applies: bool = True,
                 refuse: tuple[str, str] | None = None) -> None:
        self.lock_config = lock_config  # None: has one; else the error code
        self.applies = applies
        self.refuse = refuse
        self.puts: list[dict[str, Any]] = []
        self.creates: list[dict[str, Any]] = []
        self.deleted: list[list[dict[str, str]]] = []
        self.stored: dict[str, Any] = {}

    def get_object_lock_configuration(self, **_: Any) -> dict[str, Any]:
        if self.lock_config:
            raise client_error(self.lock_config)
        return {"ObjectLockConfiguration": {"ObjectLockEnabled": "Enabled"}}

    def put_object(self, **kwargs: Any) -> dict[str, Any]:
        if self.refuse:
            raise client_error(*self.refuse)
        self.puts.append(kwargs)
        self.stored = kwargs
        return {"ETag": ""}

    def head_object(self, **_: Any) -> dict[str, Any]:
        head: dict[str, Any] = {"ContentLength": len(self.stored.get("Body", b"")), "ETag": ""}
        if self.applies and "ObjectLockMode" in self.stored:
            head |= {"ObjectLockMode": self.stored["ObjectLockMode"],
                     "ObjectLockRetainUntilDate": self.stored["ObjectLockRetainUntilDate"]}
        return head

    def create_multipart_upload(self, **kwargs: Any) -> dict[str, Any]:
        if self.refuse:
            raise client_error(*self.refuse)
        self.creates.append(kwargs)
        return {"UploadId": "u"}

    def abort_multipart_upload(self, **_: Any) -> dict[str, Any]:
        return {}

    def delete_objects(self, **kwargs: Any) -> dict[str, Any]:
        self.deleted.append(kwargs["Delete"]["Objects"])
        return {}


def lock_store(client: LockStore) -> S3Store:
    return S3Store(S3Settings(bucket="vault"), client=client)  # type: ignore[arg-type]


LOCK = ObjectLock("GOVERNANCE", UNTIL)


def test_check_object_lock_passes_a_bucket_with_lock() -> None:
    lock_store(LockStore()).check_object_lock()


def test_check_object_lock_refuses_a_bucket_without_it_clearly() -> None:
    store = lock_store(LockStore(lock_config="ObjectLockConfigurationNotFoundError"))
    with pytest.raises(StorageError) as caught:
        store.check_object_lock()
    assert str(caught.value) == ("bucket vault has no Object Lock configuration; create it "
                                 "with object lock enabled or remove storage.objectLock")
    assert str(caught.value) == no_object_lock_message("vault")


def test_check_object_lock_lets_a_write_only_key_through() -> None:
    """A key that may not read the lock configuration: the uploads will tell."""
    lock_store(LockStore(lock_config="AccessDenied")).check_object_lock()


def test_check_object_lock_reports_other_errors() -> None:
    with pytest.raises(StorageError, match="Object Lock configuration of s3://vault"):
        lock_store(LockStore(lock_config="InternalError")).check_object_lock()


def test_write_bytes_sends_and_checks_the_retention() -> None:
    client = LockStore()
    lock_store(client).write_bytes("k", b"{}", "application/json", LOCK)
    assert client.puts[0]["ObjectLockMode"] == "GOVERNANCE"
    assert client.puts[0]["ObjectLockRetainUntilDate"] == UNTIL
    assert "ContentMD5" in client.puts[0]  # S3 requires it (or a checksum) with a lock


def test_write_bytes_without_lock_sends_no_lock_headers() -> None:
    client = LockStore()
    lock_store(client).write_bytes("k", b"{}", "application/json")
    assert "ObjectLockMode" not in client.puts[0]


def test_a_store_that_ignores_the_lock_fails_the_write() -> None:
    with pytest.raises(IntegrityError, match="reports Object Lock none"):
        lock_store(LockStore(applies=False)).write_bytes("k", b"{}", "application/json", LOCK)


def test_a_bucket_without_lock_refusing_the_put_gives_the_clear_message() -> None:
    with pytest.raises(StorageError, match=r"^bucket vault has no Object Lock configuration"):
        lock_store(LockStore(refuse=NO_LOCK)).write_bytes("k", b"{}", "application/json", LOCK)


def test_the_multipart_upload_carries_the_lock_on_create() -> None:
    client = LockStore()
    with lock_store(client).uploader("k", lock=LOCK) as uploader:
        assert isinstance(uploader, MultipartUploader)
    assert client.creates[0]["ObjectLockMode"] == "GOVERNANCE"
    assert client.creates[0]["ObjectLockRetainUntilDate"] == UNTIL


def test_a_refused_multipart_create_gives_the_clear_message() -> None:
    store = lock_store(LockStore(refuse=NO_LOCK))
    with pytest.raises(StorageError, match=r"^bucket vault has no Object Lock configuration"), \
            store.uploader("k", lock=LOCK):
        pass


def test_other_create_failures_keep_their_description() -> None:
    store = lock_store(LockStore(refuse=("AccessDenied", "no")))
    with pytest.raises(StorageError, match="access denied to s3://vault/k"), \
            store.uploader("k", lock=LOCK):
        pass


def uploaded(size: int = 2) -> UploadResult:
    return UploadResult(key="k", size=size, sha256="0" * 64, parts=(), checksummed=False)


@pytest.mark.parametrize(("head", "ok"), [
    ({"ObjectLockMode": "GOVERNANCE", "ObjectLockRetainUntilDate": UNTIL}, True),
    ({"ObjectLockMode": "GOVERNANCE",
      "ObjectLockRetainUntilDate": UNTIL + timedelta(days=1)}, True),
    ({"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": UNTIL}, False),
    ({"ObjectLockMode": "GOVERNANCE",
      "ObjectLockRetainUntilDate": UNTIL - timedelta(seconds=1)}, False),
    ({}, False),
])
def test_verify_checks_the_retention_the_store_reports(head: dict[str, Any], ok: bool) -> None:
    class Head:
        def head_object(self, **_: Any) -> dict[str, Any]:
            return {"ContentLength": 2, "ETag": "", **head}

    store = S3Store(S3Settings(bucket="vault"), client=Head())  # type: ignore[arg-type]
    if ok:
        assert store.verify(uploaded(), LOCK) == ("size",)
    else:
        with pytest.raises(IntegrityError, match="Object Lock"):
            store.verify(uploaded(), LOCK)
    assert store.verify(uploaded()) == ("size",)  # no lock asked: not checked


def test_delete_versions_deletes_null_versions_by_key() -> None:
    client = LockStore()
    lock_store(client).delete_versions([ObjectVersion("a", "null"), ObjectVersion("b", "v2"),
                                        ObjectVersion("b", "m1", delete_marker=True)])
    assert client.deleted == [[{"Key": "a"}, {"Key": "b", "VersionId": "v2"},
                               {"Key": "b", "VersionId": "m1"}]]


def test_delete_versions_reports_a_refused_version() -> None:
    class Refusing(LockStore):
        def delete_objects(self, **kwargs: Any) -> dict[str, Any]:
            return {"Errors": [{"Key": "a", "VersionId": "v1", "Code": "AccessDenied",
                                "Message": "object protected by object lock"}]}

    with pytest.raises(StorageError, match="s3://vault/a \\(version v1\\): AccessDenied"):
        lock_store(Refusing()).delete_versions([ObjectVersion("a", "v1")])


# --- manifest and status ----------------------------------------------------------------


def manifest(lock: bool) -> mf.Manifest:
    return mf.Manifest(
        backup_id="id", namespace="ns", name="b1", start_time=START,
        completion_time=START + timedelta(minutes=1), agent_version="0",
        artifacts=(mf.Artifact(component="uploads", key="p/ns/b1/uploads.tar.zst",
                               size_bytes=1, sha256="ab" * 32, format="tar",
                               compression="zstd"),),
        lock_mode="COMPLIANCE" if lock else None, locked_until=UNTIL if lock else None)


def test_the_manifest_records_the_lock_and_reads_it_back() -> None:
    raw = mf.dumps(manifest(True))
    assert json.loads(raw)["objectLock"] == {"mode": "COMPLIANCE",
                                             "retainUntil": "2026-12-20T02:00:07Z"}
    back = mf.loads(raw)
    assert (back.lock_mode, back.locked_until) == ("COMPLIANCE", UNTIL)
    summary = mf.summary(back, "p/ns/b1/manifest.json")
    assert summary["lockedUntil"] == "2026-12-20T02:00:07Z"
    status = parse(models.BackupStatus, summary, "status")
    assert status.locked_until == "2026-12-20T02:00:07Z"


def test_a_manifest_without_lock_has_no_lock_field() -> None:
    """So it stays readable by agents that predate Object Lock (their parser is strict)."""
    raw = mf.dumps(manifest(False))
    assert "objectLock" not in json.loads(raw)
    assert "lockedUntil" not in mf.summary(mf.loads(raw), "p/ns/b1/manifest.json")


@pytest.mark.parametrize(("lock", "message"), [
    ({"mode": "LEGAL", "retainUntil": "2026-12-20T02:00:07Z"}, "objectLock.mode"),
    ({"mode": "GOVERNANCE"}, "objectLock.retainUntil is required"),
    ({"mode": "GOVERNANCE", "retainUntil": "soon"}, "not an ISO 8601 time"),
    ({"mode": "GOVERNANCE", "retainUntil": "2026-12-20T02:00:07Z", "x": 1},
     "unknown field objectLock.x"),
    ("GOVERNANCE", "objectLock must be an object"),
])
def test_a_bad_lock_in_a_manifest_is_refused(lock: Any, message: str) -> None:
    from timesheet_backup.errors import ManifestError
    data = json.loads(mf.dumps(manifest(True)))
    data["objectLock"] = lock
    with pytest.raises(ManifestError, match=message):
        mf.from_dict(data)


# --- retention --------------------------------------------------------------------------


NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)


def backup(name: str, completed: str, locked_until: str | None = None) -> dict[str, Any]:
    st: dict[str, Any] = {"phase": "Succeeded", "completionTime": completed}
    if locked_until:
        st["lockedUntil"] = locked_until
    return {"metadata": {"name": name, "creationTimestamp": completed}, "status": st}


def history(lock_1: str | None, lock_2: str | None = None) -> list[dict[str, Any]]:
    return [backup("db-1", "2026-11-23T02:05:00Z", lock_1),
            backup("db-2", "2026-11-24T02:05:00Z", lock_2),
            backup("db-3", "2026-11-25T02:05:00Z")]


def reasons(status: dict[str, Any] | None, key: str) -> dict[str, str]:
    assert status is not None
    return {e["name"]: e["reason"] for e in status[key]}


def test_a_locked_backup_is_kept_until_its_date() -> None:
    policy = models.RetentionSpec(keep_last=1)
    result = retention_pass("db", history("2026-12-01T00:00:00Z"), [], policy, NOW,
                            ZoneInfo("UTC"), None)
    assert result.prune == ["db-2"]
    assert reasons(result.status, "kept")["db-1"] == "locked until 2026-12-01T00:00:00Z"


def test_a_lock_past_its_date_keeps_nothing() -> None:
    policy = models.RetentionSpec(keep_last=1)
    result = retention_pass("db", history("2026-11-26T12:00:00Z", "2026-11-25T00:00:00Z"), [],
                            policy, NOW, ZoneInfo("UTC"), None)
    assert result.prune == ["db-1", "db-2"]  # a lock ending exactly now is over


def test_a_lock_is_added_to_the_rules_that_keep_a_backup() -> None:
    policy = models.RetentionSpec(keep_last=2)
    result = retention_pass("db", history(None, "2026-12-01T00:00:00Z"), [], policy, NOW,
                            ZoneInfo("UTC"), None)
    assert reasons(result.status, "kept")["db-2"] == \
        "keepLast 2, locked until 2026-12-01T00:00:00Z"


def test_the_preview_prunes_a_lock_that_ends_before_the_next_run() -> None:
    policy = models.RetentionSpec(keep_last=1)
    next_run = datetime(2026, 11, 27, 2, tzinfo=UTC)
    ends_tonight = "2026-11-27T00:00:00Z"
    result = retention_pass("db", history(ends_tonight, ends_tonight), [], policy, NOW,
                            ZoneInfo("UTC"), next_run)
    assert result.prune == []
    assert set(reasons(result.status, "nextPruned")) == {"db-1", "db-2", "db-3"}
    later = "2026-11-28T00:00:00Z"
    result = retention_pass("db", history(later, None), [], policy, NOW, ZoneInfo("UTC"),
                            next_run)
    assert result.prune == ["db-2"]  # not locked: pruned now
    assert set(reasons(result.status, "nextPruned")) == {"db-3"}  # db-1 is still locked


def test_a_locked_backup_a_restore_reads_names_both() -> None:
    policy = models.RetentionSpec(keep_last=1)
    restores = [{"metadata": {"name": "r"}, "spec": {"backupName": "db-1"},
                 "status": {"phase": "Running"}}]
    result = retention_pass("db", history("2026-12-01T00:00:00Z"), restores, policy, NOW,
                            ZoneInfo("UTC"), None)
    assert reasons(result.status, "kept")["db-1"] == \
        "read by a running Restore, locked until 2026-12-01T00:00:00Z"


# --- deleting a locked Backup -----------------------------------------------------------


WHERE = "s3://vault/p/ns/b1/"


def decide(locked_until: datetime | None, *, terminating: bool = False,
           current: str | None = None) -> Deletion:
    return deletion(locked_until, NOW, where=WHERE, namespace_terminating=terminating,
                    current_message=current)


def test_an_unlocked_backup_is_deleted_as_before() -> None:
    assert decide(None) == Deletion("delete")


def test_after_the_date_every_version_is_deleted() -> None:
    assert decide(NOW) == Deletion("delete", all_versions=True)
    assert decide(NOW - timedelta(days=1)) == Deletion("delete", all_versions=True)


def test_before_the_date_the_deletion_waits_and_says_why() -> None:
    step = decide(NOW + timedelta(minutes=10))
    assert step.action == "wait" and step.event
    assert step.message == ("objects locked until 2026-11-26T12:10:00Z (Object Lock); the "
                            "Backup and its objects are deleted after that")
    assert step.delay == 600 + CLOCK_SKEW_SECONDS


def test_a_long_wait_looks_again_within_the_hour_without_a_new_event() -> None:
    first = decide(NOW + timedelta(days=30))
    assert first.delay == MAX_WAIT_SECONDS
    again = decide(NOW + timedelta(days=30), current=first.message)
    assert again.action == "wait" and not again.event


def test_a_terminating_namespace_lets_a_locked_backup_go_and_says_what_stays() -> None:
    step = decide(NOW + timedelta(days=30), terminating=True)
    assert step.action == "release" and step.event
    assert WHERE in step.message and "2026-12-26T12:00:00Z" in step.message
    # After the date the namespace waits for the (short) delete as for any Backup.
    assert decide(NOW, terminating=True).action == "delete"
