"""The operator on the real control plane, installed by its chart (its own RBAC), against the
real PostgreSQL and S3 servers: backup -> wipe -> restore, disaster recovery from the bucket,
schedules with retention, restore tests, quiescing, and failures that end in a clear phase."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.cluster import Cluster, create_namespace, delete_namespace, wait_for
from tests.support.dbsnapshot import APP_ROLE, assert_same, snapshot
from tests.support.operator import (
    APP_UID,
    NEW_SERVER_SECRET,
    NEW_SERVER_SERVICE,
    App,
    delete_all,
    drop_app,
    make_app,
    new_server,
)
from tests.support.trees import assert_same_tree
from timesheet_backup.constants import FINALIZER

pytestmark = pytest.mark.e2e


def backup_spec(app: App, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "components": ["database", "uploads"],
        "database": app.database_spec(),
        "uploads": {"claimName": "timesheet-uploads"},
        "storage": app.storage(),
    }
    spec.update(overrides)
    return spec


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def test_backup_wipe_restore_in_place(app: App) -> None:
    db_before, tree_before = app.db_snapshot(), app.tree()

    app.create("backups", "nightly", backup_spec(app))
    backup = app.wait_phase("backups", "nightly", ("Succeeded", "Failed"))
    st = backup["status"]
    assert st["phase"] == "Succeeded", st
    assert conditions(backup)["Ready"]["status"] == "True"
    assert st["components"] == "database,uploads"
    assert {a["component"] for a in st["artifacts"]} == {"database", "uploads"}
    assert st["manifestKey"] == f"e2e/{app.namespace}/nightly/manifest.json"
    keys = app.object_keys(f"e2e/{app.namespace}/nightly/")
    assert st["manifestKey"] in keys
    assert {a["key"] for a in st["artifacts"]} <= set(keys)
    assert st["sizeBytes"] > 0 and st["size"]
    assert any(e.reason == "Completed" for e in app.events("nightly"))
    job = app.cluster.batch.read_namespaced_job(st["jobName"], app.namespace)
    pod_spec = job.spec.template.spec
    assert pod_spec.automount_service_account_token is False
    assert pod_spec.containers[0].security_context.read_only_root_filesystem is True
    # The web pod mounts the RWO claim: the backup pod went to its node, as the app's uid.
    assert pod_spec.affinity.node_affinity is not None
    assert (pod_spec.security_context.run_as_user, pod_spec.security_context.run_as_group) == \
        (APP_UID, APP_UID)
    assert st["jobIdentity"].startswith(f"uid {APP_UID}, gid {APP_UID}, as pod timesheet-web-")
    assert any(e.reason == "Identity" for e in app.events("nightly"))

    app.wipe_database()
    for path in sorted((app.uploads_dir / "files").rglob("*"), reverse=True):
        if path.is_file() or path.is_symlink():
            path.unlink()
    (app.uploads_dir / "stray.txt").write_text("written after the backup")

    app.create("restores", "back", {
        "backupName": "nightly",
        "quiesce": {"deployments": ["timesheet-web"]},
        "safetyBackup": {"enabled": False},  # test_safety_backup.py takes one (time)
        "verify": {"sqlChecks": ["SELECT count(*) > 0 FROM timesheets"],
                   "httpGet": {"url": f"http://timesheet-web.{app.namespace}.svc/"}},
    })
    restore = app.wait_phase("restores", "back", ("Succeeded", "Failed"), timeout=300)
    rst = restore["status"]
    assert rst["phase"] == "Succeeded", json.dumps(rst, indent=1)
    assert [s["name"] for s in rst["steps"]] == ["resolve", "wait", "quiesce", "restore",
                                                 "unquiesce", "verify"]
    assert all(s["phase"] == "Succeeded" for s in rst["steps"])
    assert "currentStep" not in rst  # kubectl's STEP column is empty once it ended
    assert rst["quiesced"] == [{"name": "timesheet-web", "replicas": 1}]
    assert app.web_replicas() == 1
    # The app's pods were gone: the identity came from its Deployment's template.
    assert rst["jobIdentity"] == (f"uid {APP_UID}, gid {APP_UID}, as Deployment "
                                  "timesheet-web, which mounts timesheet-uploads")
    assert_same(db_before, app.db_snapshot())
    # Contents, modes, mtimes and owners (the app's uid) are back.
    assert_same_tree(tree_before, app.tree())


def test_restore_from_bucket_into_a_fresh_namespace(cluster: Cluster, app: App) -> None:
    """Disaster recovery: a namespace that never saw the Backup objects restores "the newest
    backup of schedule nightly" chosen from the manifests in the bucket alone, onto a new
    PostgreSQL server without the app's roles: the backup's roles come back first
    (database.globals), then the database, created for the app's role."""
    db_before = app.db_snapshot()
    spec = backup_spec(app, components=["database"])
    spec["database"]["globals"] = True
    app.create("backups", "dr", spec, labels={"backup.northstar.io/schedule": "nightly"})
    st = app.wait_phase("backups", "dr", ("Succeeded", "Failed"))["status"]
    assert st["phase"] == "Succeeded", st
    # Newer, but of no schedule: the schedule label its manifest records rules it out.
    app.create("backups", "by-hand", backup_spec(app, components=["database"]))
    assert app.wait_phase("backups", "by-hand", ("Succeeded", "Failed"))["status"]["phase"] \
        == "Succeeded"

    other = create_namespace(cluster, "dr-target")
    try:
        fresh = make_app(cluster, other, web=False)
        with new_server(cluster, other) as server:
            target = {"host": f"{NEW_SERVER_SERVICE}.{other}.svc", "user": server.user,
                      "passwordSecretRef": {"name": NEW_SERVER_SECRET, "key": "password"},
                      "name": app.database, "createDatabase": True}
            fresh.create("restores", "from-bucket", {
                "source": {"storage": {**fresh.storage(), "bucket": app.bucket},
                           "latest": {"namespace": app.namespace, "scheduleName": "nightly"}},
                "database": {**target, "owner": APP_ROLE, "globals": True},
            })
            rst = fresh.wait_phase("restores", "from-bucket", ("Succeeded", "Failed"),
                                   timeout=300)["status"]
            assert rst["phase"] == "Succeeded", json.dumps(rst, indent=1)
            assert rst["restoredFrom"]["manifestKey"] == st["manifestKey"]
            assert rst["restoredFrom"]["completionTime"]  # the manifest's, with the choice
            assert "; roles: " in rst["message"], rst["message"]
            with server.connection(app.database) as conn:
                # Tables, rows, owners and grants to the recreated roles: as before.
                assert_same(db_before, snapshot(conn))

            # Roles asked of a backup taken without database.globals: refused when
            # resolved, before any Job, with a Warning Event.
            by_hand = app.get("backups", "by-hand")["status"]["manifestKey"]
            fresh.create("restores", "roles-of-none", {
                "source": {"storage": {**fresh.storage(), "bucket": app.bucket},
                           "manifestKey": by_hand},
                "database": {**target, "name": f"{app.database}_2", "globals": True},
            })
            refused = fresh.wait_phase("restores", "roles-of-none", ("Succeeded", "Failed"),
                                       timeout=60)
            assert conditions(refused)["Failed"]["reason"] == "RolesMissing", \
                refused["status"]
            assert "taken without database.globals" in refused["status"]["message"]
            wait_for(lambda: any(e.type == "Warning" and e.reason == "RolesMissing"
                                 for e in fresh.events("roles-of-none")), 30,
                     message="no Warning Event RolesMissing")
            assert cluster.batch.list_namespaced_job(
                other, label_selector="backup.northstar.io/restore=roles-of-none").items == []
        delete_all(fresh)
        drop_app(fresh)
    finally:
        delete_namespace(cluster, other, force_pods=True)


