"""The agent's command lines, environment and Secret files for a resolved spec (pure).

Argument lists only, `--flag=value` for every user-controlled value, so a value that starts
with `-` can never be read as a flag; Secrets reach the agent only as env references or as
files in read-only volumes (certificates and keys: only their paths are in args or env)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from timesheet_backup.api import models
from timesheet_backup.api.fields import parse
from timesheet_backup.constants import AGE_IDENTITY_ENV
from timesheet_backup.jobs.pod import (
    SCRATCH_MOUNT,
    TLS_MOUNT_ROOT,
    UPLOADS_MOUNT,
    SecretFile,
    SecretVolume,
    required_secrets,
    secret_env,
    storage_env,
)

TERMINATION_LOG = "/dev/termination-log"


S3_CA_VOLUME = SecretVolume("s3-ca", f"{TLS_MOUNT_ROOT}/s3-ca", ())
PG_TLS_VOLUME = SecretVolume("postgres-tls", f"{TLS_MOUNT_ROOT}/postgres-tls", ())
S3_CA_FILE = "ca.crt"
PG_ROOT_CERT_FILE, PG_CERT_FILE, PG_KEY_FILE = "root.crt", "tls.crt", "tls.key"


def storage_volumes(storage: models.StorageSpec | None) -> list[SecretVolume]:
    ref = storage.ca_bundle_secret_ref if storage else None
    if ref is None:
        return []
    return [SecretVolume(S3_CA_VOLUME.name, S3_CA_VOLUME.mount_path,
                         (SecretFile(ref.name, ref.key, S3_CA_FILE),))]


def storage_tls_args(storage: models.StorageSpec) -> list[str]:
    """Paths only: the CA bundle is a file from storage_volumes."""
    if storage.ca_bundle_secret_ref is not None:
        return [f"--ca-bundle={S3_CA_VOLUME.path_of(S3_CA_FILE)}"]
    if storage.insecure_skip_tls_verify:
        return ["--insecure-skip-tls-verify"]
    return []


def database_tls(root_cert: models.SecretKeyRef | None,
                 client_cert: models.ClientCertSecretRef | None
                 ) -> tuple[list[dict[str, Any]], list[SecretVolume]]:
    """libpq's PGSSLROOTCERT/PGSSLCERT/PGSSLKEY pointing at files of one read-only volume."""
    files: list[SecretFile] = []
    env: list[dict[str, Any]] = []
    if root_cert is not None:
        files.append(SecretFile(root_cert.name, root_cert.key, PG_ROOT_CERT_FILE))
        env.append({"name": "PGSSLROOTCERT", "value": PG_TLS_VOLUME.path_of(PG_ROOT_CERT_FILE)})
    if client_cert is not None:
        files.append(SecretFile(client_cert.name, client_cert.certificate_key, PG_CERT_FILE))
        files.append(SecretFile(client_cert.name, client_cert.private_key_key, PG_KEY_FILE,
                                private=True))
        env.append({"name": "PGSSLCERT", "value": PG_TLS_VOLUME.path_of(PG_CERT_FILE)})
        env.append({"name": "PGSSLKEY", "value": PG_TLS_VOLUME.path_of(PG_KEY_FILE)})
    if not files:
        return [], []
    return env, [SecretVolume(PG_TLS_VOLUME.name, PG_TLS_VOLUME.mount_path, tuple(files))]


def storage_args(storage: models.StorageSpec, *, writes: bool) -> list[str]:
    args = [f"--bucket={storage.bucket}", f"--prefix={storage.prefix or ''}"]
    if storage.region:
        args.append(f"--region={storage.region}")
    if storage.endpoint:
        args.append(f"--endpoint={storage.endpoint}")
    if storage.force_path_style:
        args.append("--force-path-style")
    args += storage_tls_args(storage)
    if writes:
        if storage.storage_class:
            args.append(f"--storage-class={storage.storage_class}")
        sse = storage.server_side_encryption
        if sse:
            args.append(f"--sse={sse.type}")
            if sse.kms_key_id:
                args.append(f"--sse-kms-key-id={sse.kms_key_id}")
    return args


