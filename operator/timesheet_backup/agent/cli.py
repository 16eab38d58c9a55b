"""Command line of the agent: `agent backup`, `agent restore`, `catalog list`,
`catalog import`. Every setting is an explicit argument (what a Job builder writes), except
secrets, which only come from the environment (PGPASSWORD, AWS_*, TSB_AGE_IDENTITY).

On success: exit 0, a JSON summary on stdout and in the termination message file. On an
expected failure: one line `error: ...` on stderr, `{"ok": false, ...}` in the termination
message file, a non-zero exit code, no traceback. See docs/agent.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import secrets
import signal
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from timesheet_backup.agent import memory, termination, tlsfiles
from timesheet_backup.agent.pgtools import Connection, DumpOptions
from timesheet_backup.agent.redact import RedactingFilter, Redactor, secrets_from_env
from timesheet_backup.api.enums import (
    COMPRESSIONS,
    DUMP_FORMATS,
    OBJECT_LOCK_MODES,
    SSE_TYPES,
    SSL_MODES,
    UPLOADS_MODES,
)
from timesheet_backup.constants import AGE_IDENTITY_ENV, COMPONENTS, DEFAULT_PART_SIZE
from timesheet_backup.errors import AgentError, ConfigError, Interrupted

if TYPE_CHECKING:  # imported where used: the operator loads this parser, not the agent's deps
    from timesheet_backup.agent.backup import BackupRequest
    from timesheet_backup.agent.restore import RestoreRequest

log = logging.getLogger("timesheet_backup.agent")

EXIT_INTERNAL: Final = 3
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)


def utcnow() -> datetime:
    return datetime.now(UTC)


# --- pure helpers --------------------------------------------------------------------


def parse_size(text: str) -> int:
    """`16777216`, `16MiB`, `16M`, `512k` -> bytes (binary units)."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 16MiB)")
    number, unit = int(match.group(1)), (match.group(2) or "b").lower()
    factor = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(unit[0], 1)
    return number * factor


def parse_label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def connection_from_args(
    args: argparse.Namespace, env: Mapping[str, str], dbname: str
) -> Connection:
    """Database settings from arguments, falling back to the libpq environment variables."""
    port_text = str(args.db_port or env.get("PGPORT") or 5432)
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"database port {port_text!r} is not a number") from None
    return Connection(
        host=args.db_host or env.get("PGHOST", ""),
        port=port,
        user=args.db_user or env.get("PGUSER", ""),
        dbname=dbname,
        sslmode=args.db_sslmode or env.get("PGSSLMODE") or None,
        connect_timeout=args.db_connect_timeout,
    )


def s3_settings_from_args(args: argparse.Namespace) -> Any:
    from timesheet_backup.storage.s3 import DEFAULT_CONCURRENCY, S3Settings

    return S3Settings(
        bucket=args.bucket,
        prefix=args.prefix,
        region=args.region,
        endpoint=args.endpoint,
        force_path_style=args.force_path_style,
        storage_class=getattr(args, "storage_class", None),
        sse=getattr(args, "sse", None),
        sse_kms_key_id=getattr(args, "sse_kms_key_id", None),
        part_size=getattr(args, "part_size", DEFAULT_PART_SIZE),
        concurrency=getattr(args, "concurrency", DEFAULT_CONCURRENCY),
        max_attempts=args.max_attempts,
        retry_mode=args.retry_mode,
        checksums=not getattr(args, "no_checksums", False),
        ca_bundle=str(args.ca_bundle) if args.ca_bundle else None,
        verify_tls=not args.insecure_skip_tls_verify,
    )


# --- argument groups -----------------------------------------------------------------


def _add_common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument(
        "--termination-message-path",
        default=termination.DEFAULT_PATH,
        help="where to write the JSON result for Kubernetes (default %(default)s; written only "
        "if the kubelet created it, or, for another path, if its directory exists)",
    )
    group.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    group.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="scratch space for the directory format and parallel restores (default $TMPDIR)",
    )