def test_failed_restore_gives_the_app_its_replicas_back(app: App) -> None:
    app.create("backups", "b", backup_spec(app, components=["database"]))
    assert app.wait_phase("backups", "b", ("Succeeded", "Failed"))["status"]["phase"] == \
        "Succeeded"
    check = "SELECT count(*) = 0 FROM timesheets"
    app.create("restores", "bad-check", {
        "backupName": "b",
        "quiesce": {"deployments": ["timesheet-web"]},
        "safetyBackup": {"enabled": False},  # test_safety_backup.py takes one (time)
        "verify": {"sqlChecks": [check]},
    })
    restore = app.wait_phase("restores", "bad-check", ("Succeeded", "Failed"), timeout=300)
    rst = restore["status"]
    assert rst["phase"] == "Failed"
    assert (rst["failedStep"], rst["failureReason"]) == ("restore", "RestoreJobFailed")
    # The agent's words (agent/postgres.py run_checks) and its exit code, as the operator
    # reports a failed Job (jobs/outcome.py): on the step, and leading the Restore's message.
    said = f"check 1 ({check!r}) returned False, expected a true value (exit code 1)"
    step = next(s for s in rst["steps"] if s["name"] == "restore")
    assert (step["phase"], step["message"]) == ("Failed", said)
    assert rst["message"].startswith(said), rst["message"]
    assert conditions(restore)["Failed"]["status"] == "True"
    assert app.web_replicas() == 1
    assert any(e.type == "Warning" for e in app.events("bad-check"))


