"""Writers that cannot delete (docs/security.md), against a real S3 server: versitygw 1.7
with IAM accounts (`--iam-dir`) and the bucket policy of `write_only_policy`.

- a backup made with the write-only key succeeds (uploads, multipart, read-back, manifest);
- that key cannot delete: DeleteObject and DeleteObjects are refused (AccessDenied);
- a failed backup whose partial objects the write-only key cannot delete still reports its
  real error (the refused delete is a logged warning);
- the operator's deletion (actions.bucket: open_store with deleting=True, i.e.
  storage.deleteCredentialsSecretRef, then delete_backup_objects) removes everything with
  the delete key -- and the same code with the writer's key is refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support.agent import base_env, run_agent, s3_args
from tests.support.s3server import S3Server, write_only_policy
from timesheet_backup import kube
from timesheet_backup.actions import bucket as operator_bucket
from timesheet_backup.api import models
from timesheet_backup.api.fields import parse
from timesheet_backup.errors import StorageError

PREFIX = "backups"
NAME = "nightly"
MANIFEST = f"{PREFIX}/ns/{NAME}/manifest.json"


@pytest.fixture(scope="module")
def s3_iam() -> Iterator[S3Server]:
    server = S3Server(iam=True)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


class Keys:
    def __init__(self, server: S3Server, bucket: str, policy: dict[str, Any]) -> None:
        self.server = server
        self.bucket = bucket
        self.writer = server.create_user()
        self.deleter = server.create_user()
        for statement in policy["Statement"]:
            principal = statement["Principal"]["AWS"][0]
            statement["Principal"]["AWS"] = [
                {"writer": self.writer[0], "deleter": self.deleter[0]}[principal]]
        server.client().put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))

    def env(self, tmp_path: Path, key: tuple[str, str]) -> dict[str, str]:
        return {**base_env(tmp_path), "AWS_ACCESS_KEY_ID": key[0],
                "AWS_SECRET_ACCESS_KEY": key[1], "AWS_REGION": self.server.region}

    def client(self, key: tuple[str, str]) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.server.endpoint, aws_access_key_id=key[0],
                            aws_secret_access_key=key[1], region_name=self.server.region,
                            config=Config(s3={"addressing_style": "path"},
                                          retries={"max_attempts": 1}))


def keys_for(server: S3Server, deny_manifest: bool = False) -> Keys:
    bucket = server.make_bucket()
    policy = write_only_policy(bucket, PREFIX, "writer", "deleter")
    if deny_manifest:
        # Makes a backup fail after its artifact is uploaded: the manifest is refused.
        policy["Statement"].append({
            "Sid": "NoManifest", "Effect": "Deny", "Principal": {"AWS": ["writer"]},
            "Action": ["s3:PutObject"],
            "Resource": [f"arn:aws:s3:::{bucket}/{PREFIX}/ns/{NAME}/manifest.json"]})
    return Keys(server, bucket, policy)


def uploads(tmp_path: Path) -> Path:
    root = tmp_path / "uploads"
    root.mkdir()
    (root / "a.bin").write_bytes(bytes(range(256)) * (24 * 1024 + 7))  # > one 5 MiB part
    (root / "b.txt").write_text("timesheet\n")
    return root


def backup(keys: Keys, tmp_path: Path) -> Any:
    args = ["agent", "backup", "--backup-id", "id-1", "--namespace", "ns", "--name", NAME,
            "--component", "uploads", "--uploads-dir", str(uploads(tmp_path)),
            "--compression", "none", "--part-size", "5MiB",
            *s3_args(keys.server, keys.bucket, PREFIX)]
    return run_agent(args, keys.env(tmp_path, keys.writer), tmp_path)


def refused(call: Any) -> str:
    with pytest.raises(ClientError) as caught:
        call()
    return str(caught.value.response["Error"]["Code"])


def storage(keys: Keys) -> models.StorageSpec:
    return parse(models.StorageSpec, {
        "bucket": keys.bucket, "prefix": PREFIX, "endpoint": keys.server.endpoint,
        "forcePathStyle": True, "credentialsSecretRef": {"name": "writer"},
        "deleteCredentialsSecretRef": {"name": "deleter"}})


@pytest.fixture
def secrets_of(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, str]]:
    """The namespace's Secrets as the operator reads them (kube.read_secret_key)."""
    found: dict[str, dict[str, str]] = {}

    def read(namespace: str, name: str, key: str) -> str:
        try:
            return found[name][key]
        except KeyError:
            raise LookupError(f"Secret {namespace}/{name} not found") from None

    monkeypatch.setattr(kube, "read_secret_key", read)
    return found


