"""`agent restore`: manifest -> fetch -> verify SHA-256 -> decrypt -> decompress -> apply.

Nothing is applied from an artifact whose SHA-256 did not match the manifest:

- database, custom (jobs 1) and plain formats: by default the object is read twice. A first
  pass only hashes it; the second streams it into `pg_restore --single-transaction` or
  `psql --single-transaction -v ON_ERROR_STOP=1`, pinned to the same object version (ETag),
  hashed again, and with its last 64 KiB held back until that hash matched, so the tool
  cannot reach the end of its input and COMMIT before the check. `--verify streaming`
  skips the first pass (half the download) and relies on the transaction and the held-back
  tail alone;
- database, custom with jobs > 1 and directory formats, and selective restores (tables,
  schemas, data or schema only: pg_restore stops reading once it has them): downloaded
  (decrypted, decompressed) into the work directory, verified, then `pg_restore`;
- uploads: extracted into a staging directory inside the target, verified, then swapped in.
"""

from __future__ import annotations

import gzip
import logging
import os
import secrets
import subprocess
import tempfile
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

import zstandard

from timesheet_backup.agent import clients, pgtools, postgres, streams, tarstream
from timesheet_backup.agent.pgtools import Connection, RestoreOptions, Selection
from timesheet_backup.api.enums import UPLOADS_MODES
from timesheet_backup.constants import COMPONENT_DATABASE, COMPONENT_UPLOADS, COMPONENTS
from timesheet_backup.decisions import content
from timesheet_backup.errors import (
    AgentError,
    CheckFailed,
    ConfigError,
    DatabaseError,
    IntegrityError,
    ManifestError,
)
from timesheet_backup.storage import manifest as mf
from timesheet_backup.storage.s3 import S3Store

log = logging.getLogger(__name__)

VERIFY_MODES: Final = ("before", "streaming")
_DECODE_ERRORS = (zstandard.ZstdError, gzip.BadGzipFile, zlib.error, EOFError)


@dataclass(frozen=True)
class RestoreRequest:
    manifest_key: str
    components: tuple[str, ...] = ()  # empty: every component of the backup
    database: Connection | None = None  # dbname: the target, empty for the backup's own
    maintenance_db: str = "postgres"
    create_database: bool = False
    create_owner: str | None = None  # CREATE DATABASE ... OWNER; None: the connecting role
    # Replay the backup's roles and memberships first (--globals): a fresh server's roles,
    # before CREATE DATABASE ... OWNER and a dump whose owners are those roles.
    roles: bool = False
    clean: bool = False
    no_owner: bool = False
    jobs: int = 1
    selection: Selection = field(default_factory=Selection)  # empty: the whole dump
    uploads_dir: Path | None = None
    uploads_mode: str = "replace"
    uploads_paths: tuple[str, ...] = ()  # empty: every entry of the archive
    checks: tuple[str, ...] = ()
    # Compare each restored table's rows with the counts the backup took in its snapshot.
    compare_row_counts: bool = False
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
        if self.create_owner is not None and not self.create_database:
            raise ConfigError("--create-owner needs --create-database")
        if self.create_owner == "":
            raise ConfigError("--create-owner must name a role")
        without_database = bool(self.components) and COMPONENT_DATABASE not in self.components
        if self.checks and without_database:
            raise ConfigError("--check needs the database component")
        if self.roles and without_database:
            raise ConfigError("--globals needs the database component")
        self.selection.validate(self.clean)
        if self.uploads_paths and self.uploads_mode != "merge":
            raise ConfigError("--uploads-path restores only some entries: it needs "
                              "--uploads-mode merge (replace would delete all the others)")
        if any(not p.strip("/.") for p in self.uploads_paths):
            raise ConfigError("--uploads-path needs a pattern (not empty, '.' or '/')")


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

    def digest_mismatch(self) -> IntegrityError | None:
        """After a failed read: the hash error when the stored object is not the one the
        manifest describes — the cause a decryption, decompression or tar error only shows
        the symptom of (a tampered artifact fails naming its sha256). None otherwise."""
        try:
            self.hashing.drain()
            check_digest(self.artifact, self.hashing.size, self.hashing.hexdigest())
        except IntegrityError as exc:
            return exc
        except Exception:  # unreadable: the original error stands
            return None
        return None

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


