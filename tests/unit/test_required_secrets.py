"""Which Secrets a Backup's or Restore's Job needs (jobs.pod.required_secrets): one function,
read off the env the Job gets, so the up-front SecretMissing check and the Job cannot
disagree (restores once skipped the S3 session token key)."""

from __future__ import annotations

from typing import Any

import pytest

from timesheet_backup.api import models
from timesheet_backup.api.fields import parse
from timesheet_backup.jobs import agent_args
from timesheet_backup.jobs.pod import deletion_secrets, required_secrets

pytestmark = pytest.mark.unit

PASSWORD = {"name": "timesheet-db", "key": "password"}
CREDS = {"name": "backup-s3"}
CREDS_WITH_TOKEN = {"name": "backup-s3", "accessKeyIdKey": "id", "secretAccessKeyKey": "secret",
                    "sessionTokenKey": "token"}
DECRYPTION = {"secretRef": {"name": "backup-age", "key": "identity"}}
DB = {"host": "db", "name": "timesheet_db", "user": "timesheet", "passwordSecretRef": PASSWORD}

S3_KEYS = [("backup-s3", "AWS_ACCESS_KEY_ID"), ("backup-s3", "AWS_SECRET_ACCESS_KEY")]
S3_TOKEN_KEYS = [("backup-s3", "id"), ("backup-s3", "secret"), ("backup-s3", "token")]


@pytest.mark.parametrize(("spec", "expected"), [
    ({"components": ["database"], "database": DB, "storage": {"bucket": "b"}},
     [("timesheet-db", "password")]),
    ({"components": ["database"], "database": DB,
      "storage": {"bucket": "b", "credentialsSecretRef": CREDS}},
     [("timesheet-db", "password"), *S3_KEYS]),
    ({"components": ["uploads"], "database": DB, "uploads": {"claimName": "u"},
      "storage": {"bucket": "b", "credentialsSecretRef": CREDS_WITH_TOKEN}},
     S3_TOKEN_KEYS),  # no database component: its password is not read
])
def test_backup(spec: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    backup = parse(models.BackupSpec, spec)
    assert required_secrets(agent_args.backup_env(backup)) == expected


def resolved(storage: dict[str, Any], encrypted: bool = False,
             database: dict[str, Any] | None = DB) -> dict[str, Any]:
    return {"storage": storage, "manifestKey": "k",
            "components": ["database"] if database else ["uploads"],
            "database": database, "uploads": None if database else {"claimName": "u"},
            "encrypted": encrypted}


@pytest.mark.parametrize(("spec", "status", "expected"), [
    ({}, resolved({"bucket": "b"}), [("timesheet-db", "password")]),
    ({}, resolved({"bucket": "b", "credentialsSecretRef": CREDS_WITH_TOKEN}),
     [("timesheet-db", "password"), *S3_TOKEN_KEYS]),
    ({}, resolved({"bucket": "b", "credentialsSecretRef": CREDS}, database=None), S3_KEYS),
    ({"decryption": DECRYPTION}, resolved({"bucket": "b"}, encrypted=True),
     [("timesheet-db", "password"), ("backup-age", "identity")]),
    # a key the agent will not read (nothing encrypted) is neither injected nor required
    ({"decryption": DECRYPTION}, resolved({"bucket": "b"}), [("timesheet-db", "password")]),
])
def test_restore(spec: dict[str, Any], status: dict[str, Any],
                 expected: list[tuple[str, str]]) -> None:
    restore = parse(models.RestoreSpec, {"backupName": "nightly", **spec})
    assert required_secrets(agent_args.restore_env(restore, status)) == expected


def test_optional_and_repeated_references() -> None:
    env = [
        {"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        {"name": "C", "valueFrom": {"secretKeyRef": {"name": "s", "key": "o",
                                                     "optional": True}}},
        {"name": "D", "value": "plain"},
        {"name": "E", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    assert required_secrets(env) == [("s", "k")]


def test_the_delete_credentials_never_reach_a_job() -> None:
    """storage.deleteCredentialsSecretRef is the operator's: not in a backup or restore
    Job's env or volumes, so the Jobs' own key can be one that cannot delete."""
    storage = {"bucket": "b", "credentialsSecretRef": CREDS,
               "deleteCredentialsSecretRef": {"name": "backup-s3-delete"}}
    backup = parse(models.BackupSpec, {"components": ["database"], "database": DB,
                                       "storage": storage})
    assert agent_args.backup_secrets(backup) == [("timesheet-db", "password"), *S3_KEYS]
    assert "backup-s3-delete" not in str(agent_args.backup_env(backup))
    assert "backup-s3-delete" not in str(agent_args.backup_volumes(backup))
    restore = parse(models.RestoreSpec, {"backupName": "nightly"})
    assert agent_args.restore_secrets(restore, resolved(storage)) == [
        ("timesheet-db", "password"), *S3_KEYS]
    assert deletion_secrets(backup.storage) == [
        ("backup-s3-delete", "AWS_ACCESS_KEY_ID"), ("backup-s3-delete", "AWS_SECRET_ACCESS_KEY")]
    assert deletion_secrets(parse(models.StorageSpec, {"bucket": "b"})) == []
    assert deletion_secrets(None) == []
