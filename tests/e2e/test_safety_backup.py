"""The safety net of an in-place restore, on the real control plane: before a `clean` restore
over the app's database the operator backs up the current state (after the quiesce, before
the restore Job), links it in status, and restoring that Backup undoes the restore. A safety
Backup that fails leaves the database untouched: the Restore ends Failed
(SafetyBackupFailed) and gives the app its replicas back. One app for both (the e2e tier's
time): the failure first, which must change nothing, then the restore and its undo."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes.client import ApiException

from tests.support.cluster import secret_data, wait_for
from tests.support.dbsnapshot import assert_same
from tests.support.operator import App

pytestmark = pytest.mark.e2e

SAFETY_FOR = "backup.northstar.io/safety-for"


def restore(app: App, name: str, timeout: float = 300, **spec: Any) -> dict[str, Any]:
    app.create("restores", name, {
        "backupName": "before", "quiesce": {"deployments": ["timesheet-web"]}, **spec})
    return app.wait_phase("restores", name, ("Succeeded", "Failed"), timeout=timeout)


def gone(app: App, plural: str, name: str) -> bool:
    try:
        app.get(plural, name)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def test_in_place_restore_takes_a_safety_backup_that_undoes_it(app: App) -> None:
    app.create("backups", "before", {"components": ["database"],
                                     "database": app.database_spec(),
                                     "storage": app.storage()})
    assert app.wait_phase("backups", "before", ("Succeeded", "Failed"))["status"]["phase"] \
        == "Succeeded"
    original = app.db_snapshot()
    # Work done since the backup: what a restore of "before" loses, and the undo brings back.
    with app.connect() as conn:
        conn.execute("DELETE FROM entries WHERE id IN "
                     "(SELECT id FROM entries ORDER BY id LIMIT 10)")
        conn.execute("UPDATE accounts SET display_name = display_name || ' (since)'")
        # A restore refreshes materialized views from the restored tables (pg_dump ends
        # with REFRESH): the state to get back is one whose view is refreshed too.
        conn.execute("REFRESH MATERIALIZED VIEW reporting.weekly_hours")
    current = app.db_snapshot()

    # --- a safety Backup that fails: the restore does not start ---------------------------
    # A wrong password (the Secret exists, so the Restore gets past resolve): the safety
    # pg_dump is the first to connect with it.
    app.cluster.core.create_namespaced_secret(app.namespace, {
        "metadata": {"name": "wrong-db"}, "data": secret_data({"password": "not-it"})})
    failed = restore(app, "refused", database={
        "passwordSecretRef": {"name": "wrong-db", "key": "password"}},
        job={"backoffLimit": 0})["status"]
    assert failed["phase"] == "Failed", json.dumps(failed, indent=1)
    assert (failed["failedStep"], failed["failureReason"]) == ("safety", "SafetyBackupFailed")
    safety = failed["safetyBackup"]["backupName"]
    assert safety.startswith("refused-safety-")
    assert failed["safetyBackup"]["phase"] == "Failed"
    assert failed["message"].startswith(f"safety Backup {safety} failed: "), failed["message"]
    assert "password authentication failed" in failed["message"], failed["message"]
    assert failed["message"].endswith("the restore did not start (nothing was changed)")
    assert [s["name"] for s in failed["steps"]] == ["resolve", "wait", "quiesce", "safety",
                                                    "unquiesce"]
    assert app.get("backups", safety)["status"]["phase"] == "Failed"
    assert any(e.type == "Warning" and e.reason == "SafetyBackupFailed"
               for e in app.events("refused"))
    assert app.web_replicas() == 1
    assert_same(current, app.db_snapshot())

    # --- the in-place restore: backed up first, then restored ----------------------------
    rst = restore(app, "oops")["status"]
    assert rst["phase"] == "Succeeded", json.dumps(rst, indent=1)
    assert [s["name"] for s in rst["steps"]] == ["resolve", "wait", "quiesce", "safety",
                                                 "restore", "unquiesce"]
    linked = rst["safetyBackup"]
    name = linked["backupName"]
    backup = app.get("backups", name)
    bst = backup["status"]
    assert bst["phase"] == "Succeeded", json.dumps(bst, indent=1)
    assert linked == {"backupName": name, "phase": "Succeeded",
                      "manifestKey": bst["manifestKey"], "components": ["database"]}
    assert f"Backup {name}" in rst["message"]
    # Its own object, of the restore's target, into the source's bucket and prefix; not
    # owned by the Restore.
    assert backup["metadata"]["labels"][SAFETY_FOR] == "oops"
    assert not backup["metadata"].get("ownerReferences")
    assert bst["manifestKey"] == f"e2e/{app.namespace}/{name}/manifest.json"
    assert bst["manifestKey"] in app.object_keys("e2e/")
    # It had ended before the restore step began (whose Job is created in a later tick).
    steps = {s["name"]: s for s in rst["steps"]}
    assert bst["completionTime"] <= steps["restore"]["startTime"], (bst, steps)
    assert steps["safety"]["completionTime"] <= steps["restore"]["startTime"]
    assert app.web_replicas() == 1
    assert_same(original, app.db_snapshot())  # the work since "before" is gone...

    # --- undo: restore the safety Backup ---------------------------------------------------
    undo = restore(app, "undo", backupName=name, safetyBackup={"enabled": False})["status"]
    assert undo["phase"] == "Succeeded", json.dumps(undo, indent=1)
    assert "safetyBackup" not in undo
    assert_same(current, app.db_snapshot())  # ...and back

    # The safety Backup outlives its Restore.
    app.delete("restores", "oops")
    wait_for(lambda: gone(app, "restores", "oops"), 60, interval=1,
             message="Restore oops not deleted")
    assert app.get("backups", name)["status"]["phase"] == "Succeeded"