class Loader:
    """Where a dump goes: pg_restore or psql reading stdin (or `input_path`), or — when the
    plan says so — pg_restore writing the SQL script that psql runs, through the preamble
    filter. psql gets the end of its input (and COMMITs) only after pg_restore succeeded:
    a failed or killed pg_restore kills psql, which rolls back."""

    def __init__(self, conn: Connection, fmt: str, request: RestoreRequest,
                 plan: clients.RestorePlan, bin_dir: Path | None,
                 input_path: str | None = None, jobs: int = 1) -> None:
        env = dict(os.environ)
        stdin = subprocess.PIPE if input_path is None else None
        self.producer: postgres.Tool | None = None
        self._pump: threading.Thread | None = None
        self._pump_error: BaseException | None = None
        if fmt == "plain":
            self.consumer = postgres.Tool(clients.located(pgtools.psql_restore_args(conn),
                                                          bin_dir),
                                          stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                          env=env)
            self._input: Any = (clients.PreambleFilter(self.consumer.stdin)
                                if plan.drop_timeout else self.consumer.stdin)
            return
        if not plan.script:
            options = RestoreOptions(fmt, request.clean, request.no_owner, jobs, jobs == 1,
                                     tuple(pgtools.selection_args(request.selection)))
            self.consumer = postgres.Tool(
                clients.located(pgtools.pg_restore_args(conn, options, input_path), bin_dir),
                stdin=stdin, stdout=subprocess.DEVNULL, env=env)
            self._input = self.consumer.stdin if input_path is None else None
            return
        if jobs > 1:
            log.warning("restoring with 1 job: the script of a newer pg_restore goes through "
                        "psql for a server before %d", clients.TRANSACTION_TIMEOUT_SINCE)
        options = RestoreOptions(fmt, request.clean, request.no_owner, 1, False,
                                 tuple(pgtools.selection_args(request.selection)))
        self.consumer = postgres.Tool(clients.located(pgtools.psql_restore_args(conn), bin_dir),
                                      stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)
        self.producer = postgres.Tool(
            clients.located(pgtools.pg_restore_script_args(options, input_path), bin_dir),
            stdin=stdin, stdout=subprocess.PIPE, env=env)
        self._input = self.producer.stdin if input_path is None else None
        script = clients.PreambleFilter(self.consumer.stdin)
        producer = self.producer

        def pump() -> None:
            try:
                streams.copy(producer.stdout, script)
                script.flush()  # not close: psql must not see the end before check()
            except BaseException as exc:  # psql stopped reading: reported by check()
                self._pump_error = exc
                producer.kill()  # else it blocks on its full stdout, and its writer with it

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()

    @property
    def stdin(self) -> Any:
        if self._input is None:
            raise RuntimeError("this loader reads a file, not stdin")
        return self._input

    def close_input(self) -> None:
        if self._input is not None:
            self._input.close()

    def check(self) -> None:
        """Wait for the tools and raise the failure that explains the others: psql's own
        error when it stopped reading, else pg_restore's (then psql is killed, rolling back
        what it ran so far), else psql's after it saw the whole script."""
        if self.producer is not None:
            if self._pump is not None:
                self._pump.join()  # at the end of the script, or when psql stopped reading
            if self._pump_error is not None:
                self.consumer.check()
                raise DatabaseError(f"psql stopped reading the restore script "
                                    f"({self._pump_error})")
            try:
                self.producer.check()
            except BaseException:
                self.consumer.kill()
                raise
            self.consumer.stdin.close()
        self.consumer.check()

    def kill(self) -> None:
        for tool in (self.producer, self.consumer):
            if tool is not None:
                tool.kill()  # a killed session rolls its transaction back

    @property
    def name(self) -> str:
        return (self.producer or self.consumer).name