def as_secret(key: tuple[str, str]) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": key[0], "AWS_SECRET_ACCESS_KEY": key[1]}


def test_a_write_only_key_backs_up_and_cannot_delete(
        s3_iam: S3Server, tmp_path: Path, secrets_of: dict[str, dict[str, str]]) -> None:
    keys = keys_for(s3_iam)
    run = backup(keys, tmp_path)
    assert run.returncode == 0, run.describe()
    written = s3_iam.list_keys(keys.bucket, f"{PREFIX}/")
    assert written == [MANIFEST, f"{PREFIX}/ns/{NAME}/uploads.tar"]

    writer = keys.client(keys.writer)
    assert refused(lambda: writer.delete_object(Bucket=keys.bucket, Key=MANIFEST)) \
        == "AccessDenied"
    assert refused(lambda: writer.delete_objects(
        Bucket=keys.bucket, Delete={"Objects": [{"Key": MANIFEST}]})) == "AccessDenied"
    # The deleter cannot write or read: it is no backup key either.
    deleter = keys.client(keys.deleter)
    assert refused(lambda: deleter.put_object(Bucket=keys.bucket, Key=MANIFEST,
                                               Body=b"{}")) == "AccessDenied"
    assert s3_iam.list_keys(keys.bucket, f"{PREFIX}/") == written

    # The operator's deletion, with each key as storage.deleteCredentialsSecretRef.
    secrets_of["writer"] = as_secret(keys.writer)
    secrets_of["deleter"] = as_secret(keys.writer)  # a misconfiguration: the writer's key
    with pytest.raises(StorageError, match="access denied to s3:"):
        operator_bucket.delete_backup_objects(
            operator_bucket.open_store(storage(keys), "ns", deleting=True), MANIFEST)
    assert s3_iam.list_keys(keys.bucket, f"{PREFIX}/") == written
    secrets_of["deleter"] = as_secret(keys.deleter)
    deleted = operator_bucket.delete_backup_objects(
        operator_bucket.open_store(storage(keys), "ns", deleting=True), MANIFEST)
    assert deleted == 2
    assert s3_iam.list_keys(keys.bucket) == []


def test_reads_use_the_writers_key_not_the_delete_key(
        s3_iam: S3Server, secrets_of: dict[str, dict[str, str]]) -> None:
    """The operator reads manifests (and aborts uploads) with credentialsSecretRef: the
    delete key needs no read right."""
    keys = keys_for(s3_iam)
    s3_iam.put_bytes(keys.bucket, MANIFEST, b"{}")
    secrets_of["writer"] = as_secret(keys.writer)
    secrets_of["deleter"] = as_secret(keys.deleter)
    reader = operator_bucket.open_store(storage(keys), "ns")
    assert reader.read_bytes(MANIFEST, 100) == b"{}"
    deleter = operator_bucket.open_store(storage(keys), "ns", deleting=True)
    with pytest.raises(StorageError):
        deleter.read_bytes(MANIFEST, 100)
    # Without deleteCredentialsSecretRef the one key does everything, as before.
    single = parse(models.StorageSpec, {
        "bucket": keys.bucket, "endpoint": s3_iam.endpoint, "forcePathStyle": True,
        "credentialsSecretRef": {"name": "writer"}})
    assert operator_bucket.open_store(single, "ns", deleting=True).read_bytes(
        MANIFEST, 100) == b"{}"


def test_a_failed_run_keeps_its_real_error_and_the_operator_removes_the_leftovers(
        s3_iam: S3Server, tmp_path: Path, secrets_of: dict[str, dict[str, str]]) -> None:
    keys = keys_for(s3_iam, deny_manifest=True)
    run = backup(keys, tmp_path)
    assert run.returncode != 0
    # The real failure is reported: the refused manifest, not the refused cleanup.
    assert "manifest.json" in run.error_line and "delete" not in run.error_line, \
        run.describe()
    assert run.termination is not None and "manifest.json" in run.termination["error"]
    assert "could not delete the partial objects of this backup" in run.stderr
    leftover = s3_iam.list_keys(keys.bucket, f"{PREFIX}/")
    assert leftover == [f"{PREFIX}/ns/{NAME}/uploads.tar"]  # no manifest: never a backup
    assert s3_iam.list_multipart_uploads(keys.bucket) == []

    secrets_of["writer"] = as_secret(keys.writer)
    secrets_of["deleter"] = as_secret(keys.deleter)
    deleted = operator_bucket.delete_backup_objects(
        operator_bucket.open_store(storage(keys), "ns", deleting=True), MANIFEST)
    assert deleted == 1
    assert s3_iam.list_keys(keys.bucket) == []

