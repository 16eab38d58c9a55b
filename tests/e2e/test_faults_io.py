"""I/O faults on the real control plane: a toxiproxy between the Job pods and the host's S3
server and PostgreSQL (tests/support/faults.py). Every fault must end in `Failed` with a
readable reason in status and a Warning Event, leave no manifest and no orphan multipart
upload, never leave a database half-restored, and never count as a good backup for retention.

Faults are deterministic: `limit_data` cuts each connection after a fixed number of bytes
(toxiproxy counts per connection, so small requests pass and the big transfer is cut on every
retry), and a disabled proxy refuses every connection. Data is the small e2e sample (a ~7 MB
dump, 1.8 MB compressed; a ~4 MB uploads tree).

Decision for a slow store: latency far below the agent's S3 timeouts makes a slow backup that
Succeeds (asserted); only a store slower than the timeouts and retries, or the Job's
activeDeadlineSeconds, fails it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.cluster import Cluster, wait_for
from tests.support.dbsnapshot import assert_same
from tests.support.faults import (
    multipart_uploads,
    pg_upstream,
    proxied_service,
    s3_upstream,
    start_toxiproxy,
)
from tests.support.operator import App
from tests.support.s3server import ToxiProxy

pytestmark = pytest.mark.e2e

CUT_BYTES = 1_000_000  # well past connection set-up and catalog queries, well before the end


@pytest.fixture(scope="module")
def toxiproxy(cluster: Cluster) -> Iterator[ToxiProxy]:
    server = start_toxiproxy(cluster)
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def heal(app: App, toxiproxy: ToxiProxy) -> Iterator[None]:
    """Torn down before `app`: the app's teardown deletes Backups, and their finalizers reach
    the bucket through the same (then healthy) proxies."""
    yield
    toxiproxy.reset()


def backup_spec(app: App, components: list[str], *, db_host: str | None = None,
                s3_endpoint: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"components": components, "storage": app.storage(),
                            "job": {"backoffLimit": 0}}
    if "database" in components:
        spec["database"] = app.database_spec()
        if db_host:
            spec["database"]["host"] = db_host
    if "uploads" in components:
        spec["uploads"] = {"claimName": "timesheet-uploads"}
    if s3_endpoint:
        spec["storage"]["endpoint"] = s3_endpoint
    return spec


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    found = [c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_]
    assert found, f"no {type_} condition: {json.dumps(obj.get('status'), indent=1)}"
    return found[0]


def assert_failed_readably(app: App, plural: str, name: str) -> dict[str, Any]:
    """Failed, with a one-line reason in status, the Failed condition and a Warning Event."""
    obj = app.wait_phase(plural, name, ("Succeeded", "Failed"), timeout=240)
    st = obj["status"]
    assert st["phase"] == "Failed", json.dumps(st, indent=1)
    failed = condition(obj, "Failed")
    assert failed["status"] == "True" and failed["reason"] and failed["message"]
    message = st["message"]
    assert message and "Traceback" not in message and len(message) < 1500, message
    wait_for(lambda: any(e.type == "Warning" and e.message for e in app.events(name)), 30,
             message=f"no Warning Event for {plural}/{name}")
    return obj


def assert_nothing_left(app: App, name: str) -> None:
    """No manifest and no object for a failed backup, and no unfinished multipart upload."""
    prefix = f"e2e/{app.namespace}/{name}/"
    assert app.object_keys(prefix) == []
    assert multipart_uploads(app.s3(), app.bucket) == []


def test_s3_faults_fail_cleanly_and_retention_keeps_the_good_backups(
    cluster: Cluster, app: App, toxiproxy: ToxiProxy, heal: None
) -> None:
    s3 = s3_upstream(cluster)
    down = proxied_service(cluster, toxiproxy, app.namespace, "s3-down", 9000, s3)
    slow = proxied_service(cluster, toxiproxy, app.namespace, "s3-slow", 9000, s3)
    cut = proxied_service(cluster, toxiproxy, app.namespace, "s3-cut", 9000, s3)
    down.proxy.disable()
    # Latency on every answer, far below the agent's S3 timeouts (connect 10 s, read 120 s):
    # a slow store makes a slow backup, not a failed one.
    slow.proxy.latency(400)
    slow.proxy.latency(100, stream="upstream")
    # Each connection dies after 2.5 MB sent: the database artifact (one part of ~1.8 MB)
    # gets through, the uploads tar (a 3 MB incompressible file) never does. So the cut
    # also checks that a later component's failure removes the earlier, complete artifact.
    cut.proxy.cut_after(2_500_000, stream="upstream")

    schedule = {"backup.northstar.io/schedule": "kept"}
    app.create("backups", "good-1", backup_spec(app, ["database"]), labels=schedule)
    assert app.wait_phase("backups", "good-1", ("Succeeded", "Failed"))["status"]["phase"] \
        == "Succeeded"
    # The faults run side by side (each has its own proxy); all are newer than good-1.
    app.create("backups", "s3-unreachable",
               backup_spec(app, ["database"], s3_endpoint=down.url), labels=schedule)
    app.create("backups", "s3-slow",
               backup_spec(app, ["database"], s3_endpoint=slow.url), labels=schedule)
    app.create("backups", "s3-cut",
               backup_spec(app, ["database", "uploads"], s3_endpoint=cut.url), labels=schedule)

    unreachable = assert_failed_readably(app, "backups", "s3-unreachable")["status"]
    # The proxy's listener is closed: the connection is refused, as by a stopped store.
    assert "cannot reach the object store" in unreachable["message"], unreachable
    cut_status = assert_failed_readably(app, "backups", "s3-cut")["status"]
    assert "while trying to upload part 1" in cut_status["message"], cut_status
    assert "uploads.tar" in cut_status["message"], cut_status
    slow_status = app.wait_phase("backups", "s3-slow", ("Succeeded", "Failed"),
                                 timeout=240)["status"]
    assert slow_status["phase"] == "Succeeded", json.dumps(slow_status, indent=1)

    for name in ("s3-unreachable", "s3-cut"):
        assert_nothing_left(app, name)

    # Retention: keepLast 2, keepFailed 0. Two good backups and two newer failed ones: the
    # failed ones go, both good ones stay. Counting a failed backup as good would prune
    # good-1. The proxies are healed first: deleting a Backup reaches its bucket endpoint.
    toxiproxy.reset()
    app.create("backupschedules", "kept", {
        "schedule": "0 0 1 1 *",
        "template": {"spec": backup_spec(app, ["database"])},
        "retention": {"keepLast": 2, "keepFailed": 0},
    })

    def failed_pruned() -> list[str] | None:
        names = sorted(b["metadata"]["name"] for b in app.list("backups"))
        return names if names == ["good-1", "s3-slow"] else None

    wait_for(failed_pruned, 90, interval=2, message=lambda: (
        f"retention left {sorted(b['metadata']['name'] for b in app.list('backups'))}"))
    for name in ("good-1", "s3-slow"):
        assert f"e2e/{app.namespace}/{name}/manifest.json" in app.object_keys()
    assert multipart_uploads(app.s3(), app.bucket) == []


def test_database_cut_mid_dump_and_mid_restore(
    cluster: Cluster, app: App, toxiproxy: ToxiProxy, heal: None
) -> None:
    pg = pg_upstream(cluster)
    dump_db = proxied_service(cluster, toxiproxy, app.namespace, "db-dump", 5432, pg)
    restore_db = proxied_service(cluster, toxiproxy, app.namespace, "db-restore", 5432, pg)
    # Server -> client: pg_dump reading rows. Client -> server: pg_restore sending them.
    dump_db.proxy.cut_after(CUT_BYTES, stream="downstream")
    restore_db.proxy.cut_after(CUT_BYTES, stream="upstream")

    app.create("backups", "good", backup_spec(app, ["database"]))
    app.create("backups", "dump-cut", backup_spec(app, ["database"], db_host=dump_db.host))
    cut = assert_failed_readably(app, "backups", "dump-cut")["status"]
    assert "pg_dump failed" in cut["message"], cut
    assert_nothing_left(app, "dump-cut")
    assert app.wait_phase("backups", "good", ("Succeeded", "Failed"))["status"]["phase"] == \
        "Succeeded"

    # Changed since the backup: a half-applied restore would show as a mix of both states.
    with app.connect() as conn:
        conn.execute("DELETE FROM entries WHERE id IN "
                     "(SELECT id FROM entries ORDER BY id LIMIT 10)")
        conn.execute("UPDATE accounts SET display_name = display_name || ' (changed)'")
    before = app.db_snapshot()
    app.create("restores", "restore-cut", {
        "backupName": "good",
        "database": {"host": restore_db.host},
        "job": {"backoffLimit": 0},
        # The cut is for pg_restore's connection: a safety pg_dump through the same proxy
        # would meet it first.
        "safetyBackup": {"enabled": False},
    })
    restore = assert_failed_readably(app, "restores", "restore-cut")
    assert restore["status"]["failedStep"] == "restore", json.dumps(restore["status"], indent=1)
    assert "pg_restore failed" in restore["status"]["message"], restore["status"]
    assert_same(before, app.db_snapshot())
