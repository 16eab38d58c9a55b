"""Roles for disaster recovery against real PostgreSQL (agent/postgres.py dump_roles and
restore_roles, agent/roles.py's plan):

- the application's non-superuser role dumps the roles and memberships (`pg_dumpall
  --roles-only --no-role-passwords`); asking for the passwords as that role fails, saying a
  superuser is needed;
- onto a FRESH server, as its superuser: the roles and memberships are recreated, the
  database is created owned by the app role (createDatabase + owner) and the app's dump
  restored with its owners kept; every table belongs to the app role and the rows are there;
- replaying the roles again alters instead of failing, and leaves the connecting superuser
  alone.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.support.dbsnapshot import APP_ROLE, READONLY_ROLE, REPORTING_ROLE
from tests.support.pgserver import PostgresServer
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
