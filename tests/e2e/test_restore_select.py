"""Restores chosen by intent and selective restores, on the real control plane: the latest
Backup of a schedule by name (recorded in status, a later Backup does not change it; nothing
before a time fails with a Warning), and one table into a side database while production
stays up (no quiesce)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.cluster import wait_for
from tests.support.dbsnapshot import count_rows, user_tables
from tests.support.operator import App

pytestmark = pytest.mark.e2e


def db_spec(app: App) -> dict[str, Any]:
    return {"components": ["database"], "database": app.database_spec(),
            "storage": app.storage()}


def tables(app: App, dbname: str) -> list[str]:
    with app.connect(dbname) as conn:
        return user_tables(conn)


def count(app: App, dbname: str, table: str) -> int:
    with app.connect(dbname) as conn:
        return count_rows(conn, table)


def succeeded_backups(app: App, schedule: str) -> list[dict[str, Any]]:
    return [b for b in app.list("backups", f"backup.northstar.io/schedule={schedule}")
            if (b.get("status") or {}).get("phase") == "Succeeded"]


def test_restore_latest_of_a_schedule(app: App) -> None:
    app.create("backupschedules", "nightly", {
        "schedule": "0 2 * * *", "runOnCreate": True, "template": {"spec": db_spec(app)}})
    (made,) = wait_for(lambda: succeeded_backups(app, "nightly") or None, 240, interval=2,
                       message="the schedule's first Backup never succeeded")
    name, bst = made["metadata"]["name"], made["status"]
    rows = count(app, app.database, "public.timesheets")

    side = f"{app.database}_latest"
    app.create("restores", "latest", {
        "latest": {"scheduleName": "nightly"},
        "database": {**app.database_spec(side), "createDatabase": True},
    })
    rst = app.wait_phase("restores", "latest", ("Succeeded", "Failed"), timeout=300)["status"]
    assert rst["phase"] == "Succeeded", json.dumps(rst, indent=1)
    # The choice is in status: which Backup, which manifest, when it completed.
    assert rst["restoredFrom"]["backupName"] == name
    assert rst["restoredFrom"]["manifestKey"] == bst["manifestKey"]
    assert rst["restoredFrom"]["completionTime"] == bst["completionTime"]
    assert rst["resolved"]["backupName"] == name
    assert count(app, side, "public.timesheets") == rows

    # Nothing completed before the first Backup: a clear failure with a Warning Event.
    app.create("restores", "too-early", {
        "latest": {"scheduleName": "nightly", "before": "2000-01-01T00:00:00Z"},
        "database": {**app.database_spec(f"{app.database}_early"), "createDatabase": True},
    })
    early = app.wait_phase("restores", "too-early", ("Succeeded", "Failed"))["status"]
    assert early["phase"] == "Failed"
    assert (early["failedStep"], early["failureReason"]) == ("resolve", "NoMatchingBackup")
    said = "no Succeeded Backup of schedule nightly completed before 2000-01-01T00:00:00Z"
    assert early["message"] == said
    assert any(e.type == "Warning" and e.message == said for e in app.events("too-early"))
    assert not app.database_exists(f"{app.database}_early")

    # Only verified ones: this schedule has no restore test, so none is.
    app.create("restores", "verified", {
        "latest": {"scheduleName": "nightly", "verifiedOnly": True},
        "database": {**app.database_spec(f"{app.database}_verified"), "createDatabase": True},
    })
    unverified = app.wait_phase("restores", "verified", ("Succeeded", "Failed"))["status"]
    assert unverified["failureReason"] == "NoMatchingBackup"
    assert unverified["message"] == "no verified Succeeded Backup of schedule nightly"


def test_one_table_into_a_side_database_while_production_stays_up(app: App) -> None:
    app.create("backups", "before-incident", db_spec(app))
    st = app.wait_phase("backups", "before-incident", ("Succeeded", "Failed"))["status"]
    assert st["phase"] == "Succeeded", st
    rows = count(app, app.database, "public.notifications")
    assert rows > 0
    production = tables(app, app.database)
    with app.connect() as conn:  # the incident: somebody emptied the table
        conn.execute("DELETE FROM public.notifications")

    side = f"{app.database}_notifications"
    app.create("restores", "one-table", {
        "backupName": "before-incident",
        "database": {**app.database_spec(side), "createDatabase": True,
                     "tables": ["notifications"]},
    })
    rst = app.wait_phase("restores", "one-table", ("Succeeded", "Failed"), timeout=300)["status"]
    assert rst["phase"] == "Succeeded", json.dumps(rst, indent=1)
    assert "quiesce" not in [s["name"] for s in rst["steps"]]
    assert "quiesced" not in rst
    # Production kept running and was not touched; the side database holds only the table.
    assert app.web_replicas() == 1
    ready = app.cluster.apps.read_namespaced_deployment("timesheet-web", app.namespace)
    assert (ready.status.ready_replicas or 0) >= 1
    assert tables(app, app.database) == production
    assert count(app, app.database, "public.notifications") == 0
    assert tables(app, side) == ["public.notifications"]
    assert count(app, side, "public.notifications") == rows
