"""The Argo CD health scripts (argocd/) against live objects of the real operator: Backups,
Restores and BackupSchedules that succeed, fail, run, wait, are suspended or have a spec
change the operator has not seen yet.

With TSB_CAPTURE_DIR set (e.g. `argocd/resource_customizations/backup.northstar.io`), every
object checked is also written there as `<Kind>/testdata/<case>.yaml` (`kubectl get -o yaml`,
without managedFields): the unit tests' testdata are these real objects. Capturing also
runs the slow case (a restore test that fails, which waits for its cron minute)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.argocd import CUSTOMIZATIONS, health, parse_yaml
from tests.support.cluster import wait_for
from tests.support.operator import App, run_tool

pytestmark = pytest.mark.e2e

CAPTURE_DIR = os.environ.get("TSB_CAPTURE_DIR")
KINDS = {"backups": "Backup", "restores": "Restore", "backupschedules": "BackupSchedule"}


class Live:
    """kubectl on the app's namespace, checking each object's health as it goes."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.checked: list[str] = []

    def kubectl(self, *argv: str, stdin: str | None = None) -> dict[str, Any]:
        out = run_tool(self.app.cluster, "kubectl", "-n", self.app.namespace, *argv,
                       "-o", "yaml", stdin=stdin).stdout
        obj: dict[str, Any] = parse_yaml(out)
        return obj

    def create(self, plural: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        """`kubectl create`: the answer is the object before the operator saw it."""
        body = {"apiVersion": "backup.northstar.io/v1alpha1", "kind": KINDS[plural],
                "metadata": {"name": name}, "spec": spec}
        return self.kubectl("create", "-f", "-", stdin=json.dumps(body))

    def get(self, plural: str, name: str) -> dict[str, Any]:
        return self.kubectl("get", plural, name)

    def wait(self, plural: str, name: str, ready: Any, timeout: float = 180) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            obj = self.get(plural, name)
            return obj if ready(obj.get("status") or {}) else None

        return wait_for(check, timeout, interval=1, message=lambda: (
            f"{plural}/{name}: {json.dumps(self.get(plural, name).get('status'))[:3000]}"))

    def check(self, obj: dict[str, Any], case: str, status: str,
              message: str | None = None) -> None:
        kind = obj["kind"]
        got = health(kind, obj)
        assert got["status"] == status, (case, got, obj.get("status"))
        if message is not None:
            assert got["message"] == message, (case, got)
        self.checked.append(f"{kind}/{case}")
        if CAPTURE_DIR:
            obj["metadata"].pop("managedFields", None)
            path = Path(CAPTURE_DIR) / kind / "testdata" / f"{case}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(obj, sort_keys=False))


def phase_in(*phases: str) -> Any:
    return lambda st: st.get("phase") in phases


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or []
                 if c["type"] == type_), {})


