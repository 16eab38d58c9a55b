"""`agent restore`: manifest -> fetch -> verify SHA-256 -> decrypt -> decompress -> apply.

Nothing is applied from an artifact whose SHA-256 did not match the manifest:

- database, custom (jobs 1) and plain formats: by default the object is read twice. A first
  pass only hashes it; the second streams it into `pg_restore --single-transaction` or
  `psql --single-transaction -v ON_ERROR_STOP=1`, pinned to the same object version (ETag),
  hashed again, and with its last 64 KiB held back until that hash matched, so the tool
  cannot reach the end of its input and COMMIT before the check. `--verify streaming`
  skips the first pass (half the download) and relies on the transaction and the held-back
  tail alone;
- database, custom with jobs > 1 and directory formats: downloaded (decrypted, decompressed)
  into the work directory, verified, then `pg_restore --jobs`;
- uploads: extracted into a staging directory inside the target, verified, then swapped in.
"""

from __future__ import annotations

import gzip
import logging
import os
import secrets
import subprocess
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

import zstandard

from timesheet_backup.agent import pgtools, postgres, streams, tarstream
from timesheet_backup.agent.errors import (
    AgentError,
    ConfigError,
    DatabaseError,
    IntegrityError,
    ManifestError,
)
from timesheet_backup.agent.pgtools import Connection, RestoreOptions
from timesheet_backup.constants import COMPONENT_DATABASE, COMPONENT_UPLOADS, COMPONENTS
from timesheet_backup.storage import layout
from timesheet_backup.storage import manifest as mf
from timesheet_backup.storage.s3 import S3Store

log = logging.getLogger(__name__)

UPLOADS_MODES: Final = ("replace", "merge")
VERIFY_MODES: Final = ("before", "streaming")
_DECODE_ERRORS = (zstandard.ZstdError, gzip.BadGzipFile, zlib.error, EOFError)


@dataclass(frozen=True)
class RestoreRequest:
    manifest_key: str
    components: tuple[str, ...] = ()  # empty: every component of the backup
    database: Connection | None = None  # dbname: the target, empty for the backup's own
    maintenance_db: str = "postgres"
    create_database: bool = False
    clean: bool = False
    no_owner: bool = False
    jobs: int = 1
    uploads_dir: Path | None = None
    uploads_mode: str = "replace"
    checks: tuple[str, ...] = ()
    identities: str | None = None
    verify: str = "before"
    work_dir: Path | None = None
    restore_id: str = ""
    drop_after: bool = False

    def validate(self) -> None:
        for component in self.components:
            if component not in COMPONENTS:
                raise ConfigError(f"unknown component {component!r} ({', '.join(COMPONENTS)})")
        if self.uploads_mode not in UPLOADS_MODES:
            raise ConfigError(f"--uploads-mode must be one of {', '.join(UPLOADS_MODES)}")
        if self.verify not in VERIFY_MODES:
            raise ConfigError(f"--verify must be one of {', '.join(VERIFY_MODES)}")
        if self.jobs < 1:
            raise ConfigError("--jobs must be at least 1")
        if self.checks and COMPONENT_UPLOADS in self.components and len(self.components) == 1:
            raise ConfigError("--check needs the database component")


class ArtifactReader:
    """The plaintext of one artifact, hashed on the way; `finish()` checks the hash."""

    def __init__(
        self,
        store: S3Store,
        artifact: mf.Artifact,
        identities: Sequence[Any],
        etag: str | None = None,
    ) -> None:
        self.artifact = artifact
        self._raw = store.open_reader(artifact.key, etag)
        self.hashing = streams.HashingReader(self._raw)
        source: IO[bytes] = io_buffered(self.hashing)
        self._decryptor: streams.AgeDecryptor | None = None
        if artifact.encrypted:
            self._decryptor = streams.AgeDecryptor(identities, source)
            source = io_buffered(self._decryptor)
        self.plain = streams.decompressor(artifact.compression, source)

    def read(self, size: int = -1) -> bytes:
        try:
            return self.plain.read(size)
        except AgentError:
            raise
        except _DECODE_ERRORS as exc:
            raise IntegrityError(
                f"{self.artifact.key} cannot be decompressed (corrupted or tampered): {exc}"
            ) from None
        except OSError as exc:
            raise IntegrityError(f"{self.artifact.key} cannot be read: {exc}") from None

    def finish(self) -> None:
        """Read to the end and compare size and SHA-256 with the manifest."""
        while self.read(streams.CHUNK):
            pass
        self.hashing.drain()
        check_digest(self.artifact, self.hashing.size, self.hashing.hexdigest())

    def close(self) -> None:
        if self._decryptor is not None:
            self._decryptor.close()
        self._raw.close()

    def __enter__(self) -> ArtifactReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def io_buffered(raw: Any) -> IO[bytes]:
    import io

    return io.BufferedReader(raw, streams.CHUNK)


