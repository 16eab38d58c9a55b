"""Jobs in a locked-down namespace, on the real node (docs/security.md, "Jobs in locked-down
namespaces"): a Backup and a Restore with a PriorityClass, a pull secret, pod labels and
annotations, proxy variables and a ServiceAccount, asserted on the pods the kubelet ran --
and both still succeed. A plain Backup's pod has no ServiceAccount token mounted. A pull
secret given once in the chart's `defaults.job` reaches a Backup's Job."""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from tests.e2e.test_operator import backup_spec
from tests.support.cluster import Cluster, wait_for
from tests.support.operator import OPERATOR_NAMESPACE, RELEASE, App, install_operator

pytestmark = pytest.mark.e2e

TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
PRIORITY = 900_000
# Nothing listens there: any S3 call that went through the proxy would fail the run, so a
# success also shows that NO_PROXY keeps in-cluster traffic direct.
DEAD_PROXY = "http://proxy.invalid:3128"


@pytest.fixture
def priority_class(cluster: Cluster) -> Iterator[str]:
    """A PriorityClass (cluster-scoped, so named per test run and deleted after)."""
    scheduling = k8s.SchedulingV1Api(cluster.api)
    name = f"e2e-backup-{secrets.token_hex(4)}"
    scheduling.create_priority_class({"metadata": {"name": name}, "value": PRIORITY,
                                      "preemptionPolicy": "Never",
                                      "description": "e2e: test_job_settings"})
    yield name
    scheduling.delete_priority_class(name)


def pull_secret(cluster: Cluster, namespace: str) -> str:
    """A dockerconfigjson Secret for a registry the image never comes from: the image is
    already on the node (pull policy IfNotPresent), so the pod starts; the Secret shows up in
    its spec."""
    auth = base64.b64encode(b"e2e:not-a-password").decode()
    config = {"auths": {"registry.invalid": {"auth": auth}}}
    cluster.core.create_namespaced_secret(namespace, {
        "metadata": {"name": "registry-credentials"},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()},
    })
    return "registry-credentials"


def service_account(cluster: Cluster, namespace: str) -> str:
    """Stands in for one carrying a workload identity annotation (no RBAC bound to it)."""
    cluster.core.create_namespaced_service_account(namespace, {
        "metadata": {"name": "backup-identity",
                     "annotations": {"eks.amazonaws.com/role-arn":
                                     "arn:aws:iam::111122223333:role/e2e-unused"}}})
    return "backup-identity"


def job_settings(cluster: Cluster, namespace: str, priority_class: str) -> dict[str, Any]:
    return {
        "priorityClassName": priority_class,
        "imagePullSecrets": [pull_secret(cluster, namespace)],
        "serviceAccountName": service_account(cluster, namespace),
        "podLabels": {"team": "timesheet", "cost-center": "backup"},
        "podAnnotations": {"example.com/purpose": "nightly backup"},
        "env": [
            {"name": "HTTP_PROXY", "value": DEAD_PROXY},
            {"name": "HTTPS_PROXY", "value": ""},  # set but empty: no proxy for https
            {"name": "NO_PROXY", "value": ".svc,.cluster.local,localhost,127.0.0.1"},
        ],
    }


def job_pod(app: App, job_name: str) -> k8s.V1Pod:
    pods = app.cluster.core.list_namespaced_pod(app.namespace,
                                                label_selector=f"job-name={job_name}").items
    assert pods, f"no pod of Job {job_name}"
    return pods[0]


def mount_paths(pod: k8s.V1Pod) -> set[str]:
    return {m.mount_path for m in pod.spec.containers[0].volume_mounts or []}


