"""The validating admission webhook on the real API server: what the schema cannot check is
refused at `kubectl apply` with the operator's reason, missing Secrets are warned about,
and a stopped operator blocks nothing (failurePolicy Ignore; the status reports instead).
The webhook's own RBAC is checked as the operator's ServiceAccount."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from tests.support.cluster import Cluster, secret_data, wait_for
from tests.support.operator import OPERATOR_NAMESPACE, RELEASE, Operator, run_tool

pytestmark = pytest.mark.e2e

GROUP, VERSION = "backup.northstar.io", "v1alpha1"
CONFIGURATION = f"{RELEASE}-timesheet-backup-operator"
DB = {"host": "db", "name": "timesheet_db", "user": "timesheet",
      "passwordSecretRef": {"name": "db", "key": "password"}}
STORAGE = {"bucket": "bkt", "endpoint": "http://s3.invalid:9000", "forcePathStyle": True}


def manifest(kind: str, name: str, spec: dict[str, Any]) -> str:
    return yaml.safe_dump({"apiVersion": f"{GROUP}/{VERSION}", "kind": kind,
                           "metadata": {"name": name}, "spec": spec})


def apply(cluster: Cluster, namespace: str, text: str,
          *flags: str) -> subprocess.CompletedProcess[str]:
    return run_tool(cluster, "kubectl", "apply", *flags, "-n", namespace, "-f", "-",
                    stdin=text, check=False)


def webhook_answers(cluster: Cluster, namespace: str) -> bool:
    """True once the API server reaches the webhook (the operator has put its CA into the
    configuration and serves): until then failurePolicy Ignore admits everything."""
    result = apply(cluster, namespace, manifest("BackupSchedule", "probe",
                                                {"schedule": "0 2 30 2 *"}),
                   "--dry-run=server")
    return result.returncode != 0


NEVER_RUNS = [
    ({"schedule": "0 2 30 2 *"},
     "invalid cron schedule '0 2 30 2 *': no month it names has that day, so it would never "
     "fire"),
    ({"schedule": "0 2 * * *", "timeZone": "Mars/Olympus_Mons"},
     "unknown time zone 'Mars/Olympus_Mons': use an IANA name such as Europe/Berlin"),
    ({"schedule": "@daily", "verification": {"schedule": "0 4 31 11 *"}},
     "invalid cron schedule '0 4 31 11 *'"),
]


def test_the_webhook_refuses_what_can_never_run(cluster: Cluster, namespace: str,
                                                operator: Operator) -> None:
    wait_for(lambda: webhook_answers(cluster, namespace), 60,
             message="the API server never got an answer from the webhook")
    config = k8s.AdmissionregistrationV1Api(cluster.api).read_validating_webhook_configuration(
        CONFIGURATION)
    assert config.webhooks[0].failure_policy == "Ignore"
    assert config.webhooks[0].client_config.ca_bundle, "the operator did not set caBundle"

    for spec, message in NEVER_RUNS:
        result = apply(cluster, namespace, manifest("BackupSchedule", "never", spec))
        assert result.returncode != 0, f"admitted: {spec}"
        assert 'admission webhook "validate.backup.northstar.io" denied the request' in \
            result.stderr, result.stderr
        assert message in result.stderr, result.stderr
    assert cluster.custom.list_namespaced_custom_object(
        GROUP, VERSION, namespace, "backupschedules")["items"] == []

    # The same spec applied later as a change to a good schedule is refused too; the good
    # schedule stays as it was.
    assert apply(cluster, namespace, manifest(
        "BackupSchedule", "nightly", {"schedule": "0 2 * * *", "suspend": True})).returncode == 0
    changed = apply(cluster, namespace, manifest(
        "BackupSchedule", "nightly", {"schedule": "0 2 30 2 *", "suspend": True}))
    assert changed.returncode != 0 and "would never fire" in changed.stderr, changed.stderr
    kept = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace,
                                                       "backupschedules", "nightly")
    assert kept["spec"]["schedule"] == "0 2 * * *"


def test_missing_secrets_are_warned_about_not_refused(cluster: Cluster, namespace: str,
                                                      operator: Operator) -> None:
    """GitOps may apply a Secret after the Backup that needs it: a warning at apply time
    (kubectl prints it), then the operator's SecretMissing if it is still missing."""
    wait_for(lambda: webhook_answers(cluster, namespace), 60,
             message="the API server never got an answer from the webhook")
    spec = {"components": ["database"], "database": DB, "storage": STORAGE,
            "deletionPolicy": "Retain"}
    result = apply(cluster, namespace, manifest("Backup", "early", spec), "--dry-run=server")
    assert result.returncode == 0, result.stderr
    assert (f"Warning: Secret {namespace}/db not found: the Jobs cannot start until it "
            "exists") in result.stderr, result.stderr

    cluster.core.create_namespaced_secret(namespace, {
        "metadata": {"name": "db"}, "data": secret_data({"password": "pw" * 8})})
    result = apply(cluster, namespace, manifest("Backup", "on-time", spec), "--dry-run=server")
    assert result.returncode == 0 and "Warning" not in result.stderr, result.stderr


