"""The contract between the Job builder and the agent: for every spec field that reaches the
agent, the Job built from the custom resource (jobs/manifests.py, as the handlers create it)
is parsed by the agent's own parser (agent/cli.py) into the request the field means. The
environment is read as the kubelet would fill it: a Secret reference becomes the Secret's
value, and the agent finds each variable under the name it reads."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from timesheet_backup import settings
from timesheet_backup.agent import cli, redact
from timesheet_backup.agent.pgtools import Connection, Selection
from timesheet_backup.api import models
from timesheet_backup.api.defaults import Defaults
from timesheet_backup.api.fields import dump, parse
from timesheet_backup.api.resolve import resolve_backup
from timesheet_backup.cli import build_parser
from timesheet_backup.decisions import restores as decide
from timesheet_backup.jobs import manifests

pytestmark = pytest.mark.unit

CONFIG = settings.OperatorConfig()
DB = {"host": "db.timesheet", "name": "timesheet_db", "user": "timesheet",
      "passwordSecretRef": {"name": "timesheet-db", "key": "password"}}
STORAGE = {"bucket": "backups", "credentialsSecretRef": {"name": "backup-s3"}}
UPLOADS = {"claimName": "timesheet-uploads"}
AGE = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"


def secret_value(ref: Mapping[str, str]) -> str:
    return f"<{ref['name']}/{ref['key']}>"


def container(manifest: Mapping[str, Any]) -> dict[str, Any]:
    return dict(manifest["spec"]["template"]["spec"]["containers"][0])


def kubelet_env(manifest: Mapping[str, Any]) -> dict[str, str]:
    env = {}
    for entry in container(manifest)["env"]:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            env[entry["name"]] = secret_value(entry["valueFrom"]["secretKeyRef"])
    return env


def agent_parses(manifest: Mapping[str, Any]) -> argparse.Namespace:
    return build_parser().parse_args(container(manifest)["args"])


def pick(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


# --- Backup -------------------------------------------------------------------------------


def backup_body(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "backup.northstar.io/v1alpha1", "kind": "Backup",
            "metadata": {"name": "nightly", "namespace": "timesheet", "uid": "uid-1"},
            "spec": dict(spec)}


def backup_request(spec: Mapping[str, Any]) -> tuple[Any, Any, dict[str, str]]:
    """(BackupRequest, S3Settings, env) the agent builds from the Job of a Backup `spec`
    (merged over no operator defaults: the Backup says everything)."""
    body = backup_body({"components": ["database", "uploads"], "database": DB,
                        "uploads": UPLOADS, "storage": STORAGE, **spec})
    resolved = resolve_backup(body["spec"], Defaults())
    manifest = manifests.backup_job(body, resolved, CONFIG)
    args = agent_parses(manifest)
    assert args.run is cli.run_backup_command
    env = kubelet_env(manifest)
    return cli.backup_request(args, env), cli.s3_settings_from_args(args), env


@pytest.mark.parametrize(("spec", "expected"), [
    # what an unset field means on both sides
    ({}, {"components": ("database", "uploads"), "dump.format": "custom", "dump.jobs": 1,
          "dump.tables": (), "dump.exclude_tables": (), "dump.no_owner": False,
          "roles": False, "role_passwords": False,
          "compression": "zstd", "compression_level": None, "recipients": (),
          "uploads_exclude": (), "s3.storage_class": None, "s3.sse": None,
          "s3.sse_kms_key_id": None, "s3.prefix": "", "s3.force_path_style": False,
          "s3.endpoint": None, "s3.region": None}),
    ({"components": ["database"]}, {"components": ("database",), "uploads_dir": None}),
    ({"components": ["uploads"]}, {"components": ("uploads",), "database": None}),
    ({"database": {**DB, "format": "directory", "jobs": 4}},
     {"dump.format": "directory", "dump.jobs": 4}),
    ({"database": {**DB, "format": "plain"}}, {"dump.format": "plain"}),
    ({"database": {**DB, "tables": ["public.timesheets", "-x", "a=b"]}},
     {"dump.tables": ("public.timesheets", "-x", "a=b")}),
    ({"database": {**DB, "excludeTables": ["public.audit_*"]}},
     {"dump.exclude_tables": ("public.audit_*",)}),
    ({"database": {**DB, "noOwner": True}}, {"dump.no_owner": True}),
    ({"database": {**DB, "globals": True}}, {"roles": True, "role_passwords": False}),
    ({"database": {**DB, "globals": True, "globalsPasswords": True}},
     {"roles": True, "role_passwords": True}),
    ({"database": {**DB, "port": 6432, "sslMode": "verify-full"}},
     {"database": Connection(host="db.timesheet", port=6432, user="timesheet",
                             dbname="timesheet_db", sslmode="verify-full")}),
    ({"compression": {"algorithm": "gzip", "level": 9}},
     {"compression": "gzip", "compression_level": 9}),
    ({"compression": {"algorithm": "none"}}, {"compression": "none"}),
    ({"encryption": {"ageRecipients": [AGE]}}, {"recipients": (AGE,)}),
    ({"uploads": {**UPLOADS, "exclude": ["*.tmp", "-cache", "tmp/*"]}},
     {"uploads_exclude": ("*.tmp", "-cache", "tmp/*")}),
    ({"storage": {**STORAGE, "storageClass": "STANDARD_IA"}},
     {"s3.storage_class": "STANDARD_IA"}),
    ({"storage": {**STORAGE, "serverSideEncryption": {"type": "AES256"}}},
     {"s3.sse": "AES256", "s3.sse_kms_key_id": None}),
    ({"storage": {**STORAGE, "serverSideEncryption": {"type": "aws:kms",
                                                       "kmsKeyId": "arn:aws:kms:k"}}},
     {"s3.sse": "aws:kms", "s3.sse_kms_key_id": "arn:aws:kms:k"}),
    ({"storage": {**STORAGE, "prefix": "timesheet/prod", "region": "eu-central-1",
                  "endpoint": "http://minio:9000", "forcePathStyle": True}},
     {"s3.bucket": "backups", "s3.prefix": "timesheet/prod", "s3.region": "eu-central-1",
      "s3.endpoint": "http://minio:9000", "s3.force_path_style": True}),
])
def test_backup_fields_reach_the_agent(spec: dict[str, Any], expected: dict[str, Any]) -> None:
    request, s3, _ = backup_request(spec)
    request.validate()
    for path, value in expected.items():
        got = pick(s3, path[3:]) if path.startswith("s3.") else pick(request, path)
        assert got == value, path


def test_backup_identity_and_places() -> None:
    request, _, env = backup_request({"uploads": {**UPLOADS, "subPath": "files"}})
    assert (request.backup_id, request.namespace, request.name) == (
        "uid-1", "timesheet", "nightly")
    assert request.database == Connection(host="db.timesheet", user="timesheet",
                                          dbname="timesheet_db")
    body = backup_body({"components": ["uploads"], "uploads": {**UPLOADS, "subPath": "files"},
                        "storage": STORAGE})
    manifest = manifests.backup_job(body, resolve_backup(body["spec"], Defaults()),
                                    CONFIG)
    mounts = {m["mountPath"]: m for m in container(manifest)["volumeMounts"]}
    assert request.uploads_dir == Path(manifests.UPLOADS_MOUNT)
    assert mounts[manifests.UPLOADS_MOUNT] == {
        "name": "uploads", "mountPath": manifests.UPLOADS_MOUNT, "readOnly": True,
        "subPath": "files"}
    scratch = env["TMPDIR"]
    assert request.work_dir == Path(scratch) and scratch in mounts
    assert agent_parses(manifest).termination_message_path == "/dev/termination-log"


def test_backup_secrets_arrive_where_the_agent_reads_them() -> None:
    _, _, env = backup_request({"storage": {**STORAGE, "credentialsSecretRef": {
        "name": "backup-s3", "sessionTokenKey": "token"}}})
    assert env["PGPASSWORD"] == "<timesheet-db/password>"  # libpq reads it
    assert env["AWS_ACCESS_KEY_ID"] == "<backup-s3/AWS_ACCESS_KEY_ID>"  # boto3 reads these
    assert env["AWS_SECRET_ACCESS_KEY"] == "<backup-s3/AWS_SECRET_ACCESS_KEY>"
    assert env["AWS_SESSION_TOKEN"] == "<backup-s3/token>"
    secrets = set(env) - {"TMPDIR", "AWS_ACCESS_KEY_ID"}
    assert secrets <= set(redact.SECRET_VARIABLES)  # and masks them in its output


# --- Restore ------------------------------------------------------------------------------


def restore_request(spec: Mapping[str, Any], components: tuple[str, ...] = ("database",),
                    encrypted: bool = False, storage: Mapping[str, Any] = STORAGE
                    ) -> tuple[Any, Any, dict[str, str]]:
    """(RestoreRequest, S3Settings, env) the agent builds from the Job of a Restore `spec` of
    a Backup made with the settings above (resolved as the operator resolves it)."""
    backup = resolve_backup({"components": ["database", "uploads"], "database": DB,
                             "uploads": UPLOADS, "storage": storage}, Defaults())
    restore = parse(models.RestoreSpec, {"backupName": "nightly", **spec})
    resolved = decide.resolve(restore, decide.Source(
        storage=dump(backup.storage), manifest_key="timesheet/nightly/manifest.json",
        backup_id="uid-1", components=list(components),
        encrypted=list(components) if encrypted else [],
        database=dump(backup.database), uploads=dump(backup.uploads), database_roles=True))
    body = {"apiVersion": "backup.northstar.io/v1alpha1", "kind": "Restore",
            "metadata": {"name": "back", "namespace": "timesheet", "uid": "uid-2"},
            "spec": dict(spec)}
    manifest = manifests.restore_job(body, restore, resolved, CONFIG)
    args = agent_parses(manifest)
    assert args.run is cli.run_restore_command
    env = kubelet_env(manifest)
    return (cli.restore_request(args, env, args.prefix), cli.s3_settings_from_args(args), env)


@pytest.mark.parametrize(("spec", "components", "expected"), [
    ({}, ("database",), {
        "components": ("database",), "clean": True, "no_owner": False, "jobs": 1,
        "create_database": False, "create_owner": None, "roles": False, "drop_after": False,
        "checks": (),
        "uploads_dir": None, "identities": None, "verify": "before",
        "selection": Selection(), "uploads_paths": (),
        "manifest_key": "timesheet/nightly/manifest.json",
        "database": Connection(host="db.timesheet", user="timesheet", dbname="timesheet_db")}),
    ({"database": {"clean": False}}, ("database",), {"clean": False}),
    ({"database": {"noOwner": True}}, ("database",), {"no_owner": True}),
    ({"database": {"jobs": 4}}, ("database",), {"jobs": 4}),
    ({"database": {"name": "scratch", "createDatabase": True, "owner": "timesheet",
                   "dropAfter": True}}, ("database",),
     {"database.dbname": "scratch", "create_database": True, "create_owner": "timesheet",
      "drop_after": True}),
    ({"database": {"host": "fresh", "user": "postgres", "createDatabase": True,
                   "owner": "timesheet", "globals": True}}, ("database",),
     {"roles": True, "create_database": True, "create_owner": "timesheet",
      "database.host": "fresh", "database.user": "postgres"}),
    ({"database": {"host": "other", "port": 6432, "user": "admin", "sslMode": "require"}},
     ("database",), {"database": Connection(host="other", port=6432, user="admin",
                                            dbname="timesheet_db", sslmode="require")}),
    # selective restore: pg_restore's -t/-n/-a/-s; with dataOnly no --clean (rows go into
    # the existing tables, and pg_restore refuses the two together)
    ({"database": {"tables": ["timesheets", "-x"], "schemas": ["public"]}}, ("database",),
     {"selection": Selection(tables=("timesheets", "-x"), schemas=("public",)),
      "clean": True}),
    ({"database": {"dataOnly": True}}, ("database",),
     {"selection": Selection(data_only=True), "clean": False}),
    ({"database": {"schemaOnly": True, "clean": False}}, ("database",),
     {"selection": Selection(schema_only=True), "clean": False}),
    ({"database": {"name": "side", "createDatabase": True, "tables": ["timesheets"]}},
     ("database",), {"database.dbname": "side", "create_database": True,
                     "selection.tables": ("timesheets",)}),
    ({"verify": {"sqlChecks": ["SELECT count(*) > 0 FROM timesheets", "-1"]}}, ("database",),
     {"checks": ("SELECT count(*) > 0 FROM timesheets", "-1"), "compare_row_counts": False}),
    ({"verify": {"rowCounts": True}}, ("database",), {"compare_row_counts": True}),
    ({}, ("database", "uploads"), {"components": ("database", "uploads"),
                                   "uploads_mode": "replace",
                                   "uploads_dir": Path(manifests.UPLOADS_MOUNT)}),
    ({"uploads": {"mode": "merge"}}, ("uploads",),
     {"components": ("uploads",), "uploads_mode": "merge", "database": None, "checks": ()}),
    ({"components": ["uploads"], "uploads": {"mode": "replace"}}, ("database", "uploads"),
     {"components": ("uploads",), "uploads_mode": "replace", "database": None}),
    ({"uploads": {"mode": "merge", "paths": ["2024/*", "-x", "*.pdf"]}}, ("uploads",),
     {"uploads_mode": "merge", "uploads_paths": ("2024/*", "-x", "*.pdf")}),
])
def test_restore_fields_reach_the_agent(spec: dict[str, Any], components: tuple[str, ...],
                                        expected: dict[str, Any]) -> None:
    request, s3, _ = restore_request(spec, components)
    request.validate()
    for path, value in expected.items():
        assert pick(request, path) == value, path
    assert (s3.bucket, s3.prefix, s3.storage_class, s3.sse) == ("backups", "", None, None)


def test_restore_reads_from_where_the_backup_wrote() -> None:
    storage = {**STORAGE, "prefix": "timesheet/prod", "region": "eu-central-1",
               "endpoint": "http://minio:9000", "forcePathStyle": True,
               "storageClass": "GLACIER_IR", "serverSideEncryption": {"type": "aws:kms"}}
    _, s3, env = restore_request({}, storage=storage)
    assert (s3.bucket, s3.prefix, s3.region, s3.endpoint, s3.force_path_style) == (
        "backups", "timesheet/prod", "eu-central-1", "http://minio:9000", True)
    # how objects are stored is the writer's business: a restore only reads them
    assert (s3.storage_class, s3.sse, s3.sse_kms_key_id) == (None, None, None)
    assert env["AWS_SECRET_ACCESS_KEY"] == "<backup-s3/AWS_SECRET_ACCESS_KEY>"


def test_restore_uploads_target_is_mounted_where_the_agent_writes() -> None:
    body = {"apiVersion": "backup.northstar.io/v1alpha1", "kind": "Restore",
            "metadata": {"name": "back", "namespace": "timesheet", "uid": "uid-2"}, "spec": {}}
    resolved = {"storage": STORAGE, "manifestKey": "k", "components": ["uploads"],
                "uploads": {"claimName": "other-claim", "subPath": "files", "mode": "merge"}}
    restore = models.RestoreSpec(backup_name="nightly")
    manifest = manifests.restore_job(body, restore, resolved, CONFIG)
    request = cli.restore_request(agent_parses(manifest), kubelet_env(manifest), "")
    mounts = {m["mountPath"]: m for m in container(manifest)["volumeMounts"]}
    assert request.uploads_dir == Path(manifests.UPLOADS_MOUNT)
    assert mounts[manifests.UPLOADS_MOUNT]["subPath"] == "files"
    assert not mounts[manifests.UPLOADS_MOUNT]["readOnly"]
    volumes = {v["name"]: v for v in manifest["spec"]["template"]["spec"]["volumes"]}
    assert volumes["uploads"]["persistentVolumeClaim"]["claimName"] == "other-claim"


@pytest.mark.parametrize(("decryption", "encrypted", "identity"), [
    (True, True, "<backup-age/identity>"),
    (True, False, None),  # not needed, not injected
    (False, False, None),
])
def test_restore_decryption_key_reaches_the_agent(decryption: bool, encrypted: bool,
                                                  identity: str | None) -> None:
    spec = {"decryption": {"secretRef": {"name": "backup-age", "key": "identity"}}} \
        if decryption else {}
    request, _, env = restore_request(spec, encrypted=encrypted)
    assert request.identities == identity
    assert env["PGPASSWORD"] == "<timesheet-db/password>"
    assert set(env) - {"TMPDIR", "AWS_ACCESS_KEY_ID"} <= set(redact.SECRET_VARIABLES)


def test_http_check_reaches_the_agent() -> None:
    body = {"apiVersion": "backup.northstar.io/v1alpha1", "kind": "Restore",
            "metadata": {"name": "back", "namespace": "timesheet", "uid": "uid-2"}, "spec": {}}
    check = models.HttpCheck(url="http://web/health", expected_status=204, timeout_seconds=30)
    args = agent_parses(manifests.verify_job(body, models.RestoreSpec(backup_name="b"), check,
                                             CONFIG))
    assert args.run is cli.run_http_check
    assert (args.url, args.expected_status, args.timeout) == ("http://web/health", 204, 30)


def scratch_restore_job(spec: Mapping[str, Any]) -> dict[str, Any]:
    backup = resolve_backup({"components": ["database", "uploads"], "database": DB,
                             "uploads": UPLOADS, "storage": STORAGE}, Defaults())
    restore = parse(models.RestoreSpec, {"backupName": "nightly", **spec})
    resolved = decide.resolve(restore, decide.Source(
        storage=dump(backup.storage), manifest_key="timesheet/nightly/manifest.json",
        backup_id="uid-1", components=["database", "uploads"],
        encrypted=["database", "uploads"], database=dump(backup.database),
        uploads=dump(backup.uploads)))
    body = {"apiVersion": "backup.northstar.io/v1alpha1", "kind": "Restore",
            "metadata": {"name": "back", "namespace": "timesheet", "uid": "uid-2"},
            "spec": dict(spec)}
    return manifests.restore_job(body, restore, resolved, CONFIG)


def test_scratch_uploads_go_into_an_emptydir_with_the_decryption_key() -> None:
    """A restore test of an encrypted database+uploads backup: the uploads are extracted into
    a throwaway emptyDir (not the app's claim), and the agent gets the key for them too."""
    manifest = scratch_restore_job({
        "uploads": {"scratch": {"sizeLimit": "2Gi"}},
        "decryption": {"secretRef": {"name": "age", "key": "identity"}}})
    pod_spec = manifest["spec"]["template"]["spec"]
    uploads = next(v for v in pod_spec["volumes"] if v["name"] == "uploads")
    assert uploads == {"name": "uploads", "emptyDir": {"sizeLimit": "2Gi"}}
    assert not any("persistentVolumeClaim" in v for v in pod_spec["volumes"])
    args = agent_parses(manifest)
    env = kubelet_env(manifest)
    request = cli.restore_request(args, env, args.prefix)
    request.validate()
    assert request.components == ("database", "uploads")
    assert request.uploads_dir == Path(manifests.UPLOADS_MOUNT)
    assert request.identities is not None  # the age identity, for both artifacts


def test_scratch_uploads_without_a_size_limit() -> None:
    manifest = scratch_restore_job({"uploads": {"scratch": {}},
                                    "decryption": {"secretRef": {"name": "age", "key": "k"}}})
    volumes = manifest["spec"]["template"]["spec"]["volumes"]
    assert {"name": "uploads", "emptyDir": {}} in volumes
