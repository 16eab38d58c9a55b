"""Object Lock end to end: a Backup written into a bucket created with Object Lock is
Succeeded with status.lockedUntil and its objects carry the retention; deleting it with
deletionPolicy Delete before the date keeps the objects, the Backup waits (Terminating,
phase Deleting) and says why; retention keeps a locked Backup with "locked until".

Each test makes its own Object Lock bucket through the e2e S3 endpoint (App.s3). Locked
objects cannot be deleted, so the buckets stay (one day, GOVERNANCE) in the test server's
throwaway root; the waiting Backups are let go by removing their finalizer -- the escape
hatch docs/operator.md names -- so the app fixture's teardown does not wait for the date."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.support.cluster import wait_for
from tests.support.operator import App

pytestmark = pytest.mark.e2e


def locked_bucket(app: App) -> str:
    name = f"tsb-e2e-lock-{uuid.uuid4().hex[:10]}"
    app.s3().create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


def locked_spec(app: App, bucket: str) -> dict[str, Any]:
    storage = {**app.storage(), "bucket": bucket,
               "objectLock": {"mode": "GOVERNANCE", "days": 1}}
    return {"components": ["database"], "database": app.database_spec(), "storage": storage}


def let_go(app: App, name: str) -> None:
    """Give up waiting for the lock: the Backup goes, its objects stay in the bucket."""
    app.cluster.custom.patch_namespaced_custom_object(
        "backup.northstar.io", "v1alpha1", app.namespace, "backups", name,
        {"metadata": {"finalizers": None}}, _content_type="application/merge-patch+json")


def test_a_locked_backup_succeeds_and_its_deletion_waits_for_the_date(app: App) -> None:
    bucket = locked_bucket(app)
    started = datetime.now(UTC)
    app.create("backups", "locked", locked_spec(app, bucket))
    backup = app.wait_phase("backups", "locked", ("Succeeded", "Failed"))
    st = backup["status"]
    assert st["phase"] == "Succeeded", st
    until = datetime.fromisoformat(st["lockedUntil"].replace("Z", "+00:00"))
    assert started + timedelta(days=1) - timedelta(minutes=1) <= until
    assert until <= datetime.now(UTC) + timedelta(days=1)
    s3 = app.s3()
    directory = f"e2e/{app.namespace}/locked/"
    keys = sorted(o["Key"] for o in
                  s3.list_objects_v2(Bucket=bucket, Prefix=directory).get("Contents", []))
    assert f"{directory}manifest.json" in keys and len(keys) == 2
    for key in keys:
        retention = s3.get_object_retention(Bucket=bucket, Key=key)["Retention"]
        assert retention["Mode"] == "GOVERNANCE"
        assert retention["RetainUntilDate"] == until

    app.delete("backups", "locked")

    def waiting() -> dict[str, Any] | None:
        obj = app.get("backups", "locked")
        message = (obj.get("status") or {}).get("message") or ""
        return obj if obj["metadata"].get("deletionTimestamp") and \
            message.startswith("objects locked until") else None

    obj = wait_for(waiting, 60, message="the deletion does not report the lock")
    assert obj["status"]["phase"] == "Deleting"
    assert obj["status"]["message"] == (
        f"objects locked until {st['lockedUntil']} (Object Lock); the Backup and its objects "
        "are deleted after that")
    wait_for(lambda: any(e.reason == "ObjectsLocked" for e in app.events("locked")), 30,
             message="no ObjectsLocked Event")
    # The operator did not try: no DeleteFailed Warning, every object is still there.
    assert not any(e.reason == "DeleteFailed" for e in app.events("locked"))
    after = sorted(o["Key"] for o in
                   s3.list_objects_v2(Bucket=bucket, Prefix=directory).get("Contents", []))
    assert after == keys
    let_go(app, "locked")
    wait_for(lambda: not app.list("backups"), 30, message="the Backup did not go")


def test_retention_keeps_a_locked_backup_until_its_date(app: App) -> None:
    bucket = locked_bucket(app)
    app.create("backupschedules", "locked-every-minute", {
        "schedule": "* * * * *",
        "runOnCreate": True,
        "template": {"spec": locked_spec(app, bucket)},
        "retention": {"keepLast": 1},
    })
    label = "backup.northstar.io/schedule=locked-every-minute"

    def two_succeeded() -> list[dict[str, Any]] | None:
        done = [b for b in app.list("backups", label)
                if (b.get("status") or {}).get("phase") == "Succeeded"]
        return done if len(done) >= 2 else None

    done = wait_for(two_succeeded, 200, interval=2, message="no second locked Backup")
    oldest = min(done, key=lambda b: b["status"]["completionTime"])
    name = oldest["metadata"]["name"]

    expected = f"locked until {oldest['status']['lockedUntil']}"
    kept: dict[str, str] = {}

    def kept_for_the_lock_alone() -> bool:
        # A pass that ran before the second Backup succeeded still keeps the oldest as the
        # newest successful one too: wait for a pass in which only the lock keeps it.
        status = app.get("backupschedules", "locked-every-minute").get("status") or {}
        kept.clear()
        kept.update({e["name"]: e["reason"]
                     for e in (status.get("retention") or {}).get("kept") or []})
        return kept.get(name) == expected

    wait_for(kept_for_the_lock_alone, 60,
             message=lambda: f"{name} not kept for its lock alone: {kept}")
    assert name in {b["metadata"]["name"] for b in app.list("backups", label)}
    assert not any(e.reason == "DeleteFailed" for e in app.events(name))
    app.delete("backupschedules", "locked-every-minute")
    for b in app.list("backups", label):
        app.delete("backups", b["metadata"]["name"])
        let_go(app, b["metadata"]["name"])
    wait_for(lambda: not app.list("backups", label), 60, message="Backups did not go")