def test_health_of_live_objects(app: App) -> None:
    live = Live(app)
    good = {"components": ["database"], "database": app.database_spec(),
            "storage": app.storage()}
    broken = json.loads(json.dumps(good))
    broken["database"]["passwordSecretRef"] = {"name": "no-such-secret", "key": "password"}

    # Everything that only waits for the operator is created at once, to keep this short.
    created = live.create("backups", "db", good)
    live.check(created, "no-status", "Progressing", "Waiting for the operator")
    live.create("backups", "db-no-secret", broken)
    live.create("restores", "from-missing", {"backupName": "no-such-backup"})
    created = live.create("backupschedules", "suspended",
                          {"schedule": "0 2 * * *", "suspend": True, "template": {"spec": good}})
    live.check(created, "no-status", "Progressing", "Waiting for the operator")
    live.create("backupschedules", "failing",
                {"schedule": "0 2 * * *", "runOnCreate": True, "template": {"spec": broken}})
    live.create("backupschedules", "nightly",
                {"schedule": "0 2 * * *", "runOnCreate": True, "template": {"spec": good}})
    if CAPTURE_DIR:
        live.create("backupschedules", "unverified", {
            "schedule": "0 2 * * *", "template": {"spec": good},
            "verification": {"schedule": "* * * * *", "checks": ["SELECT 1"]}})

    seen = live.wait("backups", "db", phase_in("Running", "Succeeded", "Failed"))
    if seen["status"]["phase"] == "Running" or CAPTURE_DIR:
        live.check(seen, "running", "Progressing", seen["status"]["message"])
    # Here, so the operator's next tick on it overlaps the backup's run.
    suspended = live.wait("backupschedules", "suspended", lambda st: "observedGeneration" in st)
    live.check(suspended, "suspended", "Suspended", "Suspended: no new Backups")
    # A spec change the operator has not acted on yet: its status describes the old spec.
    stale = live.kubectl("patch", "backupschedules", "suspended", "--type", "merge",
                         "-p", '{"spec": {"suspend": false}}')
    assert stale["metadata"]["generation"] == 2
    live.check(stale, "stale-generation", "Progressing",
               "Waiting for the operator to observe generation 2")

    done = live.wait("backups", "db", phase_in("Succeeded", "Failed"))
    assert done["status"]["phase"] == "Succeeded", done["status"]
    live.check(done, "succeeded", "Healthy", done["status"]["message"])
    failed = live.wait("backups", "db-no-secret", phase_in("Succeeded", "Failed"))
    live.check(failed, "failed", "Degraded", failed["status"]["message"])

    created = live.create("restores", "db", {
        "backupName": "db", "components": ["database"],
        "database": {"name": f"{app.database}_restored", "createDatabase": True}})
    live.check(created, "no-status", "Progressing", "Waiting for the operator")
    failed = live.wait("restores", "from-missing", phase_in("Succeeded", "Failed"))
    live.check(failed, "failed", "Degraded", "Backup no-such-backup not found")
    seen = live.wait("restores", "db", phase_in("Waiting", "Running", "Succeeded", "Failed"))
    if seen["status"]["phase"] in ("Waiting", "Running") or CAPTURE_DIR:
        live.check(seen, seen["status"]["phase"].lower(), "Progressing",
                   seen["status"]["message"])
    done = live.wait("restores", "db", phase_in("Succeeded", "Failed"), timeout=300)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    live.check(done, "succeeded", "Healthy", done["status"]["message"])

    resumed = live.wait("backupschedules", "suspended",
                        lambda st: st.get("observedGeneration") == 2)
    live.check(resumed, "healthy-no-runs-yet", "Healthy",
               condition(resumed, "Ready")["message"])

    failing = live.wait("backupschedules", "failing", lambda st: any(
        c["type"] == "Failed" and c["status"] == "True" for c in st.get("conditions") or []))
    live.check(failing, "last-backup-failed", "Degraded", condition(failing, "Failed")["message"])
    assert condition(failing, "Failed")["message"].startswith("Backup failing-")

    nightly = live.wait("backupschedules", "nightly", lambda st: st.get("lastSuccessfulTime")
                        and any(c["type"] == "Failed" and c["status"] == "False"
                                for c in st.get("conditions") or []))
    live.check(nightly, "healthy", "Healthy")

    if CAPTURE_DIR:
        unverified = live.wait("backupschedules", "unverified",
                               lambda st: st.get("lastVerification"), timeout=150)
        live.check(unverified, "verification-failed", "Degraded",
                   "Restore test failed: no successful database backup to verify")

    # Every object the unit tests replay (argocd/.../testdata, captured by this test) was
    # checked live in this run, and every case checked here has its testdata: neither can
    # drift from what the operator writes. Timing decides whether the Backup is seen Running
    # and the Restore Waiting or Running; the failing restore test runs only when capturing.
    timing = {"Backup/running", "Restore/waiting", "Restore/running"}
    slow = set() if CAPTURE_DIR else {"BackupSchedule/verification-failed"}
    captured = {f"{path.parent.parent.name}/{path.stem}"
                for path in CUSTOMIZATIONS.glob("*/testdata/*.yaml")}
    assert captured - set(live.checked) - timing - slow == set(), live.checked
    assert set(live.checked) - captured - timing == set(), live.checked

    # The operator's children are not tracked by Argo CD (they would be pruned as extraneous).
    for plural in ("backups", "restores"):
        for obj in app.list(plural):
            assert "app.kubernetes.io/instance" not in (obj["metadata"].get("labels") or {})
    for job in app.cluster.batch.list_namespaced_job(app.namespace).items:
        assert "app.kubernetes.io/instance" not in (job.metadata.labels or {})