def _add_s3(parser: argparse.ArgumentParser, *, writes: bool) -> None:
    group = parser.add_argument_group(
        "object store",
        "credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN or "
        "the default AWS chain (IRSA web identity)",
    )
    group.add_argument("--bucket", required=True)
    group.add_argument("--prefix", default="", help="key prefix, may be empty (default)")
    group.add_argument(
        "--region", default=None, help="default $AWS_REGION, else us-east-1 with --endpoint"
    )
    group.add_argument("--endpoint", default=None, help="S3-compatible endpoint URL")
    group.add_argument(
        "--force-path-style", action="store_true", help="path-style addressing (MinIO etc.)"
    )
    group.add_argument(
        "--ca-bundle", default=None,
        help="PEM file of the CA certificate(s) that sign the endpoint's (a private CA); "
        "default: the system's trusted CAs",
    )
    group.add_argument(
        "--insecure-skip-tls-verify", action="store_true",
        help="INSECURE, labs only: do not verify the endpoint's TLS certificate",
    )
    if writes:
        group.add_argument("--storage-class", default=None, help="e.g. STANDARD_IA, GLACIER_IR")
        group.add_argument(
            "--sse", default=None, choices=SSE_TYPES, help="server-side encryption"
        )
        group.add_argument("--sse-kms-key-id", default=None, help="KMS key for --sse aws:kms")
    if writes:
        group.add_argument(
            "--part-size",
            type=parse_size,
            default=DEFAULT_PART_SIZE,
            help="size of the first multipart parts, 5MiB..5GiB (default 8MiB), doubled "
            "every 1,000 parts; memory used is about part size x (concurrency + 1)",
        )
        group.add_argument(
            "--concurrency",
            type=int,
            default=4,
            help="parts uploaded in parallel (default %(default)s)",
        )
        group.add_argument(
            "--no-checksums",
            action="store_true",
            help="do not send SHA-256 part checksums (for stores that reject them; objects "
            "are then verified by size and ETag)",
        )
    group.add_argument(
        "--max-attempts",
        type=int,
        default=5,
        help="attempts per S3 request, with backoff (default %(default)s)",
    )
    group.add_argument(
        "--retry-mode", default="standard", choices=("standard", "adaptive", "legacy")
    )


def _add_db(parser: argparse.ArgumentParser, *, name_flag: str) -> None:
    group = parser.add_argument_group(
        "database",
        "the password comes only from PGPASSWORD; unset flags fall back to "
        "PGHOST, PGPORT, PGUSER, PGDATABASE, PGSSLMODE; certificates from the files "
        "PGSSLROOTCERT, PGSSLCERT and PGSSLKEY name (the key is copied to a private 0600 "
        "file first)",
    )
    group.add_argument("--db-host", default=None)
    group.add_argument("--db-port", type=int, default=None)
    group.add_argument("--db-user", default=None)
    group.add_argument(name_flag, dest="db_name", default=None)
    group.add_argument(
        "--db-sslmode",
        default=None,
        choices=SSL_MODES,
    )
    group.add_argument("--db-connect-timeout", type=int, default=15, help="seconds")


