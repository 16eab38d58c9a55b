"""Talking to PostgreSQL: pre-flight checks, CREATE/DROP DATABASE, SQL checks, and running
the client tools as subprocesses with their stderr captured (bounded) for error messages."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import subprocess
import threading
from collections.abc import Mapping, Sequence
from typing import IO, Any, cast

import psycopg
from psycopg import sql

from timesheet_backup.agent import pgtools, roles
from timesheet_backup.agent.pgtools import Connection, DumpOptions
from timesheet_backup.decisions import content
from timesheet_backup.errors import CheckFailed, ConfigError, DatabaseError

log = logging.getLogger(__name__)


def _connect(conn: Connection, autocommit: bool = True) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(pgtools.conninfo(conn), autocommit=autocommit)
    except psycopg.OperationalError as exc:
        detail = " ".join(str(exc).split())
        hint = pgtools.classify(detail)
        message = f"cannot connect to database {conn.dbname!r} on {conn.host}:{conn.port}"
        message += f" as {conn.user!r}: {detail}"
        raise DatabaseError(f"{message} ({hint})" if hint else message) from None


def server_version(conn: Connection) -> str:
    """Connect once (fails fast on a bad host or password) and return the server version."""
    with _connect(conn) as c:
        row = c.execute("SHOW server_version").fetchone()
    return str(row[0]).split()[0] if row else "unknown"


def tool_version(tool: str) -> str:
    try:
        out = subprocess.run(
            [tool, "--version"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"{tool} is not available: {exc}") from None
    return pgtools.parse_version(out)


def database_exists(conn: Connection, maintenance_db: str) -> bool:
    with _connect(conn.with_dbname(maintenance_db)) as c:
        return (
            c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (conn.dbname,)).fetchone()
            is not None
        )


def create_database(conn: Connection, maintenance_db: str, owner: str | None = None) -> None:
    """CREATE DATABASE, owned by ``owner`` if given (else by the connecting role).

    PostgreSQL's rules: the connecting role needs CREATEDB (or is a superuser), and to give
    the database another owner it must be a member of that role."""
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(conn.dbname))
    if owner:
        statement = sql.SQL("{} OWNER {}").format(statement, sql.Identifier(owner))
    with _connect(conn.with_dbname(maintenance_db)) as c:
        try:
            c.execute(statement)
        except psycopg.Error as exc:
            detail = " ".join(str(exc).split())
            hint = _create_database_hint(detail, conn.user, owner)
            message = f"cannot create database {conn.dbname!r}: {detail}"
            raise DatabaseError(f"{message} ({hint})" if hint else message) from None
    if owner:
        log.info("created database %s owned by %s", conn.dbname, owner)
    else:
        log.info("created database %s", conn.dbname)


def _create_database_hint(detail: str, user: str, owner: str | None) -> str | None:
    text = detail.lower()
    if "permission denied to create database" in text:
        return f"the role {user!r} needs the CREATEDB attribute to create databases"
    if owner and ("must be member of role" in text or "must be able to set role" in text):
        return f"to create a database owned by {owner!r}, {user!r} must be a member of that role"
    return pgtools.classify(detail)


def drop_database(conn: Connection, maintenance_db: str) -> None:
    with _connect(conn.with_dbname(maintenance_db)) as c:
        try:
            c.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(conn.dbname)
                )
            )
        except psycopg.Error as exc:
            raise DatabaseError(f"cannot drop database {conn.dbname!r}: {exc}") from None


def is_empty(conn: Connection) -> bool:
    """No user relations, types or functions outside the system schemas."""
    query = """
        SELECT NOT EXISTS (
          SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
            AND n.nspname NOT LIKE 'pg\\_toast%')
    """
    with _connect(conn) as c:
        row = c.execute(query).fetchone()
    return bool(row and row[0])


def run_checks(conn: Connection, checks: Sequence[str]) -> list[dict[str, Any]]:
    """Run each query; its first column of the first row must be truthy."""
    results: list[dict[str, Any]] = []
    with _connect(conn) as c:
        for number, query in enumerate(checks, start=1):
            try:
                row = c.execute(cast(Any, query)).fetchone()
            except psycopg.Error as exc:
                raise CheckFailed(
                    f"check {number} ({query!r}) failed: {' '.join(str(exc).split())}"
                ) from None
            value = row[0] if row else None
            if not value:
                raise CheckFailed(
                    f"check {number} ({query!r}) returned {value!r}, expected a true value"
                )
            results.append({"sql": query, "ok": True})
    return results


class RowCounts:
    """Exact row counts of the tables a dump holds, taken in the dump's own snapshot.

    One connection opens a REPEATABLE READ READ ONLY transaction, exports its snapshot
    (`snapshot_id`, for `pg_dump --snapshot`) and then stays idle: the snapshot can be
    imported only while that transaction is open and healthy, and an error inside it (a
    count failing) would abort it and make pg_dump's import fail. A thread opens a second
    connection that imports the same snapshot (SET TRANSACTION SNAPSHOT) and counts there,
    while pg_dump runs: the counts are exactly the rows the dump holds, whatever is written
    meanwhile, and the dump is not delayed. Both stay open until the context exits, after
    the dump (pg_dump and each of its --jobs workers import the snapshot as they start)."""

    def __init__(self, conn: Connection, options: DumpOptions) -> None:
        self._conn = conn
        self._options = options
        self._holder: psycopg.Connection[Any] | None = None
        self._counter: psycopg.Connection[Any] | None = None
        self._thread: threading.Thread | None = None
        self._counts: dict[str, int] | None = None
        self._error: BaseException | None = None
        self._cancelled = threading.Event()
        self.snapshot_id = ""

    def __enter__(self) -> RowCounts:
        self._holder = _connect(self._conn)
        try:
            # No timeout may end the exporting transaction while pg_dump has yet to import.
            self._holder.execute("SET idle_in_transaction_session_timeout = 0")
            self._holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            row = self._holder.execute("SELECT pg_catalog.pg_export_snapshot()").fetchone()
        except psycopg.Error as exc:
            self._holder.close()
            raise DatabaseError(
                f"cannot export a snapshot of {self._conn.dbname!r} for the dump: "
                f"{' '.join(str(exc).split())}") from None
        self.snapshot_id = str(row[0]) if row else ""
        self._thread = threading.Thread(target=self._count, name="row-counts", daemon=True)
        self._thread.start()
        return self

    def _count(self) -> None:
        try:
            db = self._counter = _connect(self._conn)
            if self._cancelled.is_set():
                return
            # pg_dump's own session settings: no statement timeout cuts a long count short,
            # and row security off, so a count is exact or fails (as pg_dump fails) rather
            # than silently counting only the rows a policy shows.
            db.execute("SET statement_timeout = 0")
            db.execute("SET row_security = off")
            db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            db.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(
                sql.Literal(self.snapshot_id)))
            query, params = pgtools.dumped_tables_query(self._options)
            tables = db.execute(cast(Any, query), params).fetchall()
            counts: dict[str, int] = {}
            for schema, table in tables:
                row = db.execute(sql.SQL("SELECT pg_catalog.count(*) FROM {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(table))).fetchone()
                counts[content.qualified_name(schema, table)] = int(row[0]) if row else 0
            self._counts = counts
        except BaseException as exc:
            self._error = exc

    def result(self) -> dict[str, int]:
        """Wait for the counts (call after the dump succeeded)."""
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            detail = " ".join(str(self._error).split())
            raise DatabaseError(f"cannot count the rows of the dumped tables: {detail}")
        return dict(self._counts or {})

    def __exit__(self, *exc_info: object) -> None:
        self._cancelled.set()
        if self._thread is not None and self._thread.is_alive():
            # The dump failed or was interrupted: stop counting now rather than after
            # every table has been scanned.
            if self._counter is not None:
                with contextlib.suppress(psycopg.Error):
                    self._counter.cancel_safe(timeout=10)
            self._thread.join(timeout=30)
        for db in (self._counter, self._holder):
            if db is not None:
                with contextlib.suppress(psycopg.Error):
                    db.close()


def count_rows(conn: Connection, tables: Sequence[str]) -> dict[str, int | None]:
    """Exact rows of each table (manifest keys, `schema.table`) in the database; None for
    a table that does not exist. One REPEATABLE READ transaction: one consistent view."""
    found: dict[str, int | None] = {}
    with _connect(conn) as c:
        c.execute("SET row_security = off")  # every row, or an error: never a policy's view
        c.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        for key in tables:
            schema, table = content.split_qualified_name(key)
            exists = c.execute(
                "SELECT 1 FROM pg_catalog.pg_class r JOIN pg_catalog.pg_namespace n "
                "ON n.oid = r.relnamespace WHERE n.nspname = %s AND r.relname = %s",
                (schema, table)).fetchone()
            if exists is None:
                found[key] = None
                continue
            try:
                row = c.execute(sql.SQL("SELECT pg_catalog.count(*) FROM {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(table))).fetchone()
            except psycopg.Error as exc:
                raise DatabaseError(
                    f"cannot count the rows of {key}: {' '.join(str(exc).split())}") from None
            found[key] = int(row[0]) if row else 0
        c.execute("COMMIT")
    return found


class Tool:
    """A running pg tool. stderr is read by a thread into a bounded buffer, so a chatty tool
    never blocks on a full pipe and a failure can be summarized in one line."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        stdin: int | IO[Any] | None = None,
        stdout: int | IO[Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = os.path.basename(args[0])
        self.stderr_lines: collections.deque[str] = collections.deque(maxlen=50)
        log.debug("running %s", self.name)
        try:
            self.process = subprocess.Popen(
                list(args),
                stdin=stdin,
                stdout=stdout,
                stderr=subprocess.PIPE,
                env=dict(env) if env is not None else None,
            )
        except OSError as exc:
            raise ConfigError(f"cannot run {self.name}: {exc}") from None
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        stream = self.process.stderr
        if stream is None:
            return
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            self.stderr_lines.append(line)
            log.debug("%s: %s", self.name, line)

    @property
    def stdin(self) -> IO[bytes]:
        if self.process.stdin is None:
            raise RuntimeError("tool started without a stdin pipe")
        return self.process.stdin

    @property
    def stdout(self) -> IO[bytes]:
        if self.process.stdout is None:
            raise RuntimeError("tool started without a stdout pipe")
        return self.process.stdout

    def wait(self) -> int:
        code = self.process.wait()
        self._reader.join(timeout=10)
        return code

    def check(self) -> None:
        """Wait and raise a one-line DatabaseError if the tool failed; kill it if the wait
        is interrupted (SIGTERM), so no tool outlives the agent."""
        try:
            code = self.wait()
        except BaseException:
            self.kill()
            raise
        if code != 0:
            raise DatabaseError(pgtools.summarize_stderr(self.name, list(self.stderr_lines)))

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self.wait()


def dump_roles(conn: Connection, with_passwords: bool = False, timeout: float = 600,
               tool: str = "pg_dumpall") -> str:
    """pg_dumpall --roles-only as SQL text (small: one statement per role and membership).

    Runs as the backup's own role; without passwords a non-superuser can take it. `tool`:
    the pg_dumpall of the client chosen for the server (one no older than it)."""
    args = [tool, *roles.pg_dumpall_roles_args(conn, with_passwords)[1:]]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                              env=os.environ.copy())
    except (OSError, subprocess.SubprocessError) as exc:
        raise DatabaseError(f"pg_dumpall could not run: {exc}") from None
    if done.returncode != 0:
        detail = " ".join(done.stderr.split())[-2000:]
        hint = roles.passwords_need_superuser_hint(detail) or pgtools.classify(detail)
        message = f"pg_dumpall --roles-only failed: {detail}"
        raise DatabaseError(f"{message} ({hint})" if hint else message)
    return done.stdout


def restore_roles(conn: Connection, script: str) -> roles.RolesPlan:
    """Replay a roles dump onto the server `conn` points at, in one transaction.

    What the target already has decides the plan (roles.plan_roles_restore): existing roles
    are altered, never dropped; the connecting role, the target's superusers and built-in
    roles are left alone. All or nothing: a failing statement rolls every role back."""
    with _connect(conn, autocommit=False) as c:
        rows = c.execute(roles.role_lists_query()).fetchall()
        existing, superusers = roles.observed_roles([(str(r), bool(s)) for r, s in rows])
        plan = roles.plan_roles_restore(script, existing, conn.user, superusers)
        statement = ""
        try:
            for statement in plan.statements:
                c.execute(statement.encode())
            c.commit()
        except psycopg.Error as exc:
            c.rollback()
            detail = " ".join(str(exc).split())
            hint = pgtools.classify(detail)
            if "permission denied" in detail.lower():
                hint = f"restoring roles needs a superuser or CREATEROLE; {conn.user!r} is neither"
            message = f"restoring roles failed at {statement[:120]!r}: {detail}"
            raise DatabaseError(f"{message} ({hint})" if hint else message) from None
    log.info("roles restored: %s", plan.describe())
    return plan