def test_missing_secret_fails_with_a_clear_condition(app: App) -> None:
    spec = backup_spec(app)
    spec["database"]["passwordSecretRef"] = {"name": "no-such-secret", "key": "password"}
    app.create("backups", "nosecret", spec)
    backup = app.wait_phase("backups", "nosecret", ("Succeeded", "Failed"), timeout=60)
    assert backup["status"]["phase"] == "Failed"
    failed = conditions(backup)["Failed"]
    assert failed["reason"] == "SecretMissing"
    assert "no-such-secret" in failed["message"]
    wait_for(lambda: any(e.reason == "SecretMissing" and e.type == "Warning"
                         for e in app.events("nosecret")), 30, message="no Warning Event")


def test_unreachable_bucket_fails_with_the_agents_message(app: App) -> None:
    spec = backup_spec(app, components=["database"])
    spec["storage"]["bucket"] = "no-such-bucket-e2e"
    spec["job"] = {"backoffLimit": 0}
    app.create("backups", "nobucket", spec)
    backup = app.wait_phase("backups", "nobucket", ("Succeeded", "Failed"))
    st = backup["status"]
    assert st["phase"] == "Failed"
    assert "no-such-bucket-e2e" in st["message"]
    assert "Traceback" not in st["message"]
    assert app.object_keys() == []


def test_delete_policy_removes_objects_and_retain_keeps_them(app: App) -> None:
    app.create("backups", "gone", backup_spec(app, components=["database"]))
    app.create("backups", "kept", backup_spec(app, components=["database"],
                                              deletionPolicy="Retain"))
    for name in ("gone", "kept"):
        assert app.wait_phase("backups", name, ("Succeeded", "Failed"))["status"]["phase"] == \
            "Succeeded"
    # Only the Backup that owns objects to delete carries the operator's finalizer (kopf
    # adds it once the Backup started; a Retain Backup needs no finalizer round).
    wait_for(lambda: FINALIZER in (app.get("backups", "gone")["metadata"].get("finalizers")
                                   or []), 30, message="no finalizer on the Delete Backup")
    assert FINALIZER not in (app.get("backups", "kept")["metadata"].get("finalizers") or [])
    app.delete("backups", "gone")
    app.delete("backups", "kept")
    wait_for(lambda: not app.list("backups"), 60, message="backups not deleted")
    assert app.object_keys(f"e2e/{app.namespace}/gone/") == []
    kept = f"e2e/{app.namespace}/kept/"
    assert f"{kept}manifest.json" in app.object_keys(kept)


def test_schedule_creates_backups_and_retention_prunes(app: App) -> None:
    app.create("backupschedules", "every-minute", {
        "schedule": "* * * * *",
        "runOnCreate": True,
        "template": {"spec": backup_spec(app, components=["database"])},
        "retention": {"keepLast": 1},
    })
    label = "backup.northstar.io/schedule=every-minute"
    seen: set[str] = set()

    def pruned_down_to_the_newest() -> list[dict[str, Any]] | None:
        backups = app.list("backups", label)
        seen.update(b["metadata"]["name"] for b in backups)
        done = [b for b in backups if (b.get("status") or {}).get("phase") == "Succeeded"]
        return done if len(seen) >= 2 and len(backups) == 1 and done else None

    survivors = wait_for(pruned_down_to_the_newest, 200, interval=2,
                         message=lambda: f"seen {sorted(seen)}, now "
                         f"{[b['metadata']['name'] for b in app.list('backups')]}")
    newest = survivors[0]
    assert newest["status"]["phase"] == "Succeeded"
    assert newest["metadata"]["labels"]["backup.northstar.io/schedule"] == "every-minute"
    # The pruned backups' objects are gone from the bucket; the survivor's are there.
    names = {k.split("/")[2] for k in app.object_keys(f"e2e/{app.namespace}/")}
    assert names == {newest["metadata"]["name"]}
    # The schedule deleted the objects itself, in a batch, and let the Backups go without a
    # finalizer round: no per-Backup "Deleted" Event; one "Pruned" Event per pass.
    pruned = seen - {newest["metadata"]["name"]}
    assert not [(name, e.reason) for name in sorted(pruned) for e in app.events(name)
                if e.reason in ("Deleted", "DeleteFailed")]
    passes = [e for e in app.events("every-minute") if e.reason == "Pruned"]
    assert passes and all(e.type == "Normal" and e.message.startswith("retention deleted ")
                          for e in passes), [(e.type, e.message) for e in passes]
    schedule = app.get("backupschedules", "every-minute")["status"]
    assert schedule["nextScheduleTime"] and schedule["lastScheduleTime"]
    assert conditions({"status": schedule})["Ready"]["status"] == "True"