def _scale_operator(cluster: Cluster, replicas: int) -> None:
    cluster.apps.patch_namespaced_deployment_scale(
        CONFIGURATION, OPERATOR_NAMESPACE, {"spec": {"replicas": replicas}})


def test_a_stopped_operator_blocks_nothing_and_status_reports(
        cluster: Cluster, namespace: str, operator: Operator) -> None:
    """failurePolicy Ignore: with no operator pod, a schedule the webhook would refuse is
    admitted, and the operator, once back, reports it in status with a Warning Event."""
    _scale_operator(cluster, 0)
    try:
        wait_for(lambda: not cluster.core.list_namespaced_pod(
            OPERATOR_NAMESPACE, label_selector="app.kubernetes.io/name=timesheet-backup-operator"
        ).items, 120, message="operator pods still present")
        result = apply(cluster, namespace, manifest(
            "BackupSchedule", "on-mars", {"schedule": "0 2 * * *",
                                          "timeZone": "Mars/Olympus_Mons"}))
        assert result.returncode == 0, result.stderr
    finally:
        _scale_operator(cluster, 1)
    wait_for(operator.pod_name, 120, message="operator not back")

    def ready() -> dict[str, Any] | None:
        obj = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace,
                                                          "backupschedules", "on-mars")
        return next((c for c in (obj.get("status") or {}).get("conditions") or []
                     if c["type"] == "Ready"), None)

    cond = wait_for(ready, 90, interval=1, message="on-mars: no Ready condition")
    assert (cond["status"], cond["reason"]) == ("False", "InvalidSchedule"), cond
    assert "unknown time zone 'Mars/Olympus_Mons'" in cond["message"], cond
    wait_for(lambda: any(e.reason == "InvalidSchedule" and e.type == "Warning"
                         for e in cluster.core.list_namespaced_event(namespace).items
                         if e.involved_object.name == "on-mars"), 30,
             message="no InvalidSchedule Event")


def can_i(cluster: Cluster, verb: str, resource: str, *args: str) -> bool:
    sa = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{CONFIGURATION}"
    result = run_tool(cluster, "kubectl", "auth", "can-i", verb, resource, "--as", sa, *args,
                      check=False)
    return result.stdout.strip() == "yes"


def test_the_webhook_rbac_is_least_privilege(cluster: Cluster, operator: Operator) -> None:
    """Asked of the real API server as the operator's ServiceAccount."""
    ours = f"validatingwebhookconfigurations/{CONFIGURATION}"
    assert can_i(cluster, "patch", ours)
    assert not can_i(cluster, "patch", "validatingwebhookconfigurations/someone-elses")
    assert not can_i(cluster, "delete", ours)
    assert not can_i(cluster, "create", "validatingwebhookconfigurations")
    secret = f"secrets/{CONFIGURATION}-webhook-tls"
    assert can_i(cluster, "update", secret, "-n", OPERATOR_NAMESPACE)
    assert not can_i(cluster, "update", "secrets/other", "-n", OPERATOR_NAMESPACE)
    assert not can_i(cluster, "delete", secret, "-n", OPERATOR_NAMESPACE)
    assert not can_i(cluster, "create", "secrets", "-n", "default")
    # The certificate is where the operator keeps it, as a TLS Secret of the release.
    stored = cluster.core.read_namespaced_secret(f"{CONFIGURATION}-webhook-tls",
                                                 OPERATOR_NAMESPACE)
    assert stored.type == "kubernetes.io/tls"
    assert set(stored.data) == {"ca.crt", "tls.crt", "tls.key"}
    config = json.loads(run_tool(cluster, "kubectl", "get", "validatingwebhookconfiguration",
                                 CONFIGURATION, "-o", "json").stdout)
    assert config["webhooks"][0]["clientConfig"]["caBundle"] == stored.data["ca.crt"]
