"""Row counts taken in the dump's own snapshot (the manifest's `rowCounts`).

The agent exports a snapshot, runs pg_dump with `--snapshot` and counts every dumped table
in that same transaction. The proof is made deterministic with a lock: a session holds an
ACCESS EXCLUSIVE lock on one table while the agent starts, so both pg_dump and the counting
wait on it *after* the snapshot was taken; meanwhile rows are committed into other tables
(and into the locked one, by the lock's own transaction). The counts must be those of the
snapshot — equal to what the restored dump holds — and not the live database's. Everything
runs as the owner role, as production does.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from psycopg import sql

from tests.support.agent import (
    DB_USER,
    AgentRun,
    agent_env,
    backup,
    backup_args,
    manifest_key,
    read_manifest,
    restore_args,
    run_agent,
)
from tests.support.pgserver import PostgresServer
from tests.support.s3server import S3Server

pytestmark = pytest.mark.integration

ODD_SCHEMA = "We.ird"
ODD_TABLE = 'Odd "Name"'


def _prepare(pg: PostgresServer, db: str) -> None:
    with pg.connection(db, user=DB_USER) as conn:
        conn.execute("CREATE TABLE rc_locked (id serial PRIMARY KEY, v text)")
        conn.execute("CREATE TABLE rc_busy (id serial PRIMARY KEY, v text)")
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(ODD_SCHEMA)))
        conn.execute(sql.SQL("CREATE TABLE {}.{} (n int)").format(
            sql.Identifier(ODD_SCHEMA), sql.Identifier(ODD_TABLE)))
        conn.execute("INSERT INTO rc_locked (v) SELECT 'x' FROM generate_series(1, 30)")
        conn.execute("INSERT INTO rc_busy (v) SELECT 'y' FROM generate_series(1, 20)")
        conn.execute(sql.SQL("INSERT INTO {}.{} SELECT generate_series(1, 7)").format(
            sql.Identifier(ODD_SCHEMA), sql.Identifier(ODD_TABLE)))


def _counts(pg: PostgresServer, db: str, tables: list[str]) -> dict[str, int]:
    out = {}
    with pg.connection(db) as conn:
        for name in tables:
            # The manifest's keys are regclass-style names: regclass reads them back.
            oid = conn.execute("SELECT %s::regclass::oid", (name,)).fetchone()
            assert oid is not None
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                sql.SQL(name))).fetchone()
            assert row is not None
            out[name] = int(row[0])
    return out


def _wait_for_lock_waiters(pg: PostgresServer, db: str, table: str, waiters: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = pg.execute(
            "SELECT count(DISTINCT l.pid) FROM pg_locks l JOIN pg_database d "
            "ON d.oid = l.database WHERE NOT l.granted AND d.datname = %s "
            "AND l.relation = %s::regclass", (db, table), dbname=db)
        if rows and rows[0][0] >= waiters:
            return
        time.sleep(0.1)
    raise AssertionError(f"nobody waited for the lock on {table}")


def test_counts_are_those_of_the_dump_while_rows_are_written(
    pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str, scratch_db_name: str,
    tmp_path: Path,
) -> None:
    _prepare(pg, sample_db)
    run: list[AgentRun] = []
    with pg.connection(sample_db, user=DB_USER) as holder:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE rc_locked IN ACCESS EXCLUSIVE MODE")
        agent = threading.Thread(target=lambda: run.append(run_agent(
            backup_args(pg, s3, bucket, sample_db, None), agent_env(tmp_path, pg, s3),
            tmp_path)))
        agent.start()
        try:
            # pg_dump and the counting thread both wait for the lock: the snapshot is taken.
            _wait_for_lock_waiters(pg, sample_db, "rc_locked", 2)
            with pg.connection(sample_db, user=DB_USER) as writer:
                writer.execute("INSERT INTO rc_busy (v) SELECT 'z' FROM generate_series(1, 50)")
                writer.execute(sql.SQL("DELETE FROM {}.{} WHERE n <= 3").format(
                    sql.Identifier(ODD_SCHEMA), sql.Identifier(ODD_TABLE)))
            holder.execute("INSERT INTO rc_locked (v) SELECT 'w' FROM generate_series(1, 40)")
        finally:
            holder.execute("COMMIT")
            agent.join(timeout=300)
    assert run and run[0].returncode == 0, run[0].describe() if run else "agent hung"

    database = read_manifest(s3, bucket, manifest_key())["artifacts"][0]
    counts: dict[str, int] = database["rowCounts"]
    assert database["tableCount"] == len(counts)
    odd = '"We.ird"."Odd ""Name"""'
    assert counts["public.rc_locked"] == 30
    assert counts["public.rc_busy"] == 20
    assert counts[odd] == 7
    # The live database moved on ...
    live = _counts(pg, sample_db, ["public.rc_locked", "public.rc_busy", odd])
    assert live == {"public.rc_locked": 70, "public.rc_busy": 70, odd: 4}
    # ... and the dump holds exactly the counted rows, table by table.
    restored = run_agent(
        restore_args(pg, s3, bucket, manifest_key(), scratch_db_name, None,
                     extra=["--create-database"]),
        agent_env(tmp_path, pg, s3), tmp_path)
    assert restored.returncode == 0, restored.describe()
    assert _counts(pg, scratch_db_name, list(counts)) == counts
    # Every table of the restored database was counted (none missed, none invented).
    rows = pg.execute(
        "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname <> "
        "'information_schema' AND n.nspname !~ '^pg_'", dbname=scratch_db_name)
    names = {r[0] if "." in r[0] else f"public.{r[0]}" for r in rows}
    assert names == set(counts)