def check_digest(artifact: mf.Artifact, size: int, sha256: str) -> None:
    if size != artifact.size_bytes or sha256 != artifact.sha256:
        raise IntegrityError(
            f"{artifact.key} does not match its manifest (sha256 {sha256[:12]}..., {size} bytes; "
            f"expected {artifact.sha256[:12]}..., {artifact.size_bytes} bytes): corrupted or "
            "tampered, nothing was restored from it"
        )


def verify_object(store: S3Store, artifact: mf.Artifact) -> str | None:
    """First pass: hash the stored object; return its ETag to pin the second pass."""
    reader = store.open_reader(artifact.key)
    try:
        hashing = streams.HashingReader(reader)
        hashing.drain()
    finally:
        reader.close()
    check_digest(artifact, hashing.size, hashing.hexdigest())
    log.info("verified %s (%d bytes, sha256 %s)", artifact.key, hashing.size, artifact.sha256)
    return reader.etag


# --- database ------------------------------------------------------------------------


def _restore_streaming(
    store: S3Store,
    artifact: mf.Artifact,
    identities: Sequence[Any],
    conn: Connection,
    request: RestoreRequest,
) -> None:
    etag = verify_object(store, artifact) if request.verify == "before" else None
    env = dict(os.environ)
    preamble = b""
    if artifact.format == "plain":
        if request.no_owner:
            raise ConfigError(
                "--no-owner needs a custom or directory format backup; a plain dump carries "
                "ownership as written at backup time (back up with --db-no-owner)"
            )
        if request.clean:
            if artifact.tables:
                raise ConfigError(
                    "--clean with a plain dump of selected tables is not supported; "
                    "use the custom format"
                )
            preamble = pgtools.CLEAN_PLAIN_PREAMBLE.encode()
        args = pgtools.psql_restore_args(conn)
    else:
        options = RestoreOptions("custom", request.clean, request.no_owner, 1, True)
        args = pgtools.pg_restore_args(conn, options, None)
    tool = postgres.Tool(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)
    try:
        with ArtifactReader(store, artifact, identities, etag) as reader:
            holder = streams.WithholdingWriter(tool.stdin)
            try:
                if preamble:
                    tool.stdin.write(preamble)
                streams.copy(reader, holder)
                reader.finish()
                holder.release()
                tool.stdin.close()
            except BrokenPipeError:
                # The tool stopped reading. A corrupted artifact (streaming mode) explains
                # that better than the tool's own complaint, so check the rest first.
                reader.finish()
                tool.check()
                raise DatabaseError(f"{tool.name} stopped reading its input early") from None
    except BaseException:
        tool.kill()  # a killed session rolls its transaction back
        raise
    tool.check()


def _restore_from_files(
    store: S3Store,
    artifact: mf.Artifact,
    identities: Sequence[Any],
    conn: Connection,
    request: RestoreRequest,
) -> None:
    with tempfile.TemporaryDirectory(prefix="tsb-restore-", dir=request.work_dir) as tmp:
        with ArtifactReader(store, artifact, identities) as reader:
            if artifact.format == "directory":
                path = Path(tmp) / "dump"
                path.mkdir()
                tarstream.SafeExtractor(path, same_owner=False).extract(reader)
            else:
                path = Path(tmp) / "database.dump"
                with open(path, "wb") as out:
                    streams.copy(reader, out)
            reader.finish()
        log.info("verified %s; restoring with %d jobs", artifact.key, request.jobs)
        options = RestoreOptions(
            artifact.format, request.clean, request.no_owner, request.jobs, request.jobs == 1
        )
        postgres.Tool(
            pgtools.pg_restore_args(conn, options, str(path)),
            stdout=subprocess.DEVNULL,
            env=dict(os.environ),
        ).check()