def assert_settings_on(pod: k8s.V1Pod, priority_class: str) -> None:
    spec = pod.spec
    assert spec.priority_class_name == priority_class
    assert spec.priority == PRIORITY  # resolved by the API server's Priority admission
    assert [s.name for s in spec.image_pull_secrets or []] == ["registry-credentials"]
    assert spec.service_account_name == "backup-identity"
    assert spec.automount_service_account_token is True
    assert TOKEN_PATH in mount_paths(pod)  # the token volume is there
    labels = pod.metadata.labels
    assert labels["team"] == "timesheet" and labels["cost-center"] == "backup"
    assert labels["app.kubernetes.io/managed-by"] == "timesheet-backup-operator"
    assert pod.metadata.annotations["example.com/purpose"] == "nightly backup"
    env = {e.name: e.value for e in spec.containers[0].env}
    assert env["HTTP_PROXY"] == DEAD_PROXY
    assert env["HTTPS_PROXY"] in ("", None)
    assert env["NO_PROXY"].startswith(".svc,")
    # Locked down all the same.
    container = spec.containers[0].security_context
    assert container.read_only_root_filesystem is True
    assert container.allow_privilege_escalation is False
    assert container.capabilities.drop == ["ALL"]
    assert spec.security_context.run_as_non_root is True


def test_backup_and_restore_run_with_the_job_settings(app: App, priority_class: str) -> None:
    settings = job_settings(app.cluster, app.namespace, priority_class)
    app.create("backups", "private", backup_spec(app, components=["database"], job=settings))
    backup = app.wait_phase("backups", "private", ("Succeeded", "Failed"))
    assert backup["status"]["phase"] == "Succeeded", json.dumps(backup["status"], indent=1)
    assert backup["status"]["resolved"]["job"]["priorityClassName"] == priority_class
    assert_settings_on(job_pod(app, backup["status"]["jobName"]), priority_class)

    target = f"{app.database}_private"
    app.create("restores", "private-restore", {
        "backupName": "private",
        "database": {"name": target, "createDatabase": True},
        "job": settings,
    })
    restore = app.wait_phase("restores", "private-restore", ("Succeeded", "Failed"),
                             timeout=300)
    assert restore["status"]["phase"] == "Succeeded", json.dumps(restore["status"], indent=1)
    assert app.database_exists(target)
    assert_settings_on(job_pod(app, restore["status"]["jobName"]), priority_class)


def test_a_plain_backup_pod_has_no_token(app: App) -> None:
    app.create("backups", "plain", backup_spec(app, components=["database"]))
    backup = app.wait_phase("backups", "plain", ("Succeeded", "Failed"))
    assert backup["status"]["phase"] == "Succeeded", json.dumps(backup["status"], indent=1)
    pod = job_pod(app, backup["status"]["jobName"])
    assert pod.spec.automount_service_account_token is False
    assert TOKEN_PATH not in mount_paths(pod)
    assert not pod.spec.image_pull_secrets and not pod.spec.priority_class_name
    assert pod.spec.service_account_name == "default"
    job = app.cluster.batch.read_namespaced_job(backup["status"]["jobName"], app.namespace)
    assert job.spec.ttl_seconds_after_finished == 86400  # kept a day by default


def test_reserved_names_are_refused_by_the_api_server(app: App) -> None:
    for job, message in (
        ({"env": [{"name": "PGPASSWORD", "value": "x"}]}, "the agent sets or reads"),
        ({"env": [{"name": "TSB_AGE_IDENTITY", "value": "x"}]}, "TSB_* names are its own"),
        ({"podLabels": {"backup.northstar.io/backup": "other"}},
         "the operator and the Job controller set"),
        ({"podLabels": {"app.kubernetes.io/managed-by": "me"}},
         "the operator and the Job controller set"),
    ):
        with pytest.raises(k8s.ApiException) as refused:
            app.create("backups", "refused", backup_spec(app, job=job))
        assert refused.value.status == 422, refused.value.body
        assert message in refused.value.body, refused.value.body