def connection_args(db: Mapping[str, Any], name_flag: str) -> list[str]:
    args = [f"--db-host={db['host']}", f"--db-user={db['user']}", f"{name_flag}={db['name']}"]
    if db.get("port"):
        args.append(f"--db-port={db['port']}")
    if db.get("sslMode"):
        args.append(f"--db-sslmode={db['sslMode']}")
    return args


def common_args() -> list[str]:
    return [f"--termination-message-path={TERMINATION_LOG}", f"--work-dir={SCRATCH_MOUNT}"]


def backup_args(backup_id: str, namespace: str, name: str, spec: models.BackupSpec,
                labels: Mapping[str, str] | None = None) -> list[str]:
    """`labels`: recorded in the manifest (jobs.manifests.manifest_labels)."""
    args = ["agent", "backup", f"--backup-id={backup_id}", f"--namespace={namespace}",
            f"--name={name}"]
    args += [f"--label={k}={v}" for k, v in sorted((labels or {}).items())]
    args += [f"--component={c}" for c in spec.components]
    if "database" in spec.components and spec.database:
        db = spec.database
        args += connection_args({"host": db.host, "user": db.user, "name": db.name,
                                 "port": db.port, "sslMode": db.ssl_mode}, "--db-name")
        args.append(f"--db-format={db.format}")
        if db.jobs:
            args.append(f"--db-jobs={db.jobs}")
        args += [f"--db-table={t}" for t in db.tables or []]
        args += [f"--db-exclude-table={t}" for t in db.exclude_tables or []]
        if db.no_owner:
            args.append("--db-no-owner")
        if db.globals:
            args.append("--db-globals")
        if db.globals_passwords:
            args.append("--db-globals-passwords")
    compression = spec.compression or models.CompressionSpec()
    args.append(f"--compression={compression.algorithm}")
    if compression.level is not None:
        args.append(f"--compression-level={compression.level}")
    if spec.encryption:
        args += [f"--age-recipient={r}" for r in spec.encryption.age_recipients]
    if "uploads" in spec.components:
        args.append(f"--uploads-dir={UPLOADS_MOUNT}")
        if spec.uploads:
            args += [f"--uploads-exclude={p}" for p in spec.uploads.exclude or []]
    if spec.storage:
        args += storage_args(spec.storage, writes=True)
        lock = spec.storage.object_lock
        if lock:
            args += [f"--object-lock-mode={lock.mode}", f"--object-lock-days={lock.days}"]
    return args + common_args()


