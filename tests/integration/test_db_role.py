"""The agent as production runs it: connected as the application's owner role.

Production connects as ``timesheet``, a LOGIN role without SUPERUSER, CREATEDB or
CREATEROLE that owns the database (the guide's ``CREATE DATABASE timesheet_db OWNER
timesheet``) and everything in it. Every test here runs the real agent as that role; the
superuser only creates roles and databases and looks at the result.

- a backup and an in-place ``--clean`` restore of a database with an extension (pgcrypto,
  trusted since PostgreSQL 13, so the owner creates it), comments on tables, columns, a
  sequence, a function, a trigger, a materialized view and the extension, sequences with
  unusual settings and values, a materialized view and a plpgsql trigger: contents,
  sequences, catalog, owners, privileges and extensions are the same afterwards;
- a table owned by a role the owner cannot read: the backup fails, naming the table and
  the missing privilege;
- ``--create-database --create-owner`` (the Restore's ``database.owner``): the new
  database belongs to the given role; PostgreSQL's rules (CREATEDB, membership in the
  owner role) give understandable errors.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from psycopg import sql

from tests.support import dbsnapshot
from tests.support.agent import (
    DB_USER,
    AgentRun,
    agent_env,
    assert_failed_cleanly,
    backup,
    backup_args,
    db_args,
    db_snapshot,
    manifest_key,
    restore_args,
    run_agent,
)
from tests.support.dbsnapshot import APP_ROLE, REPORTING_ROLE
from tests.support.pgserver import PostgresServer
from tests.support.s3server import S3Server

# Everything below runs as the owner role (SET-up by the superuser: only the database).
RICH_SCHEMA = r"""
CREATE EXTENSION pgcrypto WITH SCHEMA public;
COMMENT ON EXTENSION pgcrypto IS 'digest() and crypt() for the invoices';

CREATE SEQUENCE public.invoice_number AS bigint
    INCREMENT BY 7 MINVALUE 1000 MAXVALUE 9999999 START WITH 1000 CACHE 1 CYCLE;
CREATE SEQUENCE public.countdown AS integer INCREMENT BY -3 MINVALUE -100 MAXVALUE 100
    START WITH 100;
CREATE SEQUENCE public.not_yet_used START WITH 42;
COMMENT ON SEQUENCE public.invoice_number IS 'Invoice numbers: steps of 7, wraps around';