def operator_settled(cluster: Cluster) -> str | None:
    """After a `helm upgrade`: the name of the one operator pod left, once it is Ready and
    holds the Lease (so no pod of the previous release can still create a Job)."""
    pods = [p for p in cluster.core.list_namespaced_pod(
        OPERATOR_NAMESPACE, label_selector="app.kubernetes.io/name=timesheet-backup-operator"
    ).items]
    if len(pods) != 1 or pods[0].metadata.deletion_timestamp or not any(
            c.type == "Ready" and c.status == "True" for c in pods[0].status.conditions or []):
        return None
    lease = k8s.CoordinationV1Api(cluster.api).read_namespaced_lease(
        f"{RELEASE}-timesheet-backup-operator", OPERATOR_NAMESPACE)
    name = pods[0].metadata.name
    return name if lease.spec.holder_identity == name else None


@pytest.fixture
def defaults_install(cluster: Cluster) -> Iterator[None]:
    """The operator installed with Job defaults from the chart's values; the standard
    install again afterwards, whatever happens."""
    defaults = {"imagePullSecrets": ["registry-credentials"],
                "podLabels": {"team": "from-defaults"},
                "env": [{"name": "NO_PROXY", "value": ".svc,.cluster.local"}]}
    try:
        install_operator(cluster, "--set-json", f"defaults.job={json.dumps(defaults)}")
        wait_for(lambda: operator_settled(cluster), 120,
                 message="the upgraded operator did not take over")
        yield
    finally:
        install_operator(cluster)
        wait_for(lambda: operator_settled(cluster), 120,
                 message="the standard operator did not take over")


def test_a_pull_secret_from_the_operators_defaults(app: App, defaults_install: None) -> None:
    """Issue 17's case: a namespace whose registry needs a pull secret, given once in the
    chart's `defaults.job`, reaches every Job; the resource's own settings merge over it."""
    pull_secret(app.cluster, app.namespace)
    app.create("backups", "from-defaults", backup_spec(
        app, components=["database"], job={"podLabels": {"cost-center": "backup"}}))
    backup = app.wait_phase("backups", "from-defaults", ("Succeeded", "Failed"))
    assert backup["status"]["phase"] == "Succeeded", json.dumps(backup["status"], indent=1)
    pod = job_pod(app, backup["status"]["jobName"])
    assert [s.name for s in pod.spec.image_pull_secrets or []] == ["registry-credentials"]
    assert pod.metadata.labels["team"] == "from-defaults"
    assert pod.metadata.labels["cost-center"] == "backup"
    env = {e.name: e.value for e in pod.spec.containers[0].env}
    assert env["NO_PROXY"] == ".svc,.cluster.local"
    # The chart's measured resources are still the defaults' (Helm merged the values).
    assert pod.spec.containers[0].resources.requests["memory"] == "256Mi"


def job_exists(app: App, name: str) -> bool:
    try:
        app.cluster.batch.read_namespaced_job(name, app.namespace)
    except k8s.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def test_a_short_ttl_removes_the_finished_job_and_the_backup_stays_succeeded(app: App) -> None:
    """job.ttlSecondsAfterFinished reaches the Job; the real kube-controller-manager's
    ttl-after-finished controller removes it once finished; the operator does not take the
    vanished Job of its Backup for a failure (JobMissing) -- also when the Job went before
    the operator's poll saw it finish (then the manifest in the bucket says it did)."""
    app.create("backups", "short-lived", backup_spec(
        app, components=["database"], job={"ttlSecondsAfterFinished": 5}))
    backup = app.wait_phase("backups", "short-lived", ("Succeeded", "Failed"))
    assert backup["status"]["phase"] == "Succeeded", json.dumps(backup["status"], indent=1)
    assert backup["status"]["resolved"]["job"]["ttlSecondsAfterFinished"] == 5
    job_name = backup["status"]["jobName"]
    wait_for(lambda: not job_exists(app, job_name), 60,
             message=f"Job {job_name} was not removed 5 s after it finished")
    # Several of the operator's polls (5 s) later it is still Succeeded, with no failure.
    time.sleep(12)
    after = app.get("backups", "short-lived")
    assert after["status"]["phase"] == "Succeeded", json.dumps(after["status"], indent=1)
    assert after["status"]["completionTime"] == backup["status"]["completionTime"]
    assert not any(e.reason in ("JobMissing", "Failed") for e in app.events("short-lived"))

