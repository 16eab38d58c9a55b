"""`kubectl timesheet-backup`, the kubectl plugin, driven as a user would: the console script
the package installs, with the test cluster's kubeconfig, against the operator installed by
its chart. A Backup as a run of a schedule, the list, the schedules' status, one table of
the latest Backup into a side database, the agent's log; and kubectl finds the plugin on
PATH and runs it. Disaster recovery onto a fresh server that has none of the app's roles:
the latest backup of a schedule taken with database.globals, restored as that server's
superuser, brings the roles back before the database it creates for the app's role."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import Cluster, wait_for
from tests.support.dbsnapshot import (
    APP_ROLE,
    READONLY_ROLE,
    REPORTING_ROLE,
    assert_same,
    count_rows,
    snapshot,
    user_tables,
)
from tests.support.operator import (
    NEW_SERVER_SECRET,
    NEW_SERVER_SERVICE,
    App,
    new_server,
    run_tool,
    tool_env,
)
from tests.support.pgserver import PostgresServer

pytestmark = pytest.mark.e2e

# The console script pip installs next to the interpreter running the tests (make venv).
PLUGIN = Path(sys.executable).parent / "kubectl-timesheet_backup"


def plugin(app: App, *argv: str, check: bool = True,
           timeout: float = 300) -> subprocess.CompletedProcess[str]:
    if not PLUGIN.is_file():
        pytest.fail(f"{PLUGIN} is missing: `make venv` installs the package's console "
                    "scripts", pytrace=False)
    return run_tool(app.cluster, str(PLUGIN), *argv, "--kubeconfig",
                    str(app.cluster.kubeconfig), "-n", app.namespace, check=check,
                    timeout=timeout)


def row(output: str, first: str) -> list[str]:
    """The table row whose first column is `first`, split on kubectl's column gaps."""
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.split("   ") if cell.strip()]
        if cells and cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in:\n{output}")