def backup_env(spec: models.BackupSpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    if "database" in spec.components and spec.database:
        env += secret_env("PGPASSWORD", spec.database.password_secret_ref)
        env += database_tls(spec.database.ssl_root_cert_secret_ref,
                            spec.database.client_cert_secret_ref)[0]
    if spec.storage:
        env += storage_env(spec.storage)
    return env


def backup_volumes(spec: models.BackupSpec) -> list[SecretVolume]:
    """The Secret files of a backup Job: the S3 CA bundle, the database's certificates."""
    volumes = storage_volumes(spec.storage)
    if "database" in spec.components and spec.database:
        volumes += database_tls(spec.database.ssl_root_cert_secret_ref,
                                spec.database.client_cert_secret_ref)[1]
    return volumes


def backup_secrets(spec: models.BackupSpec) -> list[tuple[str, str]]:
    """Every (Secret, key) the backup Job reads: its env and its Secret files."""
    return required_secrets(backup_env(spec), backup_volumes(spec))


def restore_targets(resolved: Mapping[str, Any]
                    ) -> tuple[models.RestoreDatabaseTarget | None,
                               models.RestoreUploadsTarget | None]:
    """The targets of status.resolved as models, so unset fields get the models' defaults
    (e.g. `clean`) and no second copy of them lives here."""
    db, uploads = resolved.get("database"), resolved.get("uploads")
    return (parse(models.RestoreDatabaseTarget, db, "database") if db else None,
            parse(models.RestoreUploadsTarget, uploads, "uploads") if uploads else None)


def restore_args(spec: models.RestoreSpec, resolved: Mapping[str, Any]) -> list[str]:
    """`resolved` is the Restore's status.resolved: source, components and targets."""
    args = ["agent", "restore", f"--manifest-key={resolved['manifestKey']}"]
    args += [f"--component={c}" for c in resolved["components"]]
    db, uploads = restore_targets(resolved)
    if db:
        args += connection_args({"host": db.host, "user": db.user, "name": db.name,
                                 "port": db.port, "sslMode": db.ssl_mode}, "--target-db-name")
        if db.create_database:
            args.append("--create-database")
        if db.owner:
            args.append(f"--create-owner={db.owner}")
        if db.globals:
            args.append("--globals")
        if db.clean and not db.data_only:  # dataOnly: rows into the existing tables
            args.append("--clean")
        args += [f"--table={t}" for t in db.tables or []]
        args += [f"--schema={n}" for n in db.schemas or []]
        if db.data_only:
            args.append("--data-only")
        if db.schema_only:
            args.append("--schema-only")
        if db.no_owner:
            args.append("--no-owner")
        if db.jobs:
            args.append(f"--jobs={db.jobs}")
        if db.drop_after:
            args.append("--drop-database-after")
        checks = spec.verify.sql_checks if spec.verify else None
        args += [f"--check={q}" for q in checks or []]
        if spec.verify and spec.verify.row_counts:
            args.append("--compare-row-counts")
    if uploads:
        args += [f"--uploads-dir={UPLOADS_MOUNT}", f"--uploads-mode={uploads.mode}"]
        args += [f"--uploads-path={p}" for p in uploads.paths or []]
    return args + storage_args(restore_storage(resolved), writes=False) + common_args()


def restore_storage(resolved: Mapping[str, Any]) -> models.StorageSpec:
    return parse(models.StorageSpec, resolved.get("storage") or {}, "storage")


def restore_env(spec: models.RestoreSpec, resolved: Mapping[str, Any]) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    db, _ = restore_targets(resolved)
    if db:
        env += secret_env("PGPASSWORD", db.password_secret_ref)
        env += database_tls(db.ssl_root_cert_secret_ref, db.client_cert_secret_ref)[0]
    env += storage_env(restore_storage(resolved))
    # The key only when the artifacts need it: a Secret the agent would not read must not
    # keep its pod from starting (nor fail the Restore as SecretMissing).
    if spec.decryption and resolved.get("encrypted"):
        env += secret_env(AGE_IDENTITY_ENV, spec.decryption.secret_ref)
    return env


def restore_volumes(resolved: Mapping[str, Any]) -> list[SecretVolume]:
    """The Secret files of a restore Job: the S3 CA bundle, the target's certificates."""
    volumes = storage_volumes(restore_storage(resolved))
    db, _ = restore_targets(resolved)
    if db:
        volumes += database_tls(db.ssl_root_cert_secret_ref, db.client_cert_secret_ref)[1]
    return volumes


def restore_secrets(spec: models.RestoreSpec, resolved: Mapping[str, Any]
                    ) -> list[tuple[str, str]]:
    """Every (Secret, key) the restore Job reads: its env and its Secret files."""
    return required_secrets(restore_env(spec, resolved), restore_volumes(resolved))


def http_check_args(check: models.HttpCheck) -> list[str]:
    return ["agent", "http-check", f"--url={check.url}",
            f"--expected-status={check.expected_status}",
            f"--timeout={check.timeout_seconds}",
            f"--termination-message-path={TERMINATION_LOG}"]
