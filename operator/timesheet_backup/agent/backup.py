"""`agent backup`: dump and archive, compress, encrypt, upload, verify, then the manifest.

Order of a backup:
1. pre-flight: connect to the database (bad host/password fail here, before any upload),
   check the uploads directory and the bucket, refuse to overwrite another backup;
2. per component, one streaming multipart upload (custom and plain dumps and the uploads
   tar never touch the disk; the directory format is dumped to a work directory first);
3. each object is confirmed from the store's side (size, and SHA-256 or ETag);
4. `manifest.json` is written last. On any failure the objects of this run are deleted
   (best effort: a write-only key may not, then the operator does when the Backup is
   deleted) and no manifest is written: no manifest, no backup.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

from timesheet_backup import __version__
from timesheet_backup.agent import clients, pgtools, postgres, streams, tarstream
from timesheet_backup.agent.pgtools import Connection, DumpOptions
from timesheet_backup.api.enums import OBJECT_LOCK_MODES
from timesheet_backup.constants import COMPONENT_DATABASE, COMPONENT_UPLOADS, COMPONENTS
from timesheet_backup.errors import ConfigError, FilesystemError, StorageError
from timesheet_backup.storage import layout
from timesheet_backup.storage import manifest as mf
from timesheet_backup.storage.s3 import ObjectLock, S3Store
from timesheet_backup.storage.uploader import UploadResult

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class BackupRequest:
    backup_id: str
    namespace: str
    name: str
    components: tuple[str, ...] = COMPONENTS
    database: Connection | None = None
    dump: DumpOptions = field(default_factory=DumpOptions)
    # The server's roles and memberships beside the dump (--db-globals), with their password
    # hashes only when asked (--db-globals-passwords: a superuser's dump).
    roles: bool = False
    role_passwords: bool = False
    compression: str = "zstd"
    compression_level: int | None = None
    recipients: tuple[str, ...] = ()
    uploads_dir: Path | None = None
    uploads_exclude: tuple[str, ...] = ()
    work_dir: Path | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    # S3 Object Lock: every object is retained `object_lock_days` after the backup started.
    object_lock_mode: str | None = None
    object_lock_days: int | None = None

    def object_lock(self, start: datetime) -> ObjectLock | None:
        if self.object_lock_mode is None:
            return None
        return ObjectLock(self.object_lock_mode, start.replace(microsecond=0)
                          + timedelta(days=self.object_lock_days or 0))

    def validate(self) -> None:
        if not self.components:
            raise ConfigError("no component to back up")
        for component in self.components:
            if component not in COMPONENTS:
                raise ConfigError(f"unknown component {component!r} ({', '.join(COMPONENTS)})")
        if not self.backup_id:
            raise ConfigError("a backup id is required")
        layout.backup_dir("", self.namespace, self.name)  # valid names
        if COMPONENT_DATABASE in self.components:
            if self.database is None:
                raise ConfigError("the database component needs --db-host/--db-name/--db-user")
            self.database.validate()
            self.dump.validate()
        if self.role_passwords and not self.roles:
            raise ConfigError("--db-globals-passwords needs --db-globals")
        if self.roles and COMPONENT_DATABASE not in self.components:
            raise ConfigError("--db-globals needs the database component")
        if COMPONENT_UPLOADS in self.components and self.uploads_dir is None:
            raise ConfigError("the uploads component needs --uploads-dir")
        streams.check_level(self.compression, self.compression_level)
        streams.parse_recipients(self.recipients)
        if (self.object_lock_mode is None) != (self.object_lock_days is None):
            raise ConfigError("--object-lock-mode and --object-lock-days go together")
        if self.object_lock_mode is not None and \
                self.object_lock_mode not in OBJECT_LOCK_MODES:
            raise ConfigError(f"--object-lock-mode must be one of {', '.join(OBJECT_LOCK_MODES)}")
        if self.object_lock_days is not None and self.object_lock_days < 1:
            raise ConfigError("--object-lock-days must be at least 1")


def _stream_to_store(
    store: S3Store,
    key: str,
    request: BackupRequest,
    produce: Callable[[streams.Sink], T],
    lock: ObjectLock | None = None,
) -> tuple[UploadResult, tuple[str, ...], T]:
    """Run `produce(sink)` with sink = compress -> [encrypt] -> multipart upload; complete
    and verify the upload. Any exception aborts the upload."""
    started = time.monotonic()
    with store.uploader(key, lock=lock) as uploader:
        encryptor = (
            streams.AgeEncryptor(streams.parse_recipients(request.recipients), uploader)
            if request.recipients
            else None
        )
        compressor = streams.Compressor(
            request.compression, request.compression_level, encryptor or uploader
        )
        try:
            value = produce(compressor)
            compressor.close()
            if encryptor is not None:
                encryptor.close()
        except BaseException:
            if encryptor is not None:
                encryptor.abort()
            raise
        result = uploader.finish()
    verified = store.verify(result, lock)
    elapsed = max(time.monotonic() - started, 0.001)
    log.info(
        "uploaded s3://%s/%s: %d bytes in %d parts, %.1f MiB/s, verified %s",
        store.bucket,
        key,
        result.size,
        len(result.parts),
        result.size / elapsed / 1048576,
        "+".join(verified),
    )
    return result, verified, value


def _dump_database(
    store: S3Store, request: BackupRequest, key: str, server_version: str, dump_version: str,
    dump_bin: Path | None = None, lock: ObjectLock | None = None,
) -> mf.Artifact:
    conn = request.database
    if conn is None:
        raise ConfigError("no database settings")
    options = request.dump
    env = dict(os.environ)

    with postgres.RowCounts(conn, options) as counter:
        def dump_args(output_dir: str | None = None) -> list[str]:
            return clients.located(
                pgtools.pg_dump_args(conn, options, output_dir, counter.snapshot_id), dump_bin)

        def stream_dump(sink: streams.Sink) -> None:
            tool = postgres.Tool(dump_args(), stdout=subprocess.PIPE, env=env)
            try:
                streams.copy(tool.stdout, sink)
            except BaseException:
                tool.kill()
                raise
            tool.check()

        if options.format == "directory":
            # pg_dump -Fd writes files (in parallel with --jobs): dump first, then stream a
            # tar.
            with tempfile.TemporaryDirectory(prefix="tsb-dump-", dir=request.work_dir) as tmp:
                out = Path(tmp) / "dump"
                log.info("dumping %s with %d jobs into %s", conn.dbname, options.jobs, out)
                postgres.Tool(dump_args(str(out)), env=env).check()
                row_counts = counter.result()
                result, verified, _ = _stream_to_store(
                    store, key, request, lambda sink: tarstream.write_tar(out, sink), lock
                )
        else:
            log.info("dumping %s (%s format) to s3://%s/%s",
                     conn.dbname, options.format, store.bucket, key)
            result, verified, _ = _stream_to_store(store, key, request, stream_dump, lock)
            row_counts = counter.result()
    log.info("counted the rows of %d tables in the dump's snapshot (%d rows)",
             len(row_counts), sum(row_counts.values()))
    return mf.Artifact(
        component=COMPONENT_DATABASE,
        key=key,
        size_bytes=result.size,
        sha256=result.sha256,
        format=options.format,
        compression=request.compression,
        compression_level=streams.check_level(request.compression, request.compression_level),
        encryption="age" if request.recipients else "none",
        recipients=request.recipients,
        verified=verified,
        database=conn.dbname,
        pg_dump_version=dump_version,
        server_version=server_version,
        tables=options.tables,
        exclude_tables=options.exclude_tables,
        no_owner=options.no_owner,
        row_counts=row_counts,
    )


def _dump_roles(store: S3Store, request: BackupRequest, key: str, dump_bin: Path | None,
                lock: ObjectLock | None = None) -> mf.Roles:
    """pg_dumpall --roles-only, packed and verified like the dump it goes with. Small (a
    statement per role and membership), so it is read whole before the upload starts: a
    refused dump (passwords without a superuser) leaves no object behind."""
    conn = request.database
    if conn is None:
        raise ConfigError("no database settings")
    tool = clients.located(["pg_dumpall"], dump_bin)[0]
    script = postgres.dump_roles(conn, with_passwords=request.role_passwords,
                                 tool=tool).encode()
    result, verified, _ = _stream_to_store(store, key, request,
                                           lambda sink: sink.write(script), lock)
    log.info("dumped the server's roles and memberships%s to s3://%s/%s",
             " with their password hashes" if request.role_passwords else "", store.bucket, key)
    return mf.Roles(key=key, size_bytes=result.size, sha256=result.sha256, verified=verified,
                    passwords=request.role_passwords)


def _archive_uploads(store: S3Store, request: BackupRequest, key: str,
                     lock: ObjectLock | None = None) -> mf.Artifact:
    root = request.uploads_dir
    if root is None:
        raise ConfigError("no uploads directory")
    log.info("archiving %s to s3://%s/%s", root, store.bucket, key)
    result, verified, stats = _stream_to_store(
        store, key, request, lambda sink: tarstream.write_tar(root, sink, request.uploads_exclude),
        lock,
    )
    log.info(
        "archived %d files, %d directories, %d symlinks, %d hard links (%d skipped, %d changed "
        "while read)",
        stats.files,
        stats.directories,
        stats.symlinks,
        stats.hardlinks,
        len(stats.skipped),
        len(stats.changed),
    )
    return mf.Artifact(
        component=COMPONENT_UPLOADS,
        key=key,
        size_bytes=result.size,
        sha256=result.sha256,
        format=mf.UPLOADS_FORMAT,
        compression=request.compression,
        compression_level=streams.check_level(request.compression, request.compression_level),
        encryption="age" if request.recipients else "none",
        recipients=request.recipients,
        verified=verified,
        file_count=stats.file_count,
        content_bytes=stats.bytes,
        exclude=request.uploads_exclude,
        source_path=os.path.abspath(root),
    )


def _check_existing(store: S3Store, manifest_key: str, backup_id: str) -> mf.Manifest | None:
    """An earlier run of the same backup (a retried Job) may already have finished."""
    if not store.exists(manifest_key):
        return None
    existing = mf.read(store, manifest_key)
    if existing.backup_id != backup_id:
        raise StorageError(
            f"s3://{store.bucket}/{manifest_key} already holds backup {existing.backup_id!r}; "
            "refusing to overwrite it"
        )
    return existing


def run_backup(
    request: BackupRequest, store: S3Store, clock: Callable[[], datetime]
) -> tuple[mf.Manifest, str]:
    """Back up the requested components; return the manifest and its key."""
    request.validate()
    start = clock()
    prefix = store.settings.prefix
    manifest_key = layout.manifest_key(prefix, request.namespace, request.name)
    directory = layout.backup_dir(prefix, request.namespace, request.name)
    encrypted = bool(request.recipients)

    server_version = dump_version = ""
    dump_bin: Path | None = None
    if COMPONENT_DATABASE in request.components and request.database is not None:
        server_version = postgres.server_version(request.database)
        server_major = clients.check_server(server_version)
        bins = clients.discover()
        if bins:  # else: whatever pg_dump is on PATH (a machine without Debian's layout)
            dump_bin = bins[clients.dump_client(server_major, list(bins))]
        dump_version = postgres.tool_version(clients.located(["pg_dump"], dump_bin)[0])
        log.info(
            "database %s: server %s, pg_dump %s",
            request.database.dbname,
            server_version,
            dump_version,
        )
    if COMPONENT_UPLOADS in request.components and request.uploads_dir is not None:
        if not request.uploads_dir.is_dir():
            raise FilesystemError(
                f"uploads directory {str(request.uploads_dir)!r} does not exist "
                "(is the volume mounted?)"
            )
        if not os.access(request.uploads_dir, os.R_OK | os.X_OK):
            raise FilesystemError(tarstream.unreadable_message(request.uploads_dir, ["."]))
    store.check_bucket()
    lock = request.object_lock(start)
    if lock is not None:
        store.check_object_lock()
    existing = _check_existing(store, manifest_key, request.backup_id)
    if existing is not None:
        log.info("backup %s is already complete at %s", request.backup_id, manifest_key)
        return existing, manifest_key

    artifacts: list[mf.Artifact] = []
    written: list[str] = []
    try:
        if COMPONENT_DATABASE in request.components:
            roles = None
            if request.roles:
                # First: a role dump refused for lack of a superuser fails before the long one.
                roles_key = directory + layout.roles_artifact_name(request.compression,
                                                                   encrypted)
                written.append(roles_key)
                roles = _dump_roles(store, request, roles_key, dump_bin, lock)
            key = directory + layout.database_artifact_name(
                request.dump.format, request.compression, encrypted
            )
            written.append(key)
            database = _dump_database(store, request, key, server_version, dump_version,
                                      dump_bin, lock)
            artifacts.append(replace(database, roles=roles))
        if COMPONENT_UPLOADS in request.components:
            key = directory + layout.uploads_artifact_name(request.compression, encrypted)
            written.append(key)
            artifacts.append(_archive_uploads(store, request, key, lock))
        manifest = mf.Manifest(
            backup_id=request.backup_id,
            namespace=request.namespace,
            name=request.name,
            start_time=start,
            completion_time=clock(),
            agent_version=__version__,
            artifacts=tuple(artifacts),
            labels=dict(request.labels),
            lock_mode=lock.mode if lock else None,
            locked_until=lock.retain_until if lock else None,
        )
        written.append(manifest_key)
        store.write_bytes(manifest_key, mf.dumps(manifest), "application/json", lock)
    except BaseException:
        if lock is None:
            _delete_quietly(store, written)
        else:
            # Locked objects cannot be deleted (a store would refuse, or hide them behind a
            # delete marker); without a manifest they are never a backup.
            log.warning("the objects this failed backup wrote are locked until %s and stay "
                        "in the bucket (no manifest: never a backup): %s",
                        lock.retain_until.isoformat(), ", ".join(written))
        raise
    log.info("backup %s complete: s3://%s/%s", request.backup_id, store.bucket, manifest_key)
    return manifest, manifest_key


def _delete_quietly(store: S3Store, keys: list[str]) -> None:
    if not keys:
        return
    try:
        store.delete(keys)
    except Exception as exc:
        # Expected with a key that may not delete (storage.deleteCredentialsSecretRef): the
        # operator removes them with its own key when the Backup is deleted. Never raised:
        # the failure that brought us here is the one to report.
        log.warning("could not delete the partial objects of this backup (they stay until "
                    "the Backup is deleted, without a manifest they are never a backup): %s",
                    exc)