def _add_component(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument(
        "--component", dest="components", action="append", choices=COMPONENTS, help=help_text
    )


def add_parsers(commands: Any) -> None:
    """Add the `agent` and `catalog` commands to the top-level subparsers."""
    agent = commands.add_parser("agent", help="what Job pods run: back up or restore")
    agent_commands = agent.add_subparsers(dest="agent_command", required=True, metavar="ACTION")

    backup = agent_commands.add_parser("backup", help="back up the database and/or uploads")
    backup.add_argument("--backup-id", default=None, help="unique id (default: random)")
    backup.add_argument("--namespace", required=True, help="namespace of the Backup")
    backup.add_argument("--name", required=True, help="name of the Backup")
    _add_component(backup, "repeatable; default: database and uploads")
    _add_db(backup, name_flag="--db-name")
    dump = backup.add_argument_group("dump")
    dump.add_argument("--db-format", default="custom", choices=DUMP_FORMATS)
    dump.add_argument("--db-jobs", type=int, default=1, help="parallel dump (directory format)")
    dump.add_argument("--db-table", action="append", default=[], help="pg_dump --table pattern")
    dump.add_argument(
        "--db-exclude-table", action="append", default=[], help="pg_dump --exclude-table pattern"
    )
    dump.add_argument("--db-no-owner", action="store_true")
    dump.add_argument("--db-globals", action="store_true",
                      help="also dump the server's roles and memberships (pg_dumpall "
                           "--roles-only), for a restore onto a fresh server")
    dump.add_argument("--db-globals-passwords", action="store_true",
                      help="with --db-globals: keep the password hashes (needs a superuser)")
    packing = backup.add_argument_group("compression and encryption")
    packing.add_argument("--compression", default="zstd", choices=COMPRESSIONS)
    packing.add_argument(
        "--compression-level",
        type=int,
        default=None,
        help="zstd 1-19 (default 3), gzip 1-9 (default 6)",
    )
    packing.add_argument(
        "--age-recipient",
        action="append",
        default=[],
        help="age public key (age1... or ssh-...); repeatable",
    )
    uploads = backup.add_argument_group("uploads")
    uploads.add_argument("--uploads-dir", type=Path, default=None)
    uploads.add_argument(
        "--uploads-exclude",
        action="append",
        default=[],
        help="glob; without '/' matches names at any depth, with '/' the "
        "path from the root; repeatable",
    )
    backup.add_argument(
        "--label",
        action="append",
        type=parse_label,
        default=[],
        help="KEY=VALUE recorded in the manifest; repeatable",
    )
    locking = backup.add_argument_group(
        "object lock", "S3 Object Lock retention of every object (the bucket must have Object "
        "Lock enabled)")
    locking.add_argument("--object-lock-mode", default=None, choices=OBJECT_LOCK_MODES)
    locking.add_argument("--object-lock-days", type=int, default=None,
                         help="retain the objects this many days after the backup's start")
    _add_s3(backup, writes=True)
    _add_common(backup)
    backup.set_defaults(run=run_backup_command)

    restore = agent_commands.add_parser("restore", help="restore a backup from its manifest")
    source = restore.add_argument_group("source (--manifest-key, or --namespace and --name)")
    source.add_argument("--manifest-key", default=None)
    source.add_argument("--namespace", default=None)
    source.add_argument("--name", default=None)
    _add_component(restore, "repeatable; default: every component of the backup")
    _add_db(restore, name_flag="--target-db-name")
    target = restore.add_argument_group("database target")
    target.add_argument(
        "--maintenance-db",
        default="postgres",
        help="database to connect to for CREATE DATABASE (default %(default)s)",
    )
    target.add_argument("--create-database", action="store_true")
    target.add_argument(
        "--create-owner",
        default=None,
        metavar="ROLE",
        help="owner of the database --create-database creates (CREATE DATABASE ... OWNER); "
        "the connecting role must be a member of it. Default: the connecting role",
    )
    target.add_argument(
        "--globals", action="store_true",
        help="first recreate the roles and memberships the backup dumped (--db-globals); "
             "needs a superuser or CREATEROLE")
    target.add_argument("--clean", action="store_true", help="drop existing objects first")
    target.add_argument("--no-owner", action="store_true")
    target.add_argument("--jobs", type=int, default=1, help="parallel pg_restore")
    target.add_argument(
        "--table", dest="tables", action="append", default=[], metavar="NAME",
        help="restore only this table (pg_restore --table); repeatable")
    target.add_argument(
        "--schema", dest="schemas", action="append", default=[], metavar="NAME",
        help="restore only this schema (pg_restore --schema); repeatable")
    target.add_argument("--data-only", action="store_true",
                        help="only the data, into existing tables (pg_restore --data-only)")
    target.add_argument("--schema-only", action="store_true",
                        help="only the definitions (pg_restore --schema-only)")
    target.add_argument(
        "--drop-database-after",
        dest="drop_after",
        action="store_true",
        help="drop the target database after the checks (restore tests into a scratch database)",
    )
    target.add_argument(
        "--check",
        dest="checks",
        action="append",
        default=[],
        help="SQL whose first column must be true after the restore; repeatable",
    )
    target.add_argument(
        "--compare-row-counts",
        action="store_true",
        help="each restored table must have exactly the rows the backup counted in its "
             "dump's snapshot (backups with counts; restore tests)",
    )
    target.add_argument(
        "--verify",
        default="before",
        choices=("before", "streaming"),
        help="hash the artifact before applying it (default) or only while "
        "streaming it into one transaction",
    )
    files = restore.add_argument_group("uploads target")
    files.add_argument("--uploads-dir", type=Path, default=None)
    files.add_argument("--uploads-mode", default="replace", choices=UPLOADS_MODES)
    files.add_argument(
        "--uploads-path", dest="uploads_paths", action="append", default=[], metavar="GLOB",
        help="restore only the entries matching this pattern (with --uploads-mode merge); "
        "repeatable")
    files.add_argument("--restore-id", default=None, help="names the staging directory")
    restore.add_argument(
        "--age-identity-file",
        type=Path,
        default=None,
        help=f"age private key file (default: ${AGE_IDENTITY_ENV})",
    )
    _add_s3(restore, writes=False)
    _add_common(restore)
    restore.set_defaults(run=run_restore_command)

    check = agent_commands.add_parser(
        "http-check", help="wait until a URL answers with the expected status"
    )
    check.add_argument("--url", required=True)
    check.add_argument("--expected-status", type=int, default=200)
    check.add_argument("--timeout", type=float, default=120, help="seconds (default %(default)s)")
    _add_common(check)
    check.set_defaults(run=run_http_check)

    catalog = commands.add_parser("catalog", help="the backups in a bucket, without a cluster")
    catalog_commands = catalog.add_subparsers(
        dest="catalog_command", required=True, metavar="ACTION"
    )
    listing = catalog_commands.add_parser("list", help="list backups from their manifests")
    listing.add_argument("--namespace", default=None)
    listing.add_argument("--output", "-o", default="table", choices=("table", "json"))
    _add_s3(listing, writes=False)
    _add_common(listing)
    listing.set_defaults(run=run_catalog_list)

    imports = catalog_commands.add_parser(
        "import", help="upload backups made by hand (pg_dump | gzip, tar -czf) with a manifest"
    )
    imports.add_argument("--namespace", required=True)
    imports.add_argument("--name", required=True, help="name of the backup to create")
    imports.add_argument("--backup-id", default=None)
    imports.add_argument("--database-file", type=Path, default=None)
    # `auto`: detected from the file's first bytes (agent/importer.py).
    imports.add_argument("--database-format", default="auto", choices=("auto", *DUMP_FORMATS))
    imports.add_argument(
        "--database-compression", default="auto", choices=("auto", *COMPRESSIONS)
    )
    imports.add_argument(
        "--database-name",
        default=None,
        help="the database it was dumped from (default restore target)",
    )
    imports.add_argument("--uploads-file", type=Path, default=None)
    imports.add_argument(
        "--uploads-compression", default="auto", choices=("auto", *COMPRESSIONS)
    )
    imports.add_argument(
        "--uploads-strip-components",
        type=int,
        default=0,
        help="leading path components to drop on restore (1 for the guide's "
        "`tar -czf uploads.tar.gz uploads/`)",
    )
    imports.add_argument(
        "--uploads-source-path",
        default=None,
        help="where the directory was when archived (absolute symlinks into it are kept)",
    )
    imports.add_argument(
        "--age-recipient",
        action="append",
        default=[],
        help="recipients of age-encrypted files (recorded in the manifest)",
    )
    imports.add_argument(
        "--time", default=None, help="when the backup was taken, ISO 8601 (default: file mtime)"
    )
    imports.add_argument("--label", action="append", type=parse_label, default=[])
    _add_s3(imports, writes=True)
    _add_common(imports)
    imports.set_defaults(run=run_catalog_import)


# --- running -------------------------------------------------------------------------


def _setup_logging(level: str, redactor: Redactor) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler.addFilter(RedactingFilter(redactor))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("timesheet_backup").setLevel(level.upper())


def _on_signal(signum: int, frame: object) -> None:
    # Raised in the main thread: every `finally`/`with` on the way out runs, so a multipart
    # upload is aborted, pg_dump is killed and a staging directory removed before the
    # kubelet's SIGKILL (terminationGracePeriodSeconds later).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the clean-up finish
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Interrupted(f"stopped by {signal.Signals(signum).name} before finishing")


def _execute(args: argparse.Namespace, action: Callable[[], dict[str, Any] | None]) -> int:
    redactor = Redactor(secrets_from_env(os.environ) + tlsfiles.private_key_lines(os.environ))
    _setup_logging(args.log_level, redactor)
    path = args.termination_message_path
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    memory.return_large_buffers()
    try:
        # Before anything connects: libpq wants the client key as a 0600 file of our own.
        tlsfiles.prepare_client_key(os.environ, getattr(args, "work_dir", None))
        result = action()
    except AgentError as exc:
        message = redactor(str(exc))
        print(f"error: {message}", file=sys.stderr)
        termination.write(path, termination.failure(message, exc.reason))
        return exc.exit_code
    except Exception as exc:
        log.exception("internal error")
        message = redactor(f"internal error: {type(exc).__name__}: {exc}")
        print(f"error: {message}", file=sys.stderr)
        termination.write(path, termination.failure(message, "InternalError"))
        return EXIT_INTERNAL
    if result is not None:
        termination.write(path, termination.success(result))
        print(json.dumps(result, indent=2))
    return 0


def _store(args: argparse.Namespace) -> Any:
    from timesheet_backup.storage.s3 import S3Store

    return S3Store(s3_settings_from_args(args))


def backup_request(args: argparse.Namespace, env: Mapping[str, str]) -> BackupRequest:
    """The BackupRequest the parsed arguments ask for (the Job builder's contract test reads
    it: tests/unit/test_agent_contract.py)."""
    from timesheet_backup.agent.backup import BackupRequest

    components = tuple(dict.fromkeys(args.components or COMPONENTS))
    database = None
    if "database" in components:
        database = connection_from_args(args, env, args.db_name or env.get("PGDATABASE", ""))
    return BackupRequest(
        backup_id=args.backup_id or secrets.token_hex(8),
        namespace=args.namespace,
        name=args.name,
        components=components,
        database=database,
        dump=DumpOptions(
            format=args.db_format,
            jobs=args.db_jobs,
            tables=tuple(args.db_table),
            exclude_tables=tuple(args.db_exclude_table),
            no_owner=args.db_no_owner,
        ),
        roles=args.db_globals,
        role_passwords=args.db_globals_passwords,
        compression=args.compression,
        compression_level=args.compression_level,
        recipients=tuple(args.age_recipient),
        uploads_dir=args.uploads_dir,
        uploads_exclude=tuple(args.uploads_exclude),
        work_dir=args.work_dir,
        labels=dict(args.label),
        object_lock_mode=args.object_lock_mode,
        object_lock_days=args.object_lock_days,
    )


def run_backup_command(args: argparse.Namespace) -> int:
    def action() -> dict[str, Any]:
        from timesheet_backup.agent.backup import run_backup
        from timesheet_backup.storage import manifest as mf

        request = backup_request(args, os.environ)
        request.validate()
        manifest, key = run_backup(request, _store(args), utcnow)
        return mf.summary(manifest, key)

    return _execute(args, action)


def _read_identity(args: argparse.Namespace, env: Mapping[str, str]) -> str | None:
    if args.age_identity_file is not None:
        try:
            return Path(args.age_identity_file).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read the age identity file: {exc.strerror}") from None
    return env.get(AGE_IDENTITY_ENV) or None


def run_http_check(args: argparse.Namespace) -> int:
    from timesheet_backup.agent.httpcheck import wait_healthy

    return _execute(args, lambda: wait_healthy(args.url, args.expected_status, args.timeout))


def restore_request(
    args: argparse.Namespace, env: Mapping[str, str], prefix: str
) -> RestoreRequest:
    """The RestoreRequest the parsed arguments ask for; `prefix` is the store's key prefix
    (for --namespace/--name). The identity is read from `env` or --age-identity-file."""
    from timesheet_backup.agent.pgtools import Selection
    from timesheet_backup.agent.restore import RestoreRequest
    from timesheet_backup.storage import layout

    if args.manifest_key:
        manifest_key = args.manifest_key
    elif args.namespace and args.name:
        manifest_key = layout.manifest_key(prefix, args.namespace, args.name)
    else:
        raise ConfigError("give --manifest-key, or --namespace and --name")
    components = tuple(dict.fromkeys(args.components or ()))
    database = None
    if not components or "database" in components:
        database = connection_from_args(args, env, args.db_name or "")
        if not database.host:
            database = None
    return RestoreRequest(
        manifest_key=manifest_key,
        components=components,
        database=database,
        maintenance_db=args.maintenance_db,
        create_database=args.create_database,
        create_owner=args.create_owner,
        roles=args.globals,
        clean=args.clean,
        no_owner=args.no_owner,
        jobs=args.jobs,
        selection=Selection(tables=tuple(args.tables), schemas=tuple(args.schemas),
                            data_only=args.data_only, schema_only=args.schema_only),
        uploads_dir=args.uploads_dir,
        uploads_mode=args.uploads_mode,
        uploads_paths=tuple(args.uploads_paths),
        checks=tuple(args.checks),
        compare_row_counts=args.compare_row_counts,
        identities=_read_identity(args, env),
        verify=args.verify,
        work_dir=args.work_dir,
        restore_id=args.restore_id or secrets.token_hex(6),
        drop_after=args.drop_after,
    )


def run_restore_command(args: argparse.Namespace) -> int:
    def action() -> dict[str, Any]:
        from timesheet_backup.agent.restore import run_restore

        store = _store(args)
        return run_restore(restore_request(args, os.environ, store.settings.prefix), store)

    return _execute(args, action)


def run_catalog_list(args: argparse.Namespace) -> int:
    def action() -> None:
        from timesheet_backup.storage import catalog

        entries = catalog.list_backups(_store(args), args.prefix, args.namespace)
        if args.output == "json":
            print(json.dumps(catalog.to_json(entries), indent=2))
        else:
            print(catalog.format_table(entries))

    return _execute(args, action)


def run_catalog_import(args: argparse.Namespace) -> int:
    def action() -> dict[str, Any]:
        from timesheet_backup.agent.importer import ImportRequest, run_import
        from timesheet_backup.storage import manifest as mf

        when = None
        if args.time:
            try:
                when = datetime.fromisoformat(args.time.replace("Z", "+00:00"))
            except ValueError:
                raise ConfigError(f"--time {args.time!r} is not an ISO 8601 time") from None
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
        request = ImportRequest(
            namespace=args.namespace,
            name=args.name,
            backup_id=args.backup_id or f"import-{secrets.token_hex(8)}",
            database_file=args.database_file,
            database_format=args.database_format,
            database_compression=args.database_compression,
            database_name=args.database_name,
            uploads_file=args.uploads_file,
            uploads_compression=args.uploads_compression,
            strip_components=args.uploads_strip_components,
            source_path=args.uploads_source_path,
            recipients=tuple(args.age_recipient),
            time=when,
            labels=dict(args.label),
        )
        manifest, key = run_import(request, _store(args), utcnow)
        return mf.summary(manifest, key)

    return _execute(args, action)
