"""Roles for disaster recovery against real PostgreSQL (agent/postgres.py dump_roles and
restore_roles, agent/roles.py's plan):

- the application's non-superuser role dumps the roles and memberships (`pg_dumpall
  --roles-only --no-role-passwords`); asking for the passwords as that role fails, saying a
  superuser is needed;
- onto a FRESH server, as its superuser: the roles and memberships are recreated, the
  database is created owned by the app role (createDatabase + owner) and the app's dump
  restored with its owners kept; every table belongs to the app role and the rows are there;
- replaying the roles again alters instead of failing, and leaves the connecting superuser
  alone;
- the agent end to end (`agent backup --db-globals` as the app role, encrypted, into a real
  S3 server; `agent restore --globals --create-database --create-owner` as a fresh server's
  superuser): the roles object is in the manifest and verified, the roles come back before
  the database, and the restored tables belong to the app role;
- asking for the password hashes as the app role fails before any object is written, and a
  restore with --globals of a backup taken without them says so and changes nothing.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent import (
    agent_env,
    assert_failed_cleanly,
    backup,
    backup_args,
    db_args,
    manifest_key,
    new_identity,
    run_agent,
    s3_args,
)
from tests.support.dbsnapshot import APP_ROLE, READONLY_ROLE, REPORTING_ROLE
from tests.support.pgserver import PostgresServer
from tests.support.s3server import S3Server
from timesheet_backup.agent import postgres
from timesheet_backup.agent.pgtools import Connection
from timesheet_backup.errors import DatabaseError

pytestmark = pytest.mark.integration


@pytest.fixture
def fresh_pg() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def as_role(pg: PostgresServer, user: str, dbname: str = "postgres") -> Connection:
    return Connection(host=pg.host, port=pg.port, user=user, dbname=dbname)


def test_app_role_dumps_roles_and_a_fresh_server_gets_them_back(
    pg: PostgresServer, fresh_pg: PostgresServer, sample_db: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert not pg.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (APP_ROLE,))[0][0]
    monkeypatch.setenv("PGPASSWORD", pg.role_passwords[APP_ROLE])
    script = postgres.dump_roles(as_role(pg, APP_ROLE, sample_db))
    assert f"CREATE ROLE {APP_ROLE};" in script
    assert "PASSWORD" not in script

    with pytest.raises(DatabaseError, match="superuser"):
        postgres.dump_roles(as_role(pg, APP_ROLE, sample_db), with_passwords=True)

    monkeypatch.setenv("PGPASSWORD", fresh_pg.password)
    target = as_role(fresh_pg, fresh_pg.user)
    plan = postgres.restore_roles(target, script)
    assert {APP_ROLE, REPORTING_ROLE, READONLY_ROLE} <= set(plan.created)
    assert plan.skipped.get(fresh_pg.user) == "the role the restore connects as"
    rows = fresh_pg.execute(
        "SELECT r.rolname, r.rolsuper, r.rolcanlogin FROM pg_roles r WHERE r.rolname = ANY(%s)",
        ([APP_ROLE, REPORTING_ROLE],))
    assert sorted(rows) == [(APP_ROLE, False, True), (REPORTING_ROLE, False, False)]
    assert fresh_pg.execute(
        "SELECT pg_has_role(%s, %s, 'MEMBER')", (APP_ROLE, REPORTING_ROLE))[0][0]
    # The superuser the restore connected as is still one (nothing altered it).
    assert fresh_pg.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s",
                            (fresh_pg.user,))[0][0]

    again = postgres.restore_roles(target, script)
    assert again.created == [] and APP_ROLE in again.altered

    # createDatabase with owner, then the app's dump with its owners kept.
    postgres.create_database(as_role(fresh_pg, fresh_pg.user, "timesheet_db"), "postgres",
                             owner=APP_ROLE)
    dump = subprocess.run(["pg_dump", "--format=custom", "--dbname", pg.dsn(sample_db,
                                                                           user=APP_ROLE)],
                          capture_output=True, check=True).stdout
    subprocess.run(["pg_restore", "--exit-on-error", "--dbname",
                    fresh_pg.dsn("timesheet_db")], input=dump, check=True, capture_output=True)
    assert fresh_pg.execute(
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'timesheet_db'"
    ) == [(APP_ROLE,)]
    owners = fresh_pg.execute(
        "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'",
        dbname="timesheet_db")
    assert owners == [(APP_ROLE,)]
    tables = pg.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
                        dbname=sample_db)
    assert fresh_pg.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
                            dbname="timesheet_db") == tables


def restore_as_superuser(target: PostgresServer, s3: S3Server, bucket: str, key: str,
                         *extra: str) -> list[str]:
    return ["agent", "restore", "--manifest-key", key, "--component", "database",
            *db_args(target, "--target-db-name", "timesheet_db", db_user=target.user),
            *s3_args(s3, bucket), *extra]


def test_the_agent_backs_up_the_roles_and_a_fresh_server_gets_the_app_back(
    pg: PostgresServer, fresh_pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str,
    tmp_path: Path,
) -> None:
    public, identity, _ = new_identity(tmp_path)
    manifest = backup(pg, s3, bucket, sample_db, tmp_path,
                      extra=("--db-globals", "--age-recipient", public))
    database = manifest["artifacts"][0]
    roles = database["roles"]
    assert roles["key"] == "backups/prod/nightly/roles.sql.zst.age"
    assert roles["passwords"] is False and "checksum-sha256" in roles["verified"]
    assert roles["key"] in s3.list_keys(bucket)

    run = run_agent(
        restore_as_superuser(fresh_pg, s3, bucket, manifest_key(), "--globals",
                             "--create-database", f"--create-owner={APP_ROLE}",
                             "--compare-row-counts"),
        agent_env(tmp_path, fresh_pg, s3, {"TSB_AGE_IDENTITY": identity},
                  db_user=fresh_pg.user), tmp_path)
    assert run.returncode == 0, run.describe()
    summary = run.result["database"]
    assert summary["created"] is True
    assert summary["roles"].startswith("roles: ") and APP_ROLE in summary["roles"], summary
    assert "all equal" in summary["rowCounts"]
    assert fresh_pg.execute(
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'timesheet_db'"
    ) == [(APP_ROLE,)]
    assert fresh_pg.execute(
        "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'",
        dbname="timesheet_db") == [(APP_ROLE,)]
    assert fresh_pg.execute(
        "SELECT pg_has_role(%s, %s, 'MEMBER')", (APP_ROLE, REPORTING_ROLE))[0][0]


def test_password_hashes_need_a_superuser_and_roles_need_a_backup_that_has_them(
    pg: PostgresServer, fresh_pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str,
    tmp_path: Path,
) -> None:
    run = run_agent(backup_args(pg, s3, bucket, sample_db, None,
                                extra=("--db-globals", "--db-globals-passwords")),
                    agent_env(tmp_path, pg, s3), tmp_path)
    assert_failed_cleanly(run, s3, bucket)
    assert "only a superuser may read" in run.error_line, run.describe()

    backup(pg, s3, bucket, sample_db, tmp_path)  # without --db-globals
    roles_before = fresh_pg.execute("SELECT count(*) FROM pg_roles")
    run = run_agent(
        restore_as_superuser(fresh_pg, s3, bucket, manifest_key(), "--globals",
                             "--create-database"),
        agent_env(tmp_path, fresh_pg, s3, db_user=fresh_pg.user), tmp_path)
    assert run.returncode != 0 and "backup has no roles to restore" in run.error_line, \
        run.describe()
    assert fresh_pg.execute("SELECT count(*) FROM pg_roles") == roles_before
    assert fresh_pg.execute(
        "SELECT count(*) FROM pg_database WHERE datname = 'timesheet_db'") == [(0,)]

    # A roles object that is not the one the manifest describes is never replayed.
    manifest = backup(pg, s3, bucket, sample_db, tmp_path, name="with-roles",
                      extra=("--db-globals", "--compression", "none"))
    roles_key = manifest["artifacts"][0]["roles"]["key"]
    forged = b"CREATE ROLE intruder SUPERUSER LOGIN;\n"
    s3.client().put_object(Bucket=bucket, Key=roles_key, Body=forged)
    run = run_agent(
        restore_as_superuser(fresh_pg, s3, bucket, manifest_key("with-roles"), "--globals",
                             "--create-database"),
        agent_env(tmp_path, fresh_pg, s3, db_user=fresh_pg.user), tmp_path)
    assert run.returncode != 0 and "does not match its manifest" in run.error_line, \
        run.describe()
    assert fresh_pg.execute("SELECT count(*) FROM pg_roles") == roles_before