def test_verification_records_success_and_failure(app: App) -> None:
    app.create("backups", "seed", backup_spec(app, components=["database"]),
               labels={"backup.northstar.io/schedule": "verified"})
    seed = app.wait_phase("backups", "seed", ("Succeeded", "Failed"))
    assert seed["status"]["phase"] == "Succeeded"
    app.create("backupschedules", "verified", {
        "schedule": "0 0 1 1 *",
        "template": {"spec": backup_spec(app, components=["database"])},
        "verification": {"schedule": "* * * * *",
                         "checks": ["SELECT count(*) > 0 FROM timesheets"]},
    })

    def verified() -> dict[str, Any] | None:
        st = app.get("backupschedules", "verified").get("status") or {}
        return st.get("lastVerification")

    result = wait_for(verified, 200, interval=2, message="no restore test recorded")
    assert result["result"] == "Succeeded", result
    assert result["backupName"] == "seed"
    # The restore test compared every restored table's rows with the backup's own counts.
    tables = seed["status"]["tableCount"]
    assert f"compared {tables} tables' row counts with the backup's: all equal" in \
        result["message"], result
    # The scratch database was dropped after the checks.
    assert not app.database_exists(f"{app.database}_verify")


def test_failed_verification_is_recorded(app: App) -> None:
    """A restore test fails when the restored rows are not those the backup counted: here
    the manifest says one more timesheet than the dump holds (a dump that lost rows reads
    the same). (A failing SQL check: test_failed_restore_gives_the_app_its_replicas_back.)"""
    app.create("backups", "seed", backup_spec(app, components=["database"]),
               labels={"backup.northstar.io/schedule": "doubtful"})
    seed = app.wait_phase("backups", "seed", ("Succeeded", "Failed"))["status"]
    assert seed["phase"] == "Succeeded"
    s3, key = app.s3(), seed["manifestKey"]
    manifest = json.loads(s3.get_object(Bucket=app.bucket, Key=key)["Body"].read())
    counts = manifest["artifacts"][0]["rowCounts"]
    rows = counts["public.timesheets"]
    counts["public.timesheets"] = rows + 1
    s3.put_object(Bucket=app.bucket, Key=key, Body=json.dumps(manifest).encode())
    app.create("backupschedules", "doubtful", {
        "schedule": "0 0 1 1 *",
        "template": {"spec": backup_spec(app, components=["database"])},
        "verification": {"schedule": "* * * * *", "database": f"{app.database}_scratch",
                         "checks": ["SELECT count(*) > 0 FROM timesheets"]},
    })

    def verified() -> dict[str, Any] | None:
        st = app.get("backupschedules", "doubtful").get("status") or {}
        return st.get("lastVerification")

    result = wait_for(verified, 200, interval=2, message="no restore test recorded")
    assert result["result"] == "Failed", result
    assert (f"table public.timesheets has {rows} rows, the backup had {rows + 1}"
            in result["message"]), result
    wait_for(lambda: any(e.reason == "VerificationFailed" and e.type == "Warning"
                         for e in app.events("doubtful")), 30, message="no Warning Event")
    record = app.get("backups", "seed")["status"]["verification"]
    assert record["result"] == "Failed" and not record.get("verifiedTime"), record
    # Dropped even though the comparison failed.
    assert not app.database_exists(f"{app.database}_scratch")