def restore_database(
    store: S3Store,
    artifact: mf.Artifact,
    identities: Sequence[Any],
    request: RestoreRequest,
) -> dict[str, Any]:
    base = request.database
    if base is None:
        raise ConfigError("the database component needs --db-host/--db-user")
    dbname = base.dbname or artifact.database
    if not dbname:
        raise ConfigError("the backup does not name its database: give --target-db-name")
    conn = base.with_dbname(dbname)
    conn.validate()
    created = False
    if not postgres.database_exists(conn, request.maintenance_db):
        if not request.create_database:
            raise DatabaseError(
                f"target database {dbname!r} does not exist (use --create-database)"
            )
        postgres.create_database(conn, request.maintenance_db)
        created = True
    log.info("restoring %s (%s format) into database %s", artifact.key, artifact.format, dbname)
    try:
        if artifact.format == "directory" or request.jobs > 1:
            _restore_from_files(store, artifact, identities, conn, request)
        else:
            _restore_streaming(store, artifact, identities, conn, request)
    except BaseException:
        if created:
            log.info("dropping database %s, created for this failed restore", dbname)
            try:
                postgres.drop_database(conn, request.maintenance_db)
            except AgentError as exc:
                log.warning("%s", exc)
        raise
    try:
        checks = postgres.run_checks(conn, request.checks) if request.checks else []
    finally:
        # A restore test into a scratch database: drop it even when a check failed.
        if request.drop_after:
            log.info("dropping database %s after the checks (--drop-database-after)", dbname)
            postgres.drop_database(conn, request.maintenance_db)
    return {
        "database": dbname,
        "created": created,
        "format": artifact.format,
        "checks": checks,
        "dropped": request.drop_after,
    }


# --- uploads -------------------------------------------------------------------------


def restore_uploads(
    store: S3Store,
    artifact: mf.Artifact,
    identities: Sequence[Any],
    request: RestoreRequest,
) -> dict[str, Any]:
    target = request.uploads_dir
    if target is None:
        raise ConfigError("the uploads component needs --uploads-dir")
    token = request.restore_id or secrets.token_hex(6)
    staging = tarstream.make_staging(target, token)
    roots = [str(target.absolute()), os.path.realpath(target)]
    if artifact.source_path:
        roots.append(artifact.source_path)
    log.info("extracting %s into %s", artifact.key, staging)
    try:
        with ArtifactReader(store, artifact, identities) as reader:
            extractor = tarstream.SafeExtractor(
                staging, artifact.strip_components, absolute_roots=roots
            )
            result = extractor.extract(reader)
            reader.finish()
        if request.uploads_mode == "replace":
            tarstream.replace_with(target, staging, token)
        else:
            tarstream.merge_into(target, staging)
    except BaseException:
        tarstream.discard(staging)
        raise
    tarstream.apply_root_attrs(target, result)
    log.info(
        "restored %d files into %s (%s)", result.stats.file_count, target, request.uploads_mode
    )
    return {
        "directory": str(target),
        "mode": request.uploads_mode,
        "fileCount": result.stats.file_count,
    }


# --- the whole restore ---------------------------------------------------------------


def load_manifest(store: S3Store, manifest_key: str) -> mf.Manifest:
    layout.dir_of_manifest(manifest_key)
    manifest = mf.loads(store.read_bytes(manifest_key, mf.MAX_MANIFEST_BYTES))
    manifest.check_keys(manifest_key)
    return manifest


def run_restore(request: RestoreRequest, store: S3Store) -> dict[str, Any]:
    request.validate()
    manifest = load_manifest(store, request.manifest_key)
    components = request.components or manifest.components
    artifacts: dict[str, mf.Artifact] = {}
    for component in components:
        artifact = manifest.artifact(component)
        if artifact is None:
            raise ManifestError(
                f"backup {manifest.backup_id!r} has no {component} artifact "
                f"(it has: {', '.join(manifest.components)})"
            )
        artifacts[component] = artifact
    identities: list[Any] = []
    if any(a.encrypted for a in artifacts.values()):
        if not request.identities:
            raise ConfigError(
                "the backup is age-encrypted: give the private key in TSB_AGE_IDENTITY "
                "or --age-identity-file"
            )
        identities = streams.parse_identities(request.identities)
    if COMPONENT_UPLOADS in artifacts and request.uploads_dir is None:
        raise ConfigError("the uploads component needs --uploads-dir")
    if COMPONENT_DATABASE in artifacts and request.database is None:
        raise ConfigError("the database component needs --db-host/--db-user")

    summary: dict[str, Any] = {
        "manifestKey": request.manifest_key,
        "backupId": manifest.backup_id,
        "components": list(components),
    }
    if COMPONENT_DATABASE in artifacts:
        summary["database"] = restore_database(
            store, artifacts[COMPONENT_DATABASE], identities, request
        )
    if COMPONENT_UPLOADS in artifacts:
        summary["uploads"] = restore_uploads(
            store, artifacts[COMPONENT_UPLOADS], identities, request
        )
    log.info("restore of backup %s complete", manifest.backup_id)
    return summary