def test_counts_follow_the_table_selection(
    pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str, tmp_path: Path,
) -> None:
    _prepare(pg, sample_db)
    manifest = backup(pg, s3, bucket, sample_db, tmp_path, extra=(
        "--db-table", "RC_*", "--db-table", '"We.ird".*', "--db-exclude-table",
        "public.rc_busy"))
    counts = manifest["artifacts"][0]["rowCounts"]
    assert counts == {"public.rc_locked": 30, '"We.ird"."Odd ""Name"""': 7}


# --- restore tests compare with the counts ---------------------------------------------


def _restore(pg: PostgresServer, s3: S3Server, bucket: str, target: str, tmp_path: Path,
             *extra: str) -> AgentRun:
    return run_agent(
        restore_args(pg, s3, bucket, manifest_key(), target, None,
                     extra=["--create-database", "--compare-row-counts", *extra]),
        agent_env(tmp_path, pg, s3), tmp_path)


def test_a_restore_test_compares_every_table_with_the_backup(
    pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str, scratch_db_name: str,
    tmp_path: Path,
) -> None:
    _prepare(pg, sample_db)
    manifest = backup(pg, s3, bucket, sample_db, tmp_path)
    tables = manifest["artifacts"][0]["tableCount"]
    assert tables >= 3
    run = _restore(pg, s3, bucket, scratch_db_name, tmp_path, "--drop-database-after")
    assert run.returncode == 0, run.describe()
    assert run.termination is not None
    assert run.termination["database"]["rowCounts"] == (
        f"compared {tables} tables' row counts with the backup's: all equal")


def test_a_selective_restore_compares_only_what_it_restored(
    pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str, scratch_db_name: str,
    tmp_path: Path,
) -> None:
    _prepare(pg, sample_db)
    backup(pg, s3, bucket, sample_db, tmp_path)
    run = _restore(pg, s3, bucket, scratch_db_name, tmp_path, "--table", "rc_busy")
    assert run.returncode == 0, run.describe()
    assert run.termination is not None
    assert run.termination["database"]["rowCounts"] == (
        "compared 1 table's row counts with the backup's: all equal")


def test_a_count_that_differs_fails_the_restore_test_naming_the_table(
    pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str, scratch_db_name: str,
    tmp_path: Path,
) -> None:
    """The manifest is edited to say rc_busy had 21 rows (the dump holds 20): what a dump
    that lost rows, or a restore that did not load them all, looks like to the check."""
    _prepare(pg, sample_db)
    backup(pg, s3, bucket, sample_db, tmp_path)
    data = read_manifest(s3, bucket, manifest_key())
    data["artifacts"][0]["rowCounts"]["public.rc_busy"] = 21
    s3.put_bytes(bucket, manifest_key(), json.dumps(data).encode())
    run = _restore(pg, s3, bucket, scratch_db_name, tmp_path, "--drop-database-after")
    assert run.returncode != 0, run.describe()
    assert run.termination is not None
    assert run.termination["reason"] == "CheckFailed"
    assert run.termination["error"] == (
        "row counts differ from the backup's (1 of "
        f"{data['artifacts'][0]['tableCount']} tables): "
        "table public.rc_busy has 20 rows, the backup had 21")
    assert not pg.database_exists(scratch_db_name)  # the scratch database is dropped anyway


def test_a_backup_without_counts_is_restored_and_says_so(
    pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str, scratch_db_name: str,
    tmp_path: Path,
) -> None:
    """A manifest written before the agent counted rows (no rowCounts, no tableCount)."""
    backup(pg, s3, bucket, sample_db, tmp_path)
    data = read_manifest(s3, bucket, manifest_key())
    del data["artifacts"][0]["rowCounts"], data["artifacts"][0]["tableCount"]
    s3.put_bytes(bucket, manifest_key(), json.dumps(data).encode())
    run = _restore(pg, s3, bucket, scratch_db_name, tmp_path)
    assert run.returncode == 0, run.describe()
    assert run.termination is not None
    assert run.termination["database"]["rowCounts"] == (
        "the backup has no row counts to compare with")