def test_keep_verified_keeps_the_proof_over_keep_last(app: App) -> None:
    """keepLast 1 + keepVerified 1: the older Backup that passed a restore test survives
    while a newer, unverified one is pruned, and the pass says why (issue 14, item 4)."""
    label = {"backup.northstar.io/schedule": "proof"}
    selector = "backup.northstar.io/schedule=proof"
    database_only = backup_spec(app, components=["database"])
    app.create("backups", "seed", database_only, labels=label)
    assert app.wait_phase("backups", "seed", ("Succeeded", "Failed"))["status"]["phase"] == \
        "Succeeded"
    app.create("backupschedules", "proof", {
        "schedule": "0 0 1 1 *",
        "template": {"spec": database_only},
        "retention": {"keepLast": 1, "keepVerified": 1},
        "verification": {"schedule": "* * * * *",
                         "checks": ["SELECT count(*) > 0 FROM timesheets"]},
    })

    def seed_verified() -> dict[str, Any] | None:
        proof = (app.get("backups", "seed").get("status") or {}).get("verification") or {}
        return proof if proof.get("verifiedTime") else None

    proof = wait_for(seed_verified, 200, interval=2, message=lambda: "seed never verified: "
                     f"{app.get('backupschedules', 'proof').get('status')}")
    assert proof["result"] == "Succeeded" and proof["restore"].startswith("proof-verify-")
    # No more restore tests: the newer Backups below must stay unverified.
    app.patch("backupschedules", "proof", {"spec": {"verification": None}})
    wait_for(lambda: all((r.get("status") or {}).get("phase") in ("Succeeded", "Failed")
                         for r in app.list("restores", "backup.northstar.io/verification=true")),
             200, interval=2, message="a restore test never finished")

    for name in ("middle", "fresh"):
        app.create("backups", name, database_only, labels=label)
        assert app.wait_phase("backups", name, ("Succeeded", "Failed"))["status"]["phase"] \
            == "Succeeded"

    def pruned_to_proof_and_newest() -> set[str] | None:
        names = {b["metadata"]["name"] for b in app.list("backups", selector)}
        return names if names == {"seed", "fresh"} else None

    wait_for(pruned_to_proof_and_newest, 120, interval=2, message=lambda: "Backups now: "
             f"{[b['metadata']['name'] for b in app.list('backups', selector)]}")
    seed = app.get("backups", "seed")
    assert seed["status"]["phase"] == "Succeeded"
    assert seed["status"]["verification"]["verifiedTime"] == proof["verifiedTime"]

    # Pruning explains itself: in the schedule's status ...
    status = app.get("backupschedules", "proof")["status"]["retention"]
    kept = {e["name"]: e["reason"] for e in status["kept"]}
    assert set(kept) == {"seed", "fresh"}, status
    assert "keepVerified 1" in kept["seed"] and "newest verified" in kept["seed"], kept
    assert "keepLast 1" in kept["fresh"], kept
    pruned = {e["name"]: e["reason"] for e in status["pruned"]}
    assert pruned == {"middle": "not among the 1 newest (keepLast), "
                                "not verified (keepVerified)"}, status
    assert status["lastPruneTime"]
    # ... and in the pruning pass's Event.
    wait_for(lambda: any(e.reason == "Pruned" and "middle (" in (e.message or "")
                         and "not verified" in (e.message or "")
                         for e in app.events("proof")), 30, message="no Pruned Event")
    # The pruned Backup's objects left the bucket (deletionPolicy Delete); the proof's stay.
    wait_for(lambda: {k.split("/")[2] for k in app.object_keys(f"e2e/{app.namespace}/")}
             == {"seed", "fresh"}, 60, interval=2,
             message=lambda: f"objects: {app.object_keys(f'e2e/{app.namespace}/')}")


def test_post_restore_hook_runs_after_the_data_is_back(app: App) -> None:
    """A hook stands in for `flask db upgrade`: it changes the schema after the restore, and
    runs while the app is still scaled down."""
    app.create("backups", "pre-migration", backup_spec(app, components=["database"]))
    assert app.wait_phase("backups", "pre-migration", ("Succeeded", "Failed"))["status"][
        "phase"] == "Succeeded"
    migrate = "CREATE TABLE public.schema_migrations (version text PRIMARY KEY); " \
              "INSERT INTO public.schema_migrations VALUES ('2026_11_26_restore')"
    app.create("restores", "migrate", {
        "backupName": "pre-migration",
        "quiesce": {"deployments": ["timesheet-web"]},
        "safetyBackup": {"enabled": False},  # test_safety_backup.py takes one (time)
        "hooks": {"postRestore": [{
            "name": "db-upgrade",
            "image": app.cluster.image,
            "command": ["psql", "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-c", migrate],
            "env": [
                {"name": "PGHOST", "value": f"timesheet-db.{app.namespace}.svc"},
                {"name": "PGDATABASE", "value": app.database},
                {"name": "PGUSER", "value": APP_ROLE},
                {"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {
                    "name": "timesheet-db", "key": "password"}}},
            ],
        }]},
    })
    rst = app.wait_phase("restores", "migrate", ("Succeeded", "Failed"), timeout=300)["status"]
    assert rst["phase"] == "Succeeded", json.dumps(rst, indent=1)
    assert [s["name"] for s in rst["steps"]] == ["resolve", "wait", "quiesce", "restore",
                                                 "hooks", "unquiesce"]
    with app.connect() as conn:
        rows = conn.execute("SELECT version FROM public.schema_migrations").fetchall()
    assert rows == [("2026_11_26_restore",)]
    assert app.web_replicas() == 1