CREATE TABLE public.invoices (
    id          bigint GENERATED ALWAYS AS IDENTITY (START WITH 500 INCREMENT BY 10)
                PRIMARY KEY,
    number      bigint NOT NULL DEFAULT nextval('public.invoice_number'),
    customer    text NOT NULL,
    body        text NOT NULL,
    body_sha256 bytea GENERATED ALWAYS AS (public.digest(body, 'sha256')) STORED,
    secret      text NOT NULL DEFAULT public.crypt('changeme', public.gen_salt('bf', 4)),
    total       numeric(12, 2) NOT NULL,
    revision    integer NOT NULL DEFAULT 1,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
ALTER SEQUENCE public.invoice_number OWNED BY public.invoices.number;
COMMENT ON TABLE public.invoices IS 'Invoices sent to customers';
COMMENT ON COLUMN public.invoices.body_sha256 IS 'pgcrypto digest of the body';
COMMENT ON COLUMN public.invoices.number IS 'From invoice_number';

CREATE FUNCTION public.invoices_bump_revision() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    NEW.revision := OLD.revision + 1;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION public.invoices_bump_revision() IS 'BEFORE UPDATE: count revisions';
CREATE TRIGGER invoices_revision BEFORE UPDATE ON public.invoices
    FOR EACH ROW EXECUTE FUNCTION public.invoices_bump_revision();
COMMENT ON TRIGGER invoices_revision ON public.invoices IS 'Keeps revision and updated_at';

INSERT INTO public.invoices (customer, body, total)
SELECT 'customer ' || g, repeat('line ' || g || E'\n', g % 20 + 1), g * 12.5
  FROM generate_series(1, 300) g;
UPDATE public.invoices SET total = total + 1 WHERE id % 3 = 0;   -- the trigger: revision 2

CREATE MATERIALIZED VIEW public.revenue_by_revision AS
    SELECT revision, count(*) AS invoices, sum(total) AS total
      FROM public.invoices GROUP BY revision;
CREATE UNIQUE INDEX revenue_by_revision_key ON public.revenue_by_revision (revision);
COMMENT ON MATERIALIZED VIEW public.revenue_by_revision IS 'Totals per revision';

SELECT setval('public.invoice_number', 9999990, true);             -- the next one wraps
SELECT setval(pg_get_serial_sequence('public.invoices', 'id'), 100000, true);
SELECT nextval('public.countdown'), nextval('public.countdown');  -- 100, then 97
"""


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def rich_db(pg: PostgresServer) -> Iterator[str]:
    """A database OWNER timesheet whose objects the owner role created itself."""
    name = _unique("ts_rich")
    pg.create_database(name, owner=APP_ROLE)
    try:
        with pg.connection(name, user=APP_ROLE) as conn, conn.transaction():
            conn.execute(RICH_SCHEMA)  # type: ignore[arg-type]
        yield name
    finally:
        if not pg.running:
            pg.start()
        pg.drop_database(name)


@pytest.fixture
def make_role(pg: PostgresServer) -> Iterator[Callable[..., str]]:
    """``make(prefix, member=False)``: a NOLOGIN role, dropped afterwards (with the
    databases it owns); with ``member`` the owner role is made a member of it."""
    made: list[str] = []

    def make(prefix: str, member: bool = False) -> str:
        name = pg.create_role(_unique(prefix), login=False)
        made.append(name)
        if member:
            pg.execute(
                sql.SQL("GRANT {} TO {}").format(sql.Identifier(name), sql.Identifier(APP_ROLE))
            )
        return name

    yield make
    for name in made:
        for (db,) in pg.execute(
            "SELECT datname FROM pg_database WHERE datdba = (SELECT oid FROM pg_roles "
            "WHERE rolname = %s)",
            (name,),
        ):
            pg.drop_database(db)
        pg.drop_role(name)


def restore(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    db: str,
    tmp_path: Path,
    extra: tuple[str, ...] = (),
) -> AgentRun:
    return run_agent(
        restore_args(pg, s3, bucket, manifest_key(), db, None, extra=extra),
        agent_env(tmp_path, pg, s3),
        tmp_path,
    )


def database_owner(pg: PostgresServer, name: str) -> str:
    rows = pg.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (name,))
    assert rows, f"database {name} does not exist"
    return str(rows[0][0])


# --- the role itself --------------------------------------------------------------------


def test_the_agent_connects_as_a_plain_owner_role(pg: PostgresServer, sample_db: str) -> None:
    """The premise of the whole integration tier: the role the agent is given is no
    superuser, cannot create databases or roles, and owns the sample database and what is
    in it (the reporting objects belong to a role it is a member of)."""
    assert DB_USER == APP_ROLE
    assert db_args(pg)[db_args(pg).index("--db-user") + 1] == APP_ROLE
    row = pg.execute(
        "SELECT rolsuper, rolcreatedb, rolcreaterole, rolcanlogin, rolinherit, rolbypassrls "
        "FROM pg_roles WHERE rolname = %s",
        (APP_ROLE,),
    )
    assert row == [(False, False, False, True, True, False)]
    assert database_owner(pg, sample_db) == APP_ROLE
    owners = set(db_snapshot(pg, sample_db)["owners"].values())
    # public is owned by pg_database_owner (PostgreSQL 15+), i.e. by the database's owner
    assert owners <= {APP_ROLE, REPORTING_ROLE, "pg_database_owner"}, owners
    members = pg.execute("SELECT pg_has_role(%s, %s, 'USAGE')", (APP_ROLE, REPORTING_ROLE))
    assert members == [(True,)]


# --- backup and in-place restore as the owner -------------------------------------------


def vandalize(pg: PostgresServer, db: str) -> None:
    """As the owner: what a bad deploy does to every kind of object in ``rich_db``."""
    with pg.connection(db, user=APP_ROLE) as conn:
        conn.execute("UPDATE public.invoices SET customer = 'oops' WHERE id % 2 = 0")
        conn.execute("DELETE FROM public.invoices WHERE id % 7 = 0")
        conn.execute("DROP MATERIALIZED VIEW public.revenue_by_revision")
        conn.execute("DROP TRIGGER invoices_revision ON public.invoices")
        conn.execute("COMMENT ON EXTENSION pgcrypto IS NULL")
        conn.execute("COMMENT ON COLUMN public.invoices.number IS 'changed'")
        conn.execute("SELECT setval('public.invoice_number', 5000, false)")
        conn.execute("SELECT nextval('public.not_yet_used')")
        conn.execute("SELECT setval('public.countdown', -50)")


@pytest.mark.parametrize("fmt", ["custom", "plain", "directory"])
def test_owner_backs_up_and_restores_in_place_with_clean(
    pg: PostgresServer, s3: S3Server, bucket: str, rich_db: str, tmp_path: Path, fmt: str
) -> None:
    before = db_snapshot(pg, rich_db)
    # the premise: the database has what this test is about
    assert before["catalog"]["extensions"]["pgcrypto"]["schema"] == "public"
    comments = before["catalog"]["comments"]
    for obj in (
        "extension pgcrypto",
        "table public.invoices",
        "column body_sha256 of table public.invoices",
        "sequence public.invoice_number",
        "function public.invoices_bump_revision()",
        "trigger invoices_revision on table public.invoices",
        "materialized view public.revenue_by_revision",
    ):
        assert obj in comments, sorted(comments)
    assert before["sequences"]["public.invoice_number"] == {
        "last_value": 9999990,
        "is_called": True,
    }
    assert before["sequences"]["public.countdown"] == {"last_value": 97, "is_called": True}
    assert before["sequences"]["public.not_yet_used"] == {"last_value": 42, "is_called": False}
    assert before["catalog"]["relations"]["public.revenue_by_revision"]["populated"] is True
    assert set(before["owners"].values()) == {APP_ROLE, "pg_database_owner"}

    backup(pg, s3, bucket, rich_db, tmp_path, extra=("--db-format", fmt))
    vandalize(pg, rich_db)
    assert dbsnapshot.diff(before, db_snapshot(pg, rich_db))

    run = restore(pg, s3, bucket, rich_db, tmp_path, extra=("--clean",))
    assert run.returncode == 0, run.describe()
    after = db_snapshot(pg, rich_db)
    dbsnapshot.assert_same(before, after)  # data, sequences, catalog, owners, acl
    assert after["sequences"] == before["sequences"]
    assert after["catalog"]["extensions"] == before["catalog"]["extensions"]
    assert after["catalog"]["comments"]["extension pgcrypto"] == (
        "digest() and crypt() for the invoices"
    )
    assert after["owners"] == before["owners"]
    # the extension was dropped and created again by the owner role, which owns it again
    (extowner,) = pg.execute(
        "SELECT pg_get_userbyid(extowner) FROM pg_extension WHERE extname = 'pgcrypto'",
        dbname=rich_db,
    )
    assert extowner == (APP_ROLE,)
    with pg.connection(rich_db, user=APP_ROLE) as conn:  # and it works
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE body_sha256 = public.digest(body, 'sha256')), "
            "count(*) FROM public.invoices"
        ).fetchone()
    assert row is not None and row[0] == row[1] == 300


# --- what the owner may not read ---------------------------------------------------------


def test_table_the_owner_cannot_read_fails_the_backup_clearly(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    sample_db: str,
    make_role: Callable[..., str],
    tmp_path: Path,
) -> None:
    """A table that belongs to another role (the owner role is not a member of it and has
    no SELECT): pg_dump cannot read it, and the agent's error says which table and why."""
    payroll = make_role("timesheet_payroll")
    with pg.connection(sample_db) as conn:  # the superuser sets it up
        conn.execute("CREATE TABLE public.salaries (account_id int, amount numeric)")
        conn.execute("INSERT INTO public.salaries VALUES (1, 5000)")
        conn.execute(
            sql.SQL("ALTER TABLE public.salaries OWNER TO {}").format(sql.Identifier(payroll))
        )
    try:
        run = run_agent(
            backup_args(pg, s3, bucket, sample_db, None), agent_env(tmp_path, pg, s3), tmp_path
        )
        assert_failed_cleanly(run, s3, bucket)
        line = run.error_line
        assert run.returncode == 1, run.describe()
        assert run.termination is not None and run.termination["reason"] == "DatabaseError"
        assert "pg_dump failed" in line, line
        assert "permission denied for table salaries" in line, line
        assert "the database user lacks a privilege" in line, line
        assert "Traceback" not in run.stderr

        # what the error suggests works: leave the table out (or GRANT SELECT on it)
        ok = run_agent(
            backup_args(
                pg, s3, bucket, sample_db, None, extra=("--db-exclude-table", "public.salaries")
            ),
            agent_env(tmp_path, pg, s3),
            tmp_path,
        )
        assert ok.returncode == 0, ok.describe()
    finally:
        pg.execute("DROP TABLE public.salaries", dbname=sample_db)


# --- createDatabase with an owner ----------------------------------------------------------


@pytest.mark.parametrize("owner_kind", ["the-app-role", "a-role-it-is-member-of"])
def test_create_database_with_owner(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    sample_db: str,
    scratch_db_name: str,
    make_role: Callable[..., str],
    tmp_path: Path,
    owner_kind: str,
) -> None:
    """The Restore's `createDatabase` + `owner`, as the role timesheet (which has CREATEDB
    for this: scratch_db_name): the new database is the owner's, like the guide's `CREATE
    DATABASE timesheet_db OWNER timesheet`, with everything restored. Another owner is
    allowed when the connecting role is a member of it (PostgreSQL's rule); the name
    travels as an identifier, so quotes and spaces are just a name."""
    owner = APP_ROLE if owner_kind == "the-app-role" else make_role('ts "owner" role',
                                                                    member=True)
    before = db_snapshot(pg, sample_db)
    backup(pg, s3, bucket, sample_db, tmp_path)
    run = restore(pg, s3, bucket, scratch_db_name, tmp_path,
                  extra=("--create-database", "--create-owner", owner))
    assert run.returncode == 0, run.describe()
    assert run.termination is not None and run.termination["database"]["created"] is True
    assert database_owner(pg, scratch_db_name) == owner
    dbsnapshot.assert_same(before, db_snapshot(pg, scratch_db_name))


def test_create_database_for_an_owner_the_role_is_not_member_of_fails(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    sample_db: str,
    scratch_db_name: str,
    make_role: Callable[..., str],
    tmp_path: Path,
) -> None:
    stranger = make_role("ts_stranger")
    backup(pg, s3, bucket, sample_db, tmp_path)
    run = restore(
        pg,
        s3,
        bucket,
        scratch_db_name,
        tmp_path,
        extra=("--create-database", "--create-owner", stranger),
    )
    assert run.returncode == 1, run.describe()
    line = run.error_line
    assert f"cannot create database {scratch_db_name!r}" in line, line
    assert f"{APP_ROLE!r} must be a member of that role" in line, line
    assert not pg.database_exists(scratch_db_name)


def test_create_database_without_createdb_fails_clearly(
    pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str, tmp_path: Path
) -> None:
    """The documented set-up gives the owner role no CREATEDB: in-place restores work
    (the tests above), creating a database is refused with the reason."""
    name = _unique("ts_restore")
    backup(pg, s3, bucket, sample_db, tmp_path)
    try:
        run = restore(
            pg,
            s3,
            bucket,
            name,
            tmp_path,
            extra=("--create-database", "--create-owner", APP_ROLE),
        )
        assert run.returncode == 1, run.describe()
        line = run.error_line
        assert "permission denied to create database" in line, line
        assert f"the role {APP_ROLE!r} needs the CREATEDB attribute" in line, line
        assert not pg.database_exists(name)
    finally:
        pg.drop_database(name)
