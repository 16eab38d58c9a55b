"""Object Lock against a real S3 server (versitygw 1.7, POSIX backend), in both of its
modes: unversioned buckets (the session's server; a locked object refuses a plain delete)
and versioned ones (`--versioning-dir`, as on AWS: a plain delete only adds a delete
marker, the locked version stays and refuses deletion).

- the agent writes every artifact (multipart) and the manifest with the retention asked
  for, and the store reports it (HeadObject, GetObjectRetention);
- the lock is real: the store refuses to delete or overwrite a locked version;
- a bucket without Object Lock fails the backup with the clear message, leaving nothing;
- the operator's delete of a Backup whose lock has ended removes every version.

Backups here are of the uploads component only: Object Lock is the object store's business,
the database dump adds nothing to it (its artifact goes through the same uploader)."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support.agent import agent_env, read_manifest, run_agent, s3_args
from tests.support.s3server import S3Server
from timesheet_backup.actions.bucket import delete_backup_objects
from timesheet_backup.errors import StorageError
from timesheet_backup.storage.s3 import S3Settings, S3Store

PREFIX = "backups"
NAME = "nightly"
MANIFEST = f"{PREFIX}/ns/{NAME}/manifest.json"


@pytest.fixture(scope="module")
def s3_versioned() -> Iterator[S3Server]:
    server = S3Server(versioning=True)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()  # locked objects cannot be deleted: the whole root goes


@pytest.fixture(params=["unversioned", "versioned"])
def server(request: pytest.FixtureRequest, s3: S3Server,
           s3_versioned: S3Server) -> S3Server:
    return s3 if request.param == "unversioned" else s3_versioned


def locked_bucket(server: S3Server) -> str:
    name = f"tsb-lock-{uuid.uuid4().hex[:12]}"
    server.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


def backup(server: S3Server, bucket: str, uploads: Path, tmp_path: Path,
           *lock: str) -> Any:
    args = ["agent", "backup", "--backup-id", "id-1", "--namespace", "ns", "--name", NAME,
            "--component", "uploads", "--uploads-dir", str(uploads), "--compression", "none",
            "--part-size", "5MiB", *lock, *s3_args(server, bucket, PREFIX)]
    return run_agent(args, agent_env(tmp_path, s3=server), tmp_path)


def big_tree(tmp_path: Path) -> Path:
    """More than one 5 MiB part, so the artifact is a real multipart upload."""
    root = tmp_path / "uploads"
    root.mkdir()
    (root / "a.bin").write_bytes(bytes(range(256)) * (24 * 1024 + 7))
    (root / "b.txt").write_text("timesheet\n")
    return root


def test_artifacts_and_manifest_carry_the_retention(server: S3Server, tmp_path: Path) -> None:
    bucket = locked_bucket(server)
    before = datetime.now(UTC).replace(microsecond=0)
    run = backup(server, bucket, big_tree(tmp_path), tmp_path,
                 "--object-lock-mode", "COMPLIANCE", "--object-lock-days", "2")
    assert run.returncode == 0, run.describe()
    manifest = read_manifest(server, bucket, MANIFEST)
    lock = manifest["objectLock"]
    assert lock["mode"] == "COMPLIANCE"
    until = datetime.fromisoformat(lock["retainUntil"].replace("Z", "+00:00"))
    assert before + timedelta(days=2) <= until <= datetime.now(UTC) + timedelta(days=2)
    assert run.result["lockedUntil"] == lock["retainUntil"]  # what the operator copies
    (artifact,) = manifest["artifacts"]
    assert artifact["sizeBytes"] > 5 * 1024 * 1024  # several parts: CreateMultipartUpload
    client = server.client()
    for key in (artifact["key"], MANIFEST):
        head = client.head_object(Bucket=bucket, Key=key)
        assert head["ObjectLockMode"] == "COMPLIANCE"
        assert head["ObjectLockRetainUntilDate"] == until
        retention = client.get_object_retention(Bucket=bucket, Key=key)["Retention"]
        assert retention == {"Mode": "COMPLIANCE", "RetainUntilDate": until}


def delete_refused(call: Any) -> str:
    with pytest.raises(ClientError) as caught:
        call()
    return str(caught.value.response["Error"]["Code"])


def test_the_lock_is_real(server: S3Server, tmp_path: Path) -> None:
    """The store refuses to delete or overwrite the locked objects -- with the same root
    credentials the agent used, and with the governance bypass asked for."""
    bucket = locked_bucket(server)
    uploads = tmp_path / "small"
    uploads.mkdir()
    (uploads / "x.txt").write_text("x\n")
    run = backup(server, bucket, uploads, tmp_path,
                 "--object-lock-mode", "GOVERNANCE", "--object-lock-days", "1")
    assert run.returncode == 0, run.describe()
    client = server.client(retries=0)
    versions = client.list_object_versions(Bucket=bucket, Prefix=f"{PREFIX}/")["Versions"]
    assert {v["Key"] for v in versions} == {MANIFEST, f"{PREFIX}/ns/{NAME}/uploads.tar"}
    for v in versions:
        by_version = {"VersionId": v["VersionId"]} if server.versioning else {}
        assert delete_refused(lambda v=v, by_version=by_version: client.delete_object(
            Bucket=bucket, Key=v["Key"], **by_version)) == "AccessDenied"
        # versitygw 1.7 refuses the bypass too: the root user has no bucket policy granting
        # s3:BypassGovernanceRetention (AWS would let a principal allowed it delete).
        assert delete_refused(lambda v=v, by_version=by_version: client.delete_object(
            Bucket=bucket, Key=v["Key"], BypassGovernanceRetention=True,
            **by_version)) == "AccessDenied"
    if server.versioning:
        # As on AWS: a plain delete "succeeds" with a delete marker; the data stays.
        marker = client.delete_object(Bucket=bucket, Key=MANIFEST)
        assert marker["DeleteMarker"] is True
        after = client.list_object_versions(Bucket=bucket, Prefix=f"{PREFIX}/")
        assert len(after["Versions"]) == 2 and len(after["DeleteMarkers"]) == 1
    else:
        assert delete_refused(lambda: client.put_object(
            Bucket=bucket, Key=MANIFEST, Body=b"{}")) == "AccessDenied"
        assert read_manifest(server, bucket, MANIFEST)["backupId"] == "id-1"
    store = S3Store(S3Settings(bucket=bucket, endpoint=server.endpoint, force_path_style=True),
                    client=client)
    with pytest.raises(StorageError):  # what the operator never tries before the date
        delete_backup_objects(store, MANIFEST, all_versions=True)


def test_a_bucket_without_object_lock_fails_clearly(server: S3Server, tmp_path: Path) -> None:
    bucket = server.make_bucket()
    uploads = tmp_path / "small"
    uploads.mkdir()
    (uploads / "x.txt").write_text("x\n")
    run = backup(server, bucket, uploads, tmp_path,
                 "--object-lock-mode", "GOVERNANCE", "--object-lock-days", "1")
    assert run.returncode != 0
    expected = (f"bucket {bucket} has no Object Lock configuration; create it with object "
                "lock enabled or remove storage.objectLock")
    assert expected in run.error_line, run.describe()
    assert run.termination is not None and expected in run.termination["error"]
    assert server.list_keys(bucket) == []
    assert server.list_multipart_uploads(bucket) == []


def test_without_the_preflight_the_upload_fails_just_as_clearly(server: S3Server) -> None:
    """A write-only key that may not read the lock configuration skips the pre-flight: the
    refused CreateMultipartUpload and PutObject carry the same message."""
    from timesheet_backup.storage.s3 import ObjectLock

    bucket = server.make_bucket()
    store = S3Store(S3Settings(bucket=bucket, endpoint=server.endpoint, force_path_style=True),
                    client=server.client(retries=0))
    lock = ObjectLock("GOVERNANCE", datetime.now(UTC) + timedelta(days=1))
    expected = f"bucket {bucket} has no Object Lock configuration"
    with pytest.raises(StorageError, match=expected), store.uploader("k", lock=lock):
        pass
    with pytest.raises(StorageError, match=expected):
        store.write_bytes("k", b"{}", "application/json", lock)


def test_after_the_date_the_operator_deletes_every_version(server: S3Server) -> None:
    bucket = locked_bucket(server)
    client = server.client(retries=0)
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    keys = [MANIFEST, f"{PREFIX}/ns/{NAME}/uploads.tar"]
    for key in keys:
        client.put_object(Bucket=bucket, Key=key, Body=b"x", ObjectLockMode="COMPLIANCE",
                          ObjectLockRetainUntilDate=until)
    if server.versioning:
        client.delete_object(Bucket=bucket, Key=keys[1])  # a marker, as a plain delete left
    store = S3Store(S3Settings(bucket=bucket, endpoint=server.endpoint, force_path_style=True),
                    client=client)
    with pytest.raises(StorageError):
        delete_backup_objects(store, MANIFEST, all_versions=True)
    time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 1.5)
    deleted = delete_backup_objects(store, MANIFEST, all_versions=True)
    assert deleted == (3 if server.versioning else 2)
    left = client.list_object_versions(Bucket=bucket, Prefix=f"{PREFIX}/")
    assert not left.get("Versions") and not left.get("DeleteMarkers")
    with contextlib.suppress(ClientError):
        client.delete_bucket(Bucket=bucket)