def _restore_streaming(
    store: S3Store,
    artifact: mf.Artifact,
    identities: Sequence[Any],
    conn: Connection,
    request: RestoreRequest,
    plan: clients.RestorePlan,
    bin_dir: Path | None,
) -> None:
    etag = verify_object(store, artifact) if request.verify == "before" else None
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
    loader = Loader(conn, "plain" if artifact.format == "plain" else "custom", request, plan,
                    bin_dir)
    try:
        with ArtifactReader(store, artifact, identities, etag) as reader:
            holder = streams.WithholdingWriter(loader.stdin)
            try:
                if preamble:
                    # Ahead of the dump's own preamble: straight to psql, not through the
                    # filter (which stops filtering at the first statement).
                    loader.consumer.stdin.write(preamble)
                streams.copy(reader, holder)
                reader.finish()
                holder.release()
                loader.close_input()
            except BrokenPipeError:
                # The tool stopped reading. A corrupted artifact (streaming mode) explains
                # that better than the tool's own complaint, so check the rest first.
                reader.finish()
                loader.check()
                raise DatabaseError(f"{loader.name} stopped reading its input early") from None
    except BaseException:
        loader.kill()
        raise
    loader.check()


def _restore_from_files(
    store: S3Store,
    artifact: mf.Artifact,
    identities: Sequence[Any],
    conn: Connection,
    request: RestoreRequest,
    plan: clients.RestorePlan,
    bin_dir: Path | None,
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
        log.info("verified %s; restoring with %d jobs (%s)", artifact.key, request.jobs,
                 request.selection.describe())
        loader = Loader(conn, artifact.format, request, plan, bin_dir, str(path), request.jobs)
        try:
            loader.check()
        except BaseException:
            loader.kill()
            raise


def _plan(artifact: mf.Artifact, conn: Connection,
          request: RestoreRequest) -> tuple[clients.RestorePlan, Path | None, int]:
    """The client and way to restore into this server (agent/clients.py)."""
    target_version = postgres.server_version(conn.with_dbname(request.maintenance_db))
    target = clients.check_server(target_version, "target")
    dump_major = clients.major_of(artifact.pg_dump_version) if artifact.pg_dump_version \
        else None
    bins = clients.discover()
    if not bins:  # a machine without Debian's layout: the tools on PATH, as they are
        return clients.RestorePlan(0, False, False), None, target
    plan = clients.restore_plan(artifact.format or "custom", dump_major, target, list(bins))
    source = clients.major_of(artifact.server_version) if artifact.server_version else None
    if source is not None and target < source:
        log.warning("restoring a dump of PostgreSQL %s into an older server (%s): it loads "
                    "only if it uses nothing the older server lacks", artifact.server_version,
                    target_version)
    log.info("target server %s: restoring with %s", target_version,
             plan.describe(artifact.format or "custom"))
    return plan, bins[plan.client], target


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
    if request.selection and artifact.format == "plain":
        # Before anything is created: a plain SQL script has no table of contents to pick from.
        raise ConfigError(
            f"selective restore ({request.selection.describe()}) needs a custom or directory "
            "format backup; this one is a plain SQL dump, which can only be restored whole")
    roles_note = _restore_roles(store, artifact, identities, conn, request) \
        if request.roles else None
    created = False
    if not postgres.database_exists(conn, request.maintenance_db):
        if not request.create_database:
            raise DatabaseError(
                f"target database {dbname!r} does not exist (use --create-database)"
            )
        postgres.create_database(conn, request.maintenance_db, owner=request.create_owner)
        created = True
    log.info("restoring %s (%s format; %s) into database %s", artifact.key, artifact.format,
             request.selection.describe(), dbname)
    try:
        plan, bin_dir, target_major = _plan(artifact, conn, request)
        # A selective restore reads from a verified file too: pg_restore stops reading its
        # input once it has what was selected, and would COMMIT before the rest was hashed.
        if artifact.format == "directory" or request.jobs > 1 or request.selection:
            _restore_from_files(store, artifact, identities, conn, request, plan, bin_dir)
        else:
            _restore_streaming(store, artifact, identities, conn, request, plan, bin_dir)
    except BaseException:
        if created:
            log.info("dropping database %s, created for this failed restore", dbname)
            try:
                postgres.drop_database(conn, request.maintenance_db)
            except AgentError as exc:
                log.warning("%s", exc)
        raise
    try:
        row_counts = _compare_row_counts(conn, artifact, request)
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
        "rowCounts": row_counts,
        "selection": request.selection.describe(),
        "dropped": request.drop_after,
        "serverMajor": target_major,
        "client": plan.describe(artifact.format or "custom"),
        **({"roles": roles_note} if roles_note else {}),
    }


