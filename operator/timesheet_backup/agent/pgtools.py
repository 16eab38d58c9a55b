"""Argument lists for pg_dump, pg_restore and psql, and reading their errors (pure).

Connection settings travel as one libpq connection string built here with proper quoting
(`--dbname`), never through a shell; the password only through PGPASSWORD in the
environment, which these tools read themselves.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from timesheet_backup.api.enums import DUMP_FORMATS, SSL_MODES
from timesheet_backup.errors import ConfigError

APPLICATION_NAME: Final = "timesheet-backup"


@dataclass(frozen=True)
class Connection:
    host: str
    port: int = 5432
    user: str = "postgres"
    dbname: str = "postgres"
    sslmode: str | None = None
    connect_timeout: int = 15

    def with_dbname(self, dbname: str) -> Connection:
        return Connection(
            self.host, self.port, self.user, dbname, self.sslmode, self.connect_timeout
        )

    def validate(self) -> None:
        if not self.host:
            raise ConfigError("a database host is required (--db-host)")
        if not 0 < self.port < 65536:
            raise ConfigError(f"database port {self.port} is out of range")
        if not self.user:
            raise ConfigError("a database user is required (--db-user)")
        if not self.dbname:
            raise ConfigError("a database name is required (--db-name)")
        if self.sslmode is not None and self.sslmode not in SSL_MODES:
            raise ConfigError(f"--db-sslmode must be one of {', '.join(SSL_MODES)}")


@dataclass(frozen=True)
class DumpOptions:
    format: str = "custom"
    jobs: int = 1
    tables: tuple[str, ...] = ()
    exclude_tables: tuple[str, ...] = ()
    no_owner: bool = False

    def validate(self) -> None:
        if self.format not in DUMP_FORMATS:
            raise ConfigError(f"--db-format must be one of {', '.join(DUMP_FORMATS)}")
        if self.jobs < 1:
            raise ConfigError("--db-jobs must be at least 1")
        if self.jobs > 1 and self.format != "directory":
            raise ConfigError("a parallel dump (--db-jobs > 1) needs --db-format directory")


@dataclass(frozen=True)
class RestoreOptions:
    format: str
    clean: bool = False
    no_owner: bool = False
    jobs: int = 1
    single_transaction: bool = True
    extra: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Selection:
    """Part of a custom/directory dump to restore (pg_restore's object selection)."""

    tables: tuple[str, ...] = ()
    schemas: tuple[str, ...] = ()
    data_only: bool = False
    schema_only: bool = False

    def __bool__(self) -> bool:
        return bool(self.tables or self.schemas or self.data_only or self.schema_only)

    def describe(self) -> str:
        parts = [f"table {t}" for t in self.tables] + [f"schema {n}" for n in self.schemas]
        if self.data_only:
            parts.append("data only")
        if self.schema_only:
            parts.append("schema only")
        return ", ".join(parts) or "everything"

    def validate(self, clean: bool) -> None:
        if self.data_only and self.schema_only:
            raise ConfigError("--data-only and --schema-only exclude each other")
        if self.data_only and clean:
            raise ConfigError("--data-only loads rows into existing tables: not with --clean")
        for name in (*self.tables, *self.schemas):
            if not name:
                raise ConfigError("--table and --schema need a name")


def selection_args(selection: Selection) -> list[str]:
    """pg_restore's -t/-n/-a/-s; `--flag=value`, so a name starting with `-` stays a name.
    With --clean, pg_restore drops only the selected objects."""
    args = [f"--table={t}" for t in selection.tables]
    args += [f"--schema={n}" for n in selection.schemas]
    if selection.data_only:
        args.append("--data-only")
    if selection.schema_only:
        args.append("--schema-only")
    return args


def quote_conninfo_value(value: str) -> str:
    """libpq keyword/value quoting: single quotes, backslash-escaped `'` and `\\`."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def conninfo(conn: Connection) -> str:
    params: list[tuple[str, str]] = [
        ("host", conn.host),
        ("port", str(conn.port)),
        ("user", conn.user),
        ("dbname", conn.dbname),
        ("connect_timeout", str(conn.connect_timeout)),
        ("application_name", APPLICATION_NAME),
    ]
    if conn.sslmode:
        params.append(("sslmode", conn.sslmode))
    return " ".join(f"{key}={quote_conninfo_value(value)}" for key, value in params)


def pg_dump_args(
    conn: Connection, options: DumpOptions, output_dir: str | None = None,
    snapshot: str | None = None,
) -> list[str]:
    """pg_dump writing to stdout, except the directory format which writes `output_dir`.

    Compression is always off here (`--compress=0`): the agent compresses the stream itself,
    so `zstd -d | pg_restore` works by hand whatever the format."""
    args = ["pg_dump", "--no-password", f"--format={options.format}"]
    if options.format != "plain":
        args.append("--compress=0")
    if options.format == "directory":
        if not output_dir:
            raise ConfigError("the directory format needs an output directory")
        args += [f"--jobs={options.jobs}", f"--file={output_dir}"]
    args += [f"--table={t}" for t in options.tables]
    args += [f"--exclude-table={t}" for t in options.exclude_tables]
    if options.no_owner:
        args.append("--no-owner")
    if snapshot:
        # The snapshot the row counts are taken in (postgres.RowCounts).
        args.append(f"--snapshot={snapshot}")
    args += ["--dbname", conninfo(conn)]
    return args


def pg_restore_args(conn: Connection, options: RestoreOptions, input_path: str | None) -> list[str]:
    """pg_restore into `conn.dbname`; reads stdin when `input_path` is None."""
    if options.format not in ("custom", "directory"):
        raise ConfigError(f"pg_restore cannot read the {options.format} format")
    args = ["pg_restore", "--no-password", "--exit-on-error", f"--format={options.format}"]
    if options.single_transaction:
        if options.jobs > 1:
            raise ConfigError("a parallel restore cannot run in a single transaction")
        args.append("--single-transaction")
    if options.jobs > 1:
        args.append(f"--jobs={options.jobs}")
    if options.clean:
        args += ["--clean", "--if-exists"]
    if options.no_owner:
        args.append("--no-owner")
    args += list(options.extra)
    args += ["--dbname", conninfo(conn)]
    if input_path is not None:
        args.append(input_path)
    return args


def pg_restore_script_args(options: RestoreOptions, input_path: str | None) -> list[str]:
    """pg_restore writing the SQL script to stdout (for psql to run in one transaction)."""
    if options.format not in ("custom", "directory"):
        raise ConfigError(f"pg_restore cannot read the {options.format} format")
    args = ["pg_restore", "--exit-on-error", f"--format={options.format}", "--file=-"]
    if options.clean:
        args += ["--clean", "--if-exists"]
    if options.no_owner:
        args.append("--no-owner")
    args += list(options.extra)
    if input_path is not None:
        args.append(input_path)
    return args


def psql_restore_args(conn: Connection) -> list[str]:
    """psql running a plain SQL dump from stdin in one transaction, stopping at the first
    error (which rolls everything back)."""
    return [
        "psql",
        "--no-psqlrc",
        "--quiet",
        "--no-password",
        "--set=ON_ERROR_STOP=1",
        "--single-transaction",
        "--dbname",
        conninfo(conn),
        "--file=-",
    ]


# `--clean` for a full plain dump, run first in the restore's own transaction: drop what
# the dump will recreate. Extensions in user schemas and every user schema but `public` go
# whole; `public` itself stays (its OID, owner, privileges and comment are not in a dump
# unless changed) and is emptied of relations, routines and types.
CLEAN_PLAIN_PREAMBLE: Final = r"""
DO $tsb_clean$
DECLARE
  item text;
BEGIN
  FOR item IN
    SELECT format('DROP EXTENSION IF EXISTS %I CASCADE', e.extname)
      FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
  LOOP EXECUTE item; END LOOP;
  FOR item IN
    SELECT format('DROP SCHEMA IF EXISTS %I CASCADE', nspname) FROM pg_namespace
     WHERE nspname NOT IN ('public', 'pg_catalog', 'information_schema', 'pg_toast')
       AND nspname NOT LIKE 'pg\_temp\_%' AND nspname NOT LIKE 'pg\_toast\_temp\_%'
  LOOP EXECUTE item; END LOOP;
  FOR item IN
    SELECT format('DROP %s IF EXISTS public.%I CASCADE',
                  CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                                 WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE'
                                 ELSE 'TABLE' END, c.relname)
      FROM pg_class c
     WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
       AND NOT c.relispartition
       AND NOT EXISTS (SELECT 1 FROM pg_depend d  -- serial/identity sequences go with their table
                        WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                          AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i'))
     ORDER BY c.relkind = 'S'
  LOOP EXECUTE item; END LOOP;
  FOR item IN
    SELECT format('DROP %s IF EXISTS public.%I(%s) CASCADE',
                  CASE p.prokind WHEN 'a' THEN 'AGGREGATE' ELSE 'ROUTINE' END,
                  p.proname, pg_get_function_identity_arguments(p.oid))
      FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
     ORDER BY p.prokind <> 'a'
  LOOP EXECUTE item; END LOOP;
  FOR item IN
    SELECT format('DROP %s IF EXISTS public.%I CASCADE',
                  CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, t.typname)
      FROM pg_type t
     WHERE t.typnamespace = 'public'::regnamespace AND t.typtype IN ('d', 'e', 'r', 'c')
       AND (t.typtype <> 'c' OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
  LOOP EXECUTE item; END LOOP;
END
$tsb_clean$;
"""


# `pg_dump: error: ...`, `pg_restore: error: ...`, and psql's `psql:<stdin>:14: ERROR:  ...`
# (a plain restore's failing statement; the lines after it are only its context).
_ERROR_LINE = re.compile(
    r"^(?:pg_dump|pg_restore|psql)(?::[^:\s]*)*: (?:error|ERROR|FATAL): +(.*)$")


def summarize_stderr(tool: str, lines: Sequence[str]) -> str:
    """One line for a failed pg tool: its first `error:` line, else its last line."""
    errors = [m.group(1) for line in lines if (m := _ERROR_LINE.match(line.strip()))]
    detail = errors[0] if errors else next((ln.strip() for ln in reversed(lines) if ln.strip()), "")
    detail = re.sub(r"\s+", " ", detail)
    hint = classify(detail)
    message = f"{tool} failed: {detail}" if detail else f"{tool} failed"
    return f"{message} ({hint})" if hint else message


def classify(detail: str) -> str | None:
    """A hint for the common causes, or None."""
    text = detail.lower()
    if "password authentication failed" in text or "no password supplied" in text:
        return "check the database password Secret"
    if "connection refused" in text or "could not translate host name" in text:
        return "the database server is unreachable"
    if "timeout expired" in text:
        return "the database server did not answer in time"
    if "does not exist" in text and "database" in text:
        return "the database does not exist"
    if "server version mismatch" in text or "aborting because of server version" in text:
        return "pg_dump is older than the server; use an image with a newer PostgreSQL client"
    if "permission denied" in text:
        return "the database user lacks a privilege"
    return None


def parse_version(output: str) -> str:
    """`pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` -> `15.18`."""
    match = re.search(r"\b(\d+(?:\.\d+)*)", output.split(")", 1)[-1])
    return match.group(1) if match else output.strip()


# --- which tables a dump holds rows of (for the same-snapshot row counts) ----------------


@dataclass(frozen=True)
class NamePattern:
    """One `--table` pattern as pg_dump reads it: POSIX regexes anchored like pg_dump's
    (`^(...)$`) for the schema (None: any schema *visible* on the search path) and the name."""

    schema: str | None
    name: str


def name_pattern(pattern: str) -> NamePattern:
    """pg_dump's (psql's) `processSQLNamePattern`, ported so the agent counts the tables the
    dump holds: outside double quotes letters fold to lower case, `*` is `.*`, `?` is `.`,
    `.` separates schema and name (a third part is the database: ignored, as pg_dump only
    checks it names the current one); inside quotes every character is literal and `""` is
    a quote. `$` is always literal. Other regex characters outside quotes pass through, as
    in pg_dump, so a knowledgeable user's regex means the same in both places."""
    parts: list[str] = [""]
    in_quotes = False
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == '"':
            if in_quotes and pattern[i + 1:i + 2] == '"':
                parts[-1] += '"'
                i += 2
                continue
            in_quotes = not in_quotes
        elif not in_quotes and "A" <= ch <= "Z":
            parts[-1] += ch.lower()
        elif not in_quotes and ch == "*":
            parts[-1] += ".*"
        elif not in_quotes and ch == "?":
            parts[-1] += "."
        elif not in_quotes and ch == ".":
            parts.append("")
        elif ch == "$":
            parts[-1] += "\\$"
        else:
            special = in_quotes and ch in "|*+?()[]{}.^\\"
            if special or (ch == "[" and pattern[i + 1:i + 2] == "]"):
                parts[-1] += "\\"
            parts[-1] += ch
        i += 1
    if len(parts) > 3:
        raise ConfigError(f"improper qualified name (too many dotted names): {pattern}")
    name = f"^({parts[-1]})$"
    schema = f"^({parts[-2]})$" if len(parts) >= 2 else None
    return NamePattern(schema, name)


# Tables whose rows pg_dump writes: ordinary tables (partitions included; a partitioned
# parent holds no rows itself), outside the system schemas, not members of an extension
# (pg_dump dumps only the extension's CREATE EXTENSION), unlogged ones not on a standby
# (pg_dump skips their data there, as they cannot be read during recovery). Foreign tables
# are not counted: pg_dump does not dump their data unless asked (--include-foreign-data).
_DUMPED_TABLES = """
SELECT n.nspname, c.relname
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r'
   AND n.nspname <> 'information_schema'
   AND n.nspname !~ '^pg_'
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                    WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                      AND d.objid = c.oid AND d.deptype = 'e')
   AND (c.relpersistence <> 'u' OR NOT pg_catalog.pg_is_in_recovery())
"""


def _pattern_sql(patterns: Sequence[str], params: list[str]) -> str:
    terms = []
    for raw in patterns:
        p = name_pattern(raw)
        if p.schema is None:
            terms.append("(c.relname ~ %s AND pg_catalog.pg_table_is_visible(c.oid))")
            params.append(p.name)
        else:
            terms.append("(n.nspname ~ %s AND c.relname ~ %s)")
            params += [p.schema, p.name]
    return " OR ".join(terms)


def dumped_tables_query(options: DumpOptions) -> tuple[str, list[str]]:
    """The query (with its parameters; patterns only ever travel as parameters) listing the
    (schema, table) pairs whose rows a pg_dump with these options writes."""
    params: list[str] = []
    query = _DUMPED_TABLES
    if options.tables:
        query += f"   AND ({_pattern_sql(options.tables, params)})\n"
    if options.exclude_tables:
        query += f"   AND NOT ({_pattern_sql(options.exclude_tables, params)})\n"
    return query + " ORDER BY 1, 2", params
