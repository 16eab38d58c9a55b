"""TLS settings from spec to pod (issue 17): the S3 CA bundle and the PostgreSQL certificates
reach the agent as files of read-only projected volumes (never env values or args), their
Secrets are required up front like any other, the private key's mode fits the pod, and the
agent's private 0600 copy of the key is what libpq gets."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import celpy
import pytest

from tests.support.secretscan import pem_secrets, scan_text
from timesheet_backup import constants as c
from timesheet_backup import settings
from timesheet_backup.agent import tlsfiles
from timesheet_backup.api import models
from timesheet_backup.api.fields import parse, schema_for
from timesheet_backup.errors import ConfigError
from timesheet_backup.jobs import agent_args, manifests
from timesheet_backup.jobs.pod import PRIVATE_KEY_MODE_FS_GROUP, PRIVATE_KEY_MODE_NO_FS_GROUP
from timesheet_backup.storage import s3

pytestmark = pytest.mark.unit

CONFIG = settings.OperatorConfig()
CA = {"name": "private-ca", "key": "ca.crt"}
CLIENT = {"name": "db-client"}
DB = {"host": "db", "name": "timesheet_db", "user": "timesheet", "sslMode": "verify-full",
      "sslRootCertSecretRef": CA, "clientCertSecretRef": CLIENT}
STORAGE = {"bucket": "b", "endpoint": "https://s3.example:9000", "caBundleSecretRef": CA}
BODY = {"apiVersion": "backup.northstar.io/v1alpha1", "kind": "Backup",
        "metadata": {"name": "nightly", "namespace": "prod", "uid": "u-1"}}
KEY_PEM = ("-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg"
           "\nAbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefghij\n-----END PRIVATE KEY-----\n")


def backup_manifest(security: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    backup = parse(models.BackupSpec, {"components": ["database"], "database": DB,
                                       "storage": STORAGE, **spec})
    return manifests.backup_job(BODY, backup, CONFIG, security_context=security)


def pod(manifest: dict[str, Any]) -> dict[str, Any]:
    return dict(manifest["spec"]["template"]["spec"])


def test_certificates_are_files_of_read_only_volumes() -> None:
    spec = pod(backup_manifest())
    container = spec["containers"][0]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["s3-ca"] == {"name": "s3-ca", "mountPath": "/etc/timesheet-backup/s3-ca",
                               "readOnly": True}
    assert mounts["postgres-tls"]["readOnly"] is True
    assert volumes["s3-ca"]["projected"] == {"defaultMode": 0o444, "sources": [
        {"secret": {"name": "private-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}
    sources = volumes["postgres-tls"]["projected"]["sources"]
    assert sources == [
        {"secret": {"name": "private-ca", "items": [{"key": "ca.crt", "path": "root.crt"}]}},
        {"secret": {"name": "db-client", "items": [
            {"key": "tls.crt", "path": "tls.crt"},
            {"key": "tls.key", "path": "tls.key", "mode": PRIVATE_KEY_MODE_NO_FS_GROUP}]}}]
    env = {e["name"]: e for e in container["env"]}
    assert env["PGSSLROOTCERT"] == {"name": "PGSSLROOTCERT",
                                    "value": "/etc/timesheet-backup/postgres-tls/root.crt"}
    assert env["PGSSLCERT"]["value"] == "/etc/timesheet-backup/postgres-tls/tls.crt"
    assert env["PGSSLKEY"]["value"] == "/etc/timesheet-backup/postgres-tls/tls.key"
    assert "--ca-bundle=/etc/timesheet-backup/s3-ca/ca.crt" in container["args"]
    assert "--db-sslmode=verify-full" in container["args"]
    # no Secret's value, only paths: nothing from the Secrets in env values or args
    assert not [e for e in container["env"] if "secretKeyRef" in str(e)
                and e["name"].startswith("PGSSL")]


def test_the_key_is_group_readable_only_with_an_fs_group() -> None:
    spec = pod(backup_manifest({"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000}))
    items = [i for v in spec["volumes"] if v["name"] == "postgres-tls"
             for s in v["projected"]["sources"] for i in s["secret"]["items"]]
    assert {i["path"]: i.get("mode") for i in items}["tls.key"] == PRIVATE_KEY_MODE_FS_GROUP
    assert PRIVATE_KEY_MODE_FS_GROUP == 0o440


def test_no_tls_settings_no_volumes() -> None:
    backup = parse(models.BackupSpec, {"components": ["database"], "storage": {"bucket": "b"},
                                       "database": {"host": "db", "name": "n", "user": "u"}})
    spec = pod(manifests.backup_job(BODY, backup, CONFIG))
    assert [v["name"] for v in spec["volumes"]] == ["scratch"]
    assert not [e for e in spec["containers"][0]["env"] if e["name"].startswith("PGSSL")]


def test_insecure_skip_tls_verify_reaches_the_agent() -> None:
    storage = {"bucket": "b", "endpoint": "https://s3:9000", "insecureSkipTLSVerify": True}
    args = pod(backup_manifest(storage=storage))["containers"][0]["args"]
    assert "--insecure-skip-tls-verify" in args
    assert not [a for a in args if a.startswith("--ca-bundle")]


def test_required_secrets_include_the_files() -> None:
    backup = parse(models.BackupSpec, {"components": ["database"], "database": DB,
                                       "storage": STORAGE})
    assert agent_args.backup_secrets(backup) == [
        ("private-ca", "ca.crt"), ("db-client", "tls.crt"), ("db-client", "tls.key")]


def test_a_restore_inherits_the_backups_tls_and_requires_its_secrets() -> None:
    restore = parse(models.RestoreSpec, {"backupName": "nightly"})
    resolved = {"storage": STORAGE, "manifestKey": "k", "components": ["database"],
                "database": {k: v for k, v in DB.items()}, "encrypted": False}
    assert agent_args.restore_secrets(restore, resolved) == [
        ("private-ca", "ca.crt"), ("db-client", "tls.crt"), ("db-client", "tls.key")]
    job = manifests.restore_job({**BODY, "kind": "Restore"}, restore, resolved, CONFIG)
    assert {v["name"] for v in pod(job)["volumes"]} == {"scratch", "s3-ca", "postgres-tls"}


def test_the_libpq_file_variables_are_reserved() -> None:
    assert {"PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY"} <= set(c.AGENT_ENV_NAMES)


def test_certificate_auth_needs_no_password() -> None:
    from timesheet_backup.api.resolve import missing_fields
    db = {"host": "db", "name": "n", "user": "u", "clientCertSecretRef": CLIENT}
    spec = parse(models.BackupSpec, {"components": ["database"], "database": db,
                                     "storage": {"bucket": "b"}})
    assert missing_fields(spec) == []


def cel(rule: str, value: Any) -> bool:
    env = celpy.Environment()
    program = env.program(env.compile(rule))
    return bool(program.evaluate({"self": celpy.json_to_cel(value)}))


def rules(cls: type[Any]) -> list[str]:
    return [r["rule"] for r in schema_for(cls)["x-kubernetes-validations"]]


@pytest.mark.parametrize(("value", "ok"), [
    ({"bucket": "b", "caBundleSecretRef": CA}, True),
    ({"bucket": "b", "insecureSkipTLSVerify": True}, True),
    ({"bucket": "b", "caBundleSecretRef": CA, "insecureSkipTLSVerify": False}, True),
    ({"bucket": "b", "caBundleSecretRef": CA, "insecureSkipTLSVerify": True}, False),
])
def test_cel_storage_tls(value: dict[str, Any], ok: bool) -> None:
    assert all(cel(r, value) for r in rules(models.StorageSpec)) is ok


@pytest.mark.parametrize("cls", [models.DatabaseSpec, models.RestoreDatabaseTarget])
@pytest.mark.parametrize(("value", "ok"), [
    ({"sslMode": "verify-full", "sslRootCertSecretRef": CA}, True),
    ({"clientCertSecretRef": CLIENT}, True),
    ({"sslMode": "disable"}, True),
    ({"sslMode": "disable", "sslRootCertSecretRef": CA}, False),
    ({"sslMode": "disable", "clientCertSecretRef": CLIENT}, False),
])
def test_cel_database_tls(cls: type[Any], value: dict[str, Any], ok: bool) -> None:
    assert all(cel(r, value) for r in rules(cls)) is ok


def test_schema_names() -> None:
    props = schema_for(models.StorageSpec)["properties"]
    assert "insecureSkipTLSVerify" in props and "caBundleSecretRef" in props
    assert "LAB ONLY" in props["insecureSkipTLSVerify"]["description"]
    db = schema_for(models.DatabaseSpec)["properties"]
    assert {"sslRootCertSecretRef", "clientCertSecretRef"} <= set(db)


# --- the agent's copy of the key -------------------------------------------------------------


def test_the_key_is_copied_private(tmp_path: Path) -> None:
    mounted = tmp_path / "tls.key"
    mounted.write_text(KEY_PEM)
    mounted.chmod(0o444)
    env = {"PGSSLKEY": str(mounted)}
    copy = tlsfiles.prepare_client_key(env, tmp_path)
    assert copy is not None and env["PGSSLKEY"] == str(copy)
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert copy.stat().st_uid == os.geteuid()
    assert stat.S_IMODE(copy.parent.stat().st_mode) == 0o700
    assert copy.read_text() == KEY_PEM


def test_no_key_nothing_to_do(tmp_path: Path) -> None:
    assert tlsfiles.prepare_client_key({}, tmp_path) is None
    assert tlsfiles.private_key_lines({}) == []


@pytest.mark.parametrize(("content", "needle"), [
    (None, "cannot read the database client key"),
    ("-----BEGIN CERTIFICATE-----\nabc\n", "holds no PEM private key"),
])
def test_a_bad_key_is_a_clear_error(tmp_path: Path, content: str | None, needle: str) -> None:
    path = tmp_path / "tls.key"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=needle):
        tlsfiles.prepare_client_key({"PGSSLKEY": str(path)}, tmp_path)


def test_the_key_lines_are_masked(tmp_path: Path) -> None:
    path = tmp_path / "tls.key"
    path.write_text(KEY_PEM)
    lines = tlsfiles.private_key_lines({"PGSSLKEY": str(path)})
    assert lines and not [line for line in lines if line.startswith("-----")]
    from timesheet_backup.agent.redact import Redactor
    assert lines[0] not in Redactor(lines)(f"oops: {lines[0]}")


# --- the operator's CA file, the agent's S3 client ---------------------------------------------


def test_the_operators_ca_file_is_private_and_shared(tmp_path: Path) -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    first, second = s3.ca_bundle_file(pem), s3.ca_bundle_file(pem)
    assert first == second and Path(first).read_text() == pem
    assert stat.S_IMODE(os.stat(first).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(first)).st_mode) == 0o700
    with pytest.raises(ConfigError, match="no PEM certificate"):
        s3.ca_bundle_file("hello")


def test_the_client_verifies_with_the_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.crt"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    settings_ = s3.S3Settings(bucket="b", endpoint="https://s3:9000", ca_bundle=str(bundle))
    settings_.validate()
    client = s3.make_client(settings_)
    assert client._endpoint.http_session._verify == str(bundle)
    insecure = s3.make_client(s3.S3Settings(bucket="b", endpoint="https://s3:9000",
                                            verify_tls=False))
    assert insecure._endpoint.http_session._verify is False
    with pytest.raises(ConfigError, match="contradict"):
        s3.S3Settings(bucket="b", ca_bundle=str(bundle), verify_tls=False).validate()


# --- the secrets scan knows key material -------------------------------------------------------


def test_the_scan_finds_a_private_key_whole_or_in_part() -> None:
    found = pem_secrets("client key", KEY_PEM)
    body_line = KEY_PEM.splitlines()[1]
    assert scan_text("log", f"x {body_line} y", found)
    assert scan_text("status", "-----BEGIN PRIVATE KEY----- only", found) == []
