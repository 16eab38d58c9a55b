"""Argument lists for the PostgreSQL tools and the reading of their errors."""

from __future__ import annotations

import pytest

from timesheet_backup.agent import pgtools
from timesheet_backup.agent.pgtools import Connection, DumpOptions, RestoreOptions
from timesheet_backup.errors import ConfigError

pytestmark = pytest.mark.unit

CONN = Connection(host="db.example", port=5433, user="timesheet", dbname="timesheet_db")


def test_conninfo_quotes_every_value() -> None:
    conn = Connection(host="h", user="o'brien", dbname="we ird\\name=1", sslmode="require")
    text = pgtools.conninfo(conn)
    assert "user='o\\'brien'" in text
    assert "dbname='we ird\\\\name=1'" in text
    assert "sslmode='require'" in text
    assert "password" not in text


def test_conninfo_round_trips_through_libpq_parsing() -> None:
    from psycopg.conninfo import conninfo_to_dict

    conn = Connection(host="h", user="o'brien", dbname="a b\\c'd=e", sslmode="disable")
    parsed = conninfo_to_dict(pgtools.conninfo(conn))
    assert parsed["user"] == "o'brien"
    assert parsed["dbname"] == "a b\\c'd=e"
    assert parsed["port"] == "5432"


def test_pg_dump_custom() -> None:
    args = pgtools.pg_dump_args(CONN, DumpOptions())
    assert args[:4] == ["pg_dump", "--no-password", "--format=custom", "--compress=0"]
    assert args[-2] == "--dbname" and "dbname='timesheet_db'" in args[-1]
    assert "--file" not in " ".join(args)


def test_pg_dump_plain_has_no_compress_flag() -> None:
    args = pgtools.pg_dump_args(CONN, DumpOptions(format="plain"))
    assert "--format=plain" in args and not any(a.startswith("--compress") for a in args)


def test_pg_dump_directory_with_jobs_tables_and_no_owner() -> None:
    options = DumpOptions(
        format="directory",
        jobs=4,
        tables=("public.t*", "-x"),
        exclude_tables=("audit",),
        no_owner=True,
    )
    args = pgtools.pg_dump_args(CONN, options, "/work/dump")
    assert "--jobs=4" in args and "--file=/work/dump" in args
    # patterns are glued to their option: a pattern starting with '-' is not an option
    assert "--table=public.t*" in args and "--table=-x" in args
    assert "--exclude-table=audit" in args and "--no-owner" in args


def test_pg_dump_directory_needs_a_directory() -> None:
    with pytest.raises(ConfigError):
        pgtools.pg_dump_args(CONN, DumpOptions(format="directory"))


@pytest.mark.parametrize(
    "options",
    [DumpOptions(format="tar"), DumpOptions(jobs=0), DumpOptions(format="custom", jobs=2)],
)
def test_dump_options_validation(options: DumpOptions) -> None:
    with pytest.raises(ConfigError):
        options.validate()


def test_connection_validation() -> None:
    CONN.validate()
    for bad in (
        Connection(host=""),
        Connection(host="h", port=0),
        Connection(host="h", user=""),
        Connection(host="h", dbname=""),
        Connection(host="h", sslmode="maybe"),
    ):
        with pytest.raises(ConfigError):
            bad.validate()


def test_pg_restore_single_transaction_from_stdin() -> None:
    args = pgtools.pg_restore_args(CONN, RestoreOptions("custom", clean=True, no_owner=True), None)
    assert "--single-transaction" in args and "--exit-on-error" in args
    assert "--clean" in args and "--if-exists" in args and "--no-owner" in args
    assert args[-2] == "--dbname"


def test_pg_restore_parallel_from_a_file() -> None:
    options = RestoreOptions("directory", jobs=3, single_transaction=False)
    args = pgtools.pg_restore_args(CONN, options, "/tmp/dump")
    assert "--jobs=3" in args and "--single-transaction" not in args
    assert args[-1] == "/tmp/dump"


def test_pg_restore_refuses_impossible_combinations() -> None:
    with pytest.raises(ConfigError):
        pgtools.pg_restore_args(CONN, RestoreOptions("custom", jobs=2), "/f")
    with pytest.raises(ConfigError):
        pgtools.pg_restore_args(CONN, RestoreOptions("plain"), None)