# A roles dump is a statement per role and membership: far below this even for thousands.
MAX_ROLES_BYTES: Final = 64 << 20


def _restore_roles(store: S3Store, artifact: mf.Artifact, identities: Sequence[Any],
                   conn: Connection, request: RestoreRequest) -> str:
    """Recreate the backup's roles (agent/roles.py's plan) on the target server, read whole
    and verified against the manifest before any statement runs; the description of what
    was done (e.g. "roles: 3 role(s) created (...); ...")."""
    roles_object = artifact.roles_object()
    if roles_object is None:
        raise ConfigError(
            f"backup has no roles to restore ({artifact.key} was dumped without "
            "database.globals); restore without globals, or take a backup with it")
    script = bytearray()
    with ArtifactReader(store, roles_object, identities) as reader:
        while chunk := reader.read(streams.CHUNK):
            script += chunk
            if len(script) > MAX_ROLES_BYTES:
                raise IntegrityError(f"{roles_object.key} holds more than {MAX_ROLES_BYTES} "
                                     "bytes of SQL: not a roles dump")
        reader.finish()
    log.info("verified %s; recreating roles on %s:%s", roles_object.key, conn.host, conn.port)
    plan = postgres.restore_roles(conn.with_dbname(request.maintenance_db),
                                  bytes(script).decode("utf-8"))
    return "roles: " + plan.describe()


def _compare_row_counts(conn: Connection, artifact: mf.Artifact,
                        request: RestoreRequest) -> str | None:
    """With --compare-row-counts: the restored tables' exact rows against the backup's
    (CheckFailed naming each table that differs). None when not asked; a sentence when the
    backup has no counts (taken by an older agent), so the status says so."""
    if not request.compare_row_counts:
        return None
    if artifact.row_counts is None:
        log.info("the backup has no row counts (an older agent wrote it): nothing compared")
        return "the backup has no row counts to compare with"
    selection = request.selection
    expected = content.restored_counts(artifact.row_counts, selection.tables,
                                       selection.schemas, selection.schema_only)
    comparison = content.compare_counts(expected, postgres.count_rows(conn, list(expected)))
    if not comparison.ok:
        raise CheckFailed(comparison.message())
    log.info("%s", comparison.summary())
    return comparison.summary()


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
                staging, artifact.strip_components, absolute_roots=roots,
                include=request.uploads_paths,
            )
            try:
                result = extractor.extract(reader)
                reader.finish()
            except AgentError as exc:
                mismatch = reader.digest_mismatch()
                if mismatch is not None and mismatch is not exc:
                    raise mismatch from None
                raise
        if request.uploads_paths and not result.stats.selected:
            raise ConfigError(f"no entry of {artifact.key} matches --uploads-path "
                              f"{', '.join(request.uploads_paths)}: nothing was restored")
        if not request.uploads_paths:
            # Before the swap: a stream that differs from what was backed up replaces nothing.
            mismatches = mf.uploads_mismatches(
                artifact, result.stats.file_count, result.stats.bytes)
            if mismatches:
                raise IntegrityError(
                    f"{artifact.key} does not match its manifest ({'; '.join(mismatches)}): "
                    "nothing was restored from it")
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
    summary: dict[str, Any] = {
        "directory": str(target),
        "mode": request.uploads_mode,
        "fileCount": result.stats.file_count,
        "contentBytes": result.stats.bytes,
    }
    if request.uploads_paths:
        summary["paths"] = list(request.uploads_paths)
        summary["leftOut"] = result.stats.unselected
    else:
        summary["compared"] = mf.uploads_comparison(
            artifact, result.stats.file_count, result.stats.bytes)
    return summary


# --- the whole restore ---------------------------------------------------------------


def run_restore(request: RestoreRequest, store: S3Store) -> dict[str, Any]:
    request.validate()
    manifest = mf.read(store, request.manifest_key)
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