def test_the_plugin_backs_up_lists_restores_and_shows_logs(app: App) -> None:
    app.create("backupschedules", "nightly", {
        "schedule": "0 2 * * *",
        "template": {"spec": {"components": ["database"], "database": app.database_spec(),
                              "storage": app.storage()}}})

    # backup now --from-schedule: created like a run of the schedule, followed to the end.
    made = plugin(app, "backup", "now", "--from-schedule", "nightly", "--wait",
                  "--timeout", "240")
    first, *_, last = made.stdout.splitlines()
    assert first.startswith("backup/nightly-manual-") and first.endswith(" created"), \
        made.stdout
    name = first.split()[0].split("/", 1)[1]
    assert last.startswith(f"backup/{name} Succeeded"), made.stdout
    backup: dict[str, Any] = app.get("backups", name)
    assert backup["metadata"]["labels"]["backup.northstar.io/schedule"] == "nightly"
    assert backup["status"]["phase"] == "Succeeded"

    listed = plugin(app, "list").stdout
    assert listed.splitlines()[0].split() == ["NAME", "SCHEDULE", "PHASE", "SIZE", "AGE",
                                              "VERIFIED", "COMPONENTS"]
    cells = row(listed, name)
    assert cells[1:3] == ["nightly", "Succeeded"]
    assert cells[3][0].isdigit() and cells[-2:] == ["-", "database"], listed

    # status: the schedule with its last success (written by the schedule's next tick).
    def schedule_row() -> list[str] | None:
        cells = row(plugin(app, "status").stdout, "nightly")
        return cells if cells[3].endswith(" ago") else None

    cells = wait_for(schedule_row, 60, interval=2, message="no last success in `status`")
    assert cells[1:3] == ["0 2 * * *", "False"] and cells[4].startswith("in "), cells

    # restore latest: one table into a side database while production stays up.
    rows = count_rows_of(app, app.database, "public.notifications")
    side = f"{app.database}_plugin"
    restored = plugin(app, "restore", "latest", "--schedule", "nightly", "--table",
                      "notifications", "--into", side, "--wait", "--timeout", "280")
    lines = restored.stdout.splitlines()
    assert lines[0].startswith("restore/nightly-latest-") and lines[0].endswith(" created")
    assert lines[-1].startswith("restore/") and " Succeeded" in lines[-1]
    assert lines[-1].endswith(f"(from {name})"), restored.stdout
    with app.connect(side) as conn:
        assert user_tables(conn) == ["public.notifications"]
    assert count_rows_of(app, side, "public.notifications") == rows

    # logs: the agent's own output, summary included.
    logs = plugin(app, "logs", "backup", name).stdout
    assert backup["status"]["artifacts"][0]["sha256"] in logs, logs[-2000:]

    # A Backup that does not exist: one line, exit 1.
    missing = plugin(app, "logs", "backup", "nope", check=False)
    assert missing.returncode == 1 and len(missing.stderr.splitlines()) == 1, missing.stderr

    # kubectl finds the plugin on PATH and runs it for `kubectl timesheet-backup`.
    env = tool_env(app.cluster)
    env["PATH"] = f"{PLUGIN.parent}{os.pathsep}{env['PATH']}"
    found = subprocess.run(["kubectl", "plugin", "list"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert str(PLUGIN) in found.stdout, found.stdout + found.stderr
    via = subprocess.run(["kubectl", "timesheet-backup", "status", "-n", app.namespace],
                         env=env, capture_output=True, text=True, timeout=60)
    assert via.returncode == 0, via.stderr
    assert row(via.stdout, "nightly")[1] == "0 2 * * *"


def count_rows_of(app: App, dbname: str, table: str) -> int:
    with app.connect(dbname) as conn:
        return count_rows(conn, table)


@pytest.fixture
def fresh_server(cluster: Cluster, app: App) -> Iterator[PostgresServer]:
    with new_server(cluster, app.namespace) as server:
        yield server


def test_the_plugin_restores_onto_a_fresh_server_with_the_roles(
        app: App, fresh_server: PostgresServer) -> None:
    assert fresh_server.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)",
                                ([APP_ROLE, REPORTING_ROLE, READONLY_ROLE],)) == [(0,)]
    app.create("backupschedules", "nightly", {
        "schedule": "0 2 * * *",
        "template": {"spec": {"components": ["database"],
                              "database": {**app.database_spec(), "globals": True},
                              "storage": app.storage()}}})
    made = plugin(app, "backup", "now", "--from-schedule", "nightly", "--wait",
                  "--timeout", "240")
    name = made.stdout.splitlines()[0].split()[0].split("/", 1)[1]
    database = app.get("backups", name)["status"]["artifacts"][0]
    assert database["rolesKey"].endswith("/roles.sql.zst"), database
    before = app.db_snapshot()

    restored = plugin(app, "restore", "latest", "--schedule", "nightly",
                      "--into", app.database,
                      "--db-host", f"{NEW_SERVER_SERVICE}.{app.namespace}.svc",
                      "--db-user", fresh_server.user, "--db-secret", NEW_SERVER_SECRET,
                      "--owner", APP_ROLE, "--globals", "--wait", "--timeout", "280")
    last = restored.stdout.splitlines()[-1]
    assert " Succeeded" in last and last.endswith(f"(from {name})"), restored.stdout
    restore_name = last.split()[0].split("/", 1)[1]
    message = app.get("restores", restore_name)["status"]["message"]
    assert "; roles: " in message and APP_ROLE in message, message

    assert fresh_server.execute(
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
        (app.database,)) == [(APP_ROLE,)]
    assert fresh_server.execute(
        "SELECT pg_has_role(%s, %s, 'MEMBER')", (APP_ROLE, REPORTING_ROLE))[0][0]
    with fresh_server.connection(app.database) as conn:
        # Tables, rows, owners and grants to the recreated roles: as on the old server.
        assert_same(before, snapshot(conn))