def test_psql_args() -> None:
    args = pgtools.psql_restore_args(CONN)
    assert "--single-transaction" in args and "--set=ON_ERROR_STOP=1" in args
    assert "--no-psqlrc" in args and args[-1] == "--file=-"


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (
            [
                'pg_dump: error: connection to server at "127.0.0.1", port 1 failed: '
                "Connection refused",
                "\tIs the server running on that host and accepting TCP/IP connections?",
            ],
            "the database server is unreachable",
        ),
        (
            [
                "pg_dump: error: connection to server failed: FATAL:  password authentication "
                'failed for user "x"'
            ],
            "check the database password Secret",
        ),
        (
            ["pg_restore: error: could not execute query: ERROR:  permission denied for schema x"],
            "lacks a privilege",
        ),
        (['psql:<stdin>:12: ERROR:  syntax error at or near "x"'], None),
    ],
)
def test_summarize_stderr(lines: list[str], expected: str | None) -> None:
    summary = pgtools.summarize_stderr("pg_dump", lines)
    assert summary.startswith("pg_dump failed: ")
    assert "\n" not in summary
    if expected:
        assert expected in summary


def test_summarize_empty_stderr() -> None:
    assert pgtools.summarize_stderr("psql", []) == "psql failed"


def test_parse_version() -> None:
    assert pgtools.parse_version("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n") == "15.18"
    assert pgtools.parse_version("pg_dump (PostgreSQL) 17beta1") == "17"


def test_psql_error_wins_over_its_context_lines() -> None:
    """A plain restore's failing statement, not the PL/pgSQL context psql prints after it."""
    lines = [
        "psql:<stdin>:14: ERROR:  must be owner of schema extra",
        "CONTEXT:  SQL statement \"DROP SCHEMA IF EXISTS extra CASCADE\"",
        "PL/pgSQL function inline_code_block line 14 at EXECUTE",
    ]
    summary = pgtools.summarize_stderr("psql", lines)
    assert summary.startswith("psql failed: must be owner of schema extra"), summary


def test_pg_dump_uses_the_exported_snapshot() -> None:
    args = pgtools.pg_dump_args(CONN, DumpOptions(), snapshot="00000003-0000001B-1")
    assert "--snapshot=00000003-0000001B-1" in args
    assert not any(a.startswith("--snapshot") for a in pgtools.pg_dump_args(CONN, DumpOptions()))


@pytest.mark.parametrize(
    ("pattern", "schema", "name"),
    [
        ("timesheets", None, "^(timesheets)$"),
        ("public.timesheets", "^(public)$", "^(timesheets)$"),
        ("Public.TimeSheets", "^(public)$", "^(timesheets)$"),  # folded like SQL names
        ('"Public"."TimeSheets"', "^(Public)$", "^(TimeSheets)$"),  # quoted: kept
        ("app.time*", "^(app)$", "^(time.*)$"),
        ("app.t?", "^(app)$", "^(t.)$"),
        ("*.audit_log", "^(.*)$", "^(audit_log)$"),
        ('"a.b".c', "^(a\\.b)$", "^(c)$"),  # a quoted dot is part of the name
        ('"we""ird"', None, '^(we"ird)$'),
        ('"x*"', None, "^(x\\*)$"),  # quoted: regex characters are literal
        ("pay$", None, "^(pay\\$)$"),
        ("db.app.t", "^(app)$", "^(t)$"),  # database.schema.name
        ("t[]", None, "^(t\\[])$"),
    ],
)
def test_name_pattern_follows_pg_dump(pattern: str, schema: str | None, name: str) -> None:
    assert pgtools.name_pattern(pattern) == pgtools.NamePattern(schema, name)


def test_name_pattern_refuses_four_parts() -> None:
    with pytest.raises(ConfigError, match="too many dotted names"):
        pgtools.name_pattern("a.b.c.d")


def test_dumped_tables_query_passes_patterns_as_parameters() -> None:
    query, params = pgtools.dumped_tables_query(
        DumpOptions(tables=("app.*", "t1"), exclude_tables=("app.audit'; DROP",)))
    assert params == ["^(app)$", "^(.*)$", "^(t1)$", "^(app)$", "^(audit'; drop)$"]
    assert "DROP" not in query and "audit" not in query
    assert query.count("%s") == len(params)
    assert "AND NOT (" in query and "pg_table_is_visible" in query


def test_dumped_tables_query_without_selection_has_no_parameters() -> None:
    query, params = pgtools.dumped_tables_query(DumpOptions())
    assert params == [] and "%s" not in query
