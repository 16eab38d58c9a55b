"""Secrets never leak: after a full run with known, distinctive secret values (a database
password, the S3 secret key, an age identity; an encrypted backup, its restore, a schedule and
a backup that fails on a wrong password), none of them appears — as is or base64-encoded — in
the operator's logs, any pod's logs, the custom resources, any Event, any Job or pod object
(args, command, env values), the operator's /metrics or the chart's ConfigMaps."""

from __future__ import annotations

import json
import secrets
import urllib.request
from collections.abc import Iterator
from typing import Any

import pyrage
import pytest
from psycopg import sql

from tests.support.cluster import Cluster, secret_data
from tests.support.dbsnapshot import APP_ROLE
from tests.support.operator import APP_DB_PASSWORD, OPERATOR_NAMESPACE, App, Operator, run_tool
from tests.support.secretscan import Finding, scan_text

pytestmark = pytest.mark.e2e


@pytest.fixture
def known(app: App) -> Iterator[dict[str, str]]:
    """Distinctive secret values, each in a Secret of the app's namespace; a database role
    that logs in with the first one."""
    role = f"scan_{secrets.token_hex(4)}"
    values = {
        "db-password": f"pgPw-{secrets.token_urlsafe(18)}",
        "wrong-password": f"wrongPw-{secrets.token_urlsafe(18)}",
        "s3-secret-key": app.s3_env["AWS_SECRET_ACCESS_KEY"],
        "postgres-password": app.pg_env["PGPASSWORD"],
        "app-password": APP_DB_PASSWORD,
        "age-identity": str(pyrage.x25519.Identity.generate()),
    }
    with app.connect("postgres") as conn:
        # Not a superuser: a member of the app's owner role, which may drop and recreate
        # what that role (and, through it, the reporting role) owns.
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(values["db-password"])))
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(APP_ROLE),
                                                     sql.Identifier(role)))
    core = app.cluster.core
    for name, key in (("scan-db", "db-password"), ("wrong-db", "wrong-password"),
                      ("age-key", "age-identity")):
        core.create_namespaced_secret(app.namespace, {
            "metadata": {"name": name}, "data": secret_data({"value": values[key]})})
    values["role"] = role
    yield values
    # The restore ran as this role: what it owns in the app's database goes to the admin
    # role before the role can go.
    for dbname in (app.database, "postgres"):
        with app.connect(dbname) as conn:
            conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(
                sql.Identifier(role)))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    with app.connect("postgres") as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE usename = %s", (role,))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def database(app: App, role: str, secret: str) -> dict[str, Any]:
    return {**app.database_spec(), "user": role,
            "passwordSecretRef": {"name": secret, "key": "value"}}


def serialized(cluster: Cluster, objects: list[Any]) -> str:
    return json.dumps(cluster.api.sanitize_for_serialization(objects), indent=1)


def test_no_secret_in_logs_status_events_jobs_metrics(
    cluster: Cluster, app: App, operator: Operator, known: dict[str, str]
) -> None:
    role = known.pop("role")
    recipient = str(pyrage.x25519.Identity.from_str(known["age-identity"]).to_public())
    spec = {"components": ["database", "uploads"],
            "database": database(app, role, "scan-db"),
            "uploads": {"claimName": "timesheet-uploads"},
            "storage": app.storage(),
            "encryption": {"ageRecipients": [recipient]},
            "job": {"backoffLimit": 0}}
    app.create("backups", "encrypted", spec)
    app.create("backups", "wrong-password", {
        **spec, "components": ["database"], "database": database(app, role, "wrong-db")})
    app.create("backupschedules", "nightly", {"schedule": "0 2 * * *",
                                              "template": {"spec": spec},
                                              "retention": {"keepLast": 3}})
    st = app.wait_phase("backups", "encrypted", ("Succeeded", "Failed"))["status"]
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    assert all(a["encrypted"] for a in st["artifacts"])
    failed = app.wait_phase("backups", "wrong-password", ("Succeeded", "Failed"))["status"]
    assert failed["phase"] == "Failed"
    assert "password authentication failed" in failed["message"], failed["message"]

    app.create("restores", "decrypted", {
        "backupName": "encrypted",
        "database": {"user": role, "passwordSecretRef": {"name": "scan-db", "key": "value"}},
        "decryption": {"secretRef": {"name": "age-key", "key": "value"}},
        "verify": {"sqlChecks": ["SELECT count(*) > 0 FROM timesheets"]},
        "job": {"backoffLimit": 0},
        "safetyBackup": {"enabled": False},  # test_safety_backup.py takes one (time)
    })
    rst = app.wait_phase("restores", "decrypted", ("Succeeded", "Failed"), timeout=300)
    assert rst["status"]["phase"] == "Succeeded", json.dumps(rst["status"], indent=1)

    # Everything a user, a log collector or Prometheus can see.
    places: dict[str, str] = {}
    operator_pod = operator.pod_name()
    assert operator_pod, "operator pod not running"
    for container, text in cluster.pod_logs(OPERATOR_NAMESPACE, operator_pod).items():
        places[f"operator log {container}"] = text
    places["kubectl logs operator"] = run_tool(
        cluster, "kubectl", "logs", "-n", OPERATOR_NAMESPACE, operator_pod,
        "--all-containers").stdout
    pods = cluster.core.list_namespaced_pod(app.namespace).items
    job_pods = [p for p in pods if (p.metadata.labels or {}).get("job-name")]
    assert len(job_pods) >= 3, [p.metadata.name for p in pods]  # backup, failed, restore
    for pod in pods:
        for container, text in cluster.pod_logs(app.namespace, pod.metadata.name).items():
            places[f"log {pod.metadata.name}/{container}"] = text
    places["pods"] = serialized(cluster, pods)
    places["jobs"] = serialized(cluster, cluster.batch.list_namespaced_job(app.namespace).items)
    for plural in ("backups", "restores", "backupschedules"):
        places[plural] = json.dumps(app.list(plural), indent=1)
    for ns in (app.namespace, OPERATOR_NAMESPACE):
        places[f"events {ns}"] = serialized(cluster, cluster.core.list_namespaced_event(ns).items)
    places["operator objects"] = serialized(cluster, [
        *cluster.apps.list_namespaced_deployment(OPERATOR_NAMESPACE).items,
        *cluster.core.list_namespaced_pod(OPERATOR_NAMESPACE).items,
        *cluster.core.list_namespaced_config_map(OPERATOR_NAMESPACE).items,
    ])
    with urllib.request.urlopen(Operator(cluster).metrics_url(), timeout=10) as response:
        places["metrics"] = response.read().decode()
    # The scan must see what it scans: these places hold this run's traces.
    assert "tsb_" in places["metrics"] or "backup" in places["metrics"]
    assert "encrypted" in places["backups"] and "decrypted" in places["restores"]
    assert any("wrong-password" in text for text in places.values() if text)

    findings: list[Finding] = []
    for where, text in places.items():
        findings += scan_text(where, text, known)
    assert findings == [], "\n".join(map(str, findings))
