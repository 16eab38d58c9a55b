"""Smoke tests of the e2e harness itself: does the cluster behave like Kubernetes where
the operator's tests rely on it? (Jobs, Deployments, volumes, Secrets, RBAC, GC,
namespace deletion, image pull failures, Services to the host.)

They run unchanged on the local cluster's real node and on kind.
"""

from __future__ import annotations

import socket
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from tests.support.cluster import (
    Cluster,
    create_namespace,
    delete_namespace,
    pod_manifest,
    secret_data,
    wait_for,
    wait_pod_phase,
)

pytestmark = pytest.mark.e2e


# ---- helpers ------------------------------------------------------------------------------

def job_manifest(name: str, image: str, command: list[str] | None = None,
                 args: list[str] | None = None, backoff_limit: int = 0,
                 deadline: int | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": image}
    if command:
        container["command"] = command
    if args:
        container["args"] = args
    spec: dict[str, Any] = {
        "backoffLimit": backoff_limit,
        "template": {"spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 5,
                              "containers": [container]}},
    }
    if deadline is not None:
        spec["activeDeadlineSeconds"] = deadline
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec}


def job_condition(cluster: Cluster, ns: str, name: str, ctype: str) -> k8s.V1JobCondition | None:
    job = cluster.batch.read_namespaced_job(name, ns)
    for cond in job.status.conditions or []:
        if cond.type == ctype and cond.status == "True":
            return cond
    return None


def job_pods(cluster: Cluster, ns: str, name: str) -> list[k8s.V1Pod]:
    return cluster.core.list_namespaced_pod(ns, label_selector=f"job-name={name}").items


def waiting_reason(pod: k8s.V1Pod) -> str | None:
    for cs in pod.status.container_statuses or []:
        if cs.state and cs.state.waiting:
            return cs.state.waiting.reason
    return None


def all_logs(cluster: Cluster, ns: str, pod: str) -> str:
    return "\n".join(cluster.pod_logs(ns, pod).values())


# ---- 1-3: Jobs ---------------------------------------------------------------------------

def test_job_with_project_image_completes(cluster: Cluster, namespace: str) -> None:
    cluster.batch.create_namespaced_job(namespace, job_manifest(
        "help", cluster.image, args=["--help"]))
    wait_for(lambda: job_condition(cluster, namespace, "help", "Complete"), 90,
             message="Job help never Complete")
    pods = job_pods(cluster, namespace, "help")
    assert [p.status.phase for p in pods] == ["Succeeded"]
    assert "usage" in all_logs(cluster, namespace, pods[0].metadata.name).lower()


def test_failing_job_retries_then_fails(cluster: Cluster, namespace: str) -> None:
    cluster.batch.create_namespaced_job(namespace, job_manifest(
        "fail", cluster.shell_image, command=["sh", "-c", "echo failing on purpose; exit 3"],
        backoff_limit=1))
    cond = wait_for(lambda: job_condition(cluster, namespace, "fail", "Failed"), 120,
                    message="Job fail never Failed")
    assert cond.reason == "BackoffLimitExceeded"
    pods = job_pods(cluster, namespace, "fail")
    assert len(pods) == 2
    for pod in pods:
        assert pod.status.phase == "Failed"
        terminated = pod.status.container_statuses[0].state.terminated
        assert terminated is not None and terminated.exit_code == 3
        assert "failing on purpose" in all_logs(cluster, namespace, pod.metadata.name)


def test_active_deadline_kills_slow_job_and_pod(cluster: Cluster, namespace: str) -> None:
    cluster.batch.create_namespaced_job(namespace, job_manifest(
        "slow", cluster.shell_image, command=["sleep", "300"], deadline=3))
    cond = wait_for(lambda: job_condition(cluster, namespace, "slow", "Failed"), 60,
                    message="Job slow never Failed")
    assert cond.reason == "DeadlineExceeded"
    # The Job controller deletes its pods; the node stops them and lets them go.
    wait_for(lambda: all(p.status.phase in ("Failed", "Succeeded")
                         for p in job_pods(cluster, namespace, "slow")), 60,
             message="pods of Job slow still running")

    # A pod's own activeDeadlineSeconds is enforced by the node.
    cluster.core.create_namespaced_pod(namespace, pod_manifest(
        "deadline", cluster.shell_image, ["sleep", "300"], activeDeadlineSeconds=2))
    pod = wait_pod_phase(cluster, namespace, "deadline", ("Failed",), 60)
    assert pod.status.reason == "DeadlineExceeded"


# ---- 4: Deployment ---------------------------------------------------------------------------

def test_deployment_scales_up_and_down(cluster: Cluster, namespace: str) -> None:
    labels = {"app": "web"}
    cluster.apps.create_namespaced_deployment(namespace, {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {
                "terminationGracePeriodSeconds": 5,
                "containers": [{"name": "main", "image": cluster.shell_image,
                                "command": ["sh", "-c", "echo up; exec sleep 3600"]}],
            }},
        },
    })

    def pods() -> list[k8s.V1Pod]:
        return cluster.core.list_namespaced_pod(namespace, label_selector="app=web").items

    def scale(replicas: int) -> None:
        cluster.apps.patch_namespaced_deployment_scale(
            "web", namespace, {"spec": {"replicas": replicas}})

    scale(2)
    wait_for(lambda: (cluster.apps.read_namespaced_deployment("web", namespace)
                      .status.ready_replicas or 0) == 2, 60,
             message="Deployment web never had 2 ready replicas")
    assert sorted(p.status.phase for p in pods()) == ["Running", "Running"]
    scale(0)
    wait_for(lambda: not pods(), 60, message="pods of Deployment web not gone")


# ---- 5-7: volumes, Secrets, security context, RBAC ---------------------------------------

def test_pvc_data_survives_pods(cluster: Cluster, namespace: str) -> None:
    cluster.core.create_namespaced_persistent_volume_claim(namespace, {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "16Mi"}}},
    })
    volume = {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
              "volumeMounts": [{"name": "data", "mountPath": "/data"}]}
    cluster.core.create_namespaced_pod(namespace, pod_manifest(
        "writer", cluster.shell_image, ["sh", "-c", "echo hello-pvc > /data/greeting"],
        **volume))
    wait_pod_phase(cluster, namespace, "writer", ("Succeeded",), 90)
    cluster.core.create_namespaced_pod(namespace, pod_manifest(
        "reader", cluster.shell_image,
        ["sh", "-c", 'test "$(cat /data/greeting)" = hello-pvc && echo read-ok'],
        **{"volumes": volume["volumes"],
           "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}]}))
    wait_pod_phase(cluster, namespace, "reader", ("Succeeded",), 60)
    assert "read-ok" in all_logs(cluster, namespace, "reader")
    pvc = cluster.core.read_namespaced_persistent_volume_claim("data", namespace)
    assert pvc.status.phase == "Bound"


def test_secret_via_env_and_volume(cluster: Cluster, namespace: str) -> None:
    cluster.core.create_namespaced_secret(namespace, {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
        "data": secret_data({"username": "alice", "password": "s3cr3t"}),
    })
    script = ('test "$PASSWORD" = s3cr3t && test "$CRED_username" = alice '
              '&& test "$(cat /etc/creds/password)" = s3cr3t && echo secret-ok')
    cluster.core.create_namespaced_pod(namespace, pod_manifest(
        "reader", cluster.shell_image, ["sh", "-c", script],
        env=[{"name": "PASSWORD",
              "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}}],
        envFrom=[{"prefix": "CRED_", "secretRef": {"name": "creds"}}],
        volumes=[{"name": "creds", "secret": {"secretName": "creds"}}],
        volumeMounts=[{"name": "creds", "mountPath": "/etc/creds", "readOnly": True}],
    ))
    wait_pod_phase(cluster, namespace, "reader", ("Succeeded",), 60)
    assert "secret-ok" in all_logs(cluster, namespace, "reader")

    # A missing Secret key is a container config error, as on any kubelet.
    cluster.core.create_namespaced_pod(namespace, pod_manifest(
        "missing", cluster.shell_image, ["true"],
        env=[{"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope"}}}]))
    wait_for(lambda: waiting_reason(cluster.core.read_namespaced_pod("missing", namespace))
             == "CreateContainerConfigError", 60, message="no CreateContainerConfigError")


def test_security_context(cluster: Cluster, namespace: str) -> None:
    script = ('test "$(id -u)" = 1000 && test "$(id -g)" = 3000 && id -G | grep -qw 2000 '
              '&& ! touch /should-fail 2>/dev/null && touch /scratch/ok && echo sc-ok')
    manifest = pod_manifest(
        "user", cluster.shell_image, ["sh", "-c", script],
        securityContext={"readOnlyRootFilesystem": True},
        volumes=[{"name": "scratch", "emptyDir": {}}],
        volumeMounts=[{"name": "scratch", "mountPath": "/scratch"}],
    )
    manifest["spec"]["securityContext"] = {"runAsUser": 1000, "runAsGroup": 3000,
                                           "fsGroup": 2000}
    cluster.core.create_namespaced_pod(namespace, manifest)
    wait_pod_phase(cluster, namespace, "user", ("Succeeded",), 60)
    assert "sc-ok" in all_logs(cluster, namespace, "user")

    # runAsNonRoot with an image that runs as root is refused.
    manifest = pod_manifest("nonroot", cluster.shell_image, ["true"])
    manifest["spec"]["securityContext"] = {"runAsNonRoot": True}
    cluster.core.create_namespaced_pod(namespace, manifest)
    wait_for(lambda: waiting_reason(cluster.core.read_namespaced_pod("nonroot", namespace))
             == "CreateContainerConfigError", 60, message="runAsNonRoot not enforced")


RBAC_SCRIPT = textwrap.dedent("""
    import sys
    from kubernetes import client, config
    config.load_incluster_config()
    api = client.CoreV1Api()
    ns = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read().strip()
    names = [c.metadata.name for c in api.list_namespaced_config_map(ns).items]
    print("configmaps:", names)
    try:
        api.list_namespaced_secret(ns)
    except client.ApiException as exc:
        print("secrets:", exc.status)
        sys.exit(0 if exc.status == 403 else 4)
    sys.exit(5)
""")


def test_service_account_rbac_is_enforced(cluster: Cluster, namespace: str) -> None:
    cluster.core.create_namespaced_service_account(namespace, {
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}})
    cluster.rbac.create_namespaced_role(namespace, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "cm-reader"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
    })
    cluster.rbac.create_namespaced_role_binding(namespace, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "cm-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
    })
    cluster.core.create_namespaced_pod(namespace, pod_manifest(
        "rbac", cluster.image, ["python", "-c", RBAC_SCRIPT], serviceAccountName="reader"))
    wait_pod_phase(cluster, namespace, "rbac", ("Succeeded",), 90)
    logs = all_logs(cluster, namespace, "rbac")
    assert "kube-root-ca.crt" in logs and "secrets: 403" in logs

    cluster.core.create_namespaced_pod(namespace, pod_manifest(
        "notoken", cluster.shell_image,
        ["sh", "-c", "test ! -e /var/run/secrets/kubernetes.io/serviceaccount/token"],
        automountServiceAccountToken=False))
    wait_pod_phase(cluster, namespace, "notoken", ("Succeeded",), 60)


# ---- 8: garbage collection and namespace deletion ----------------------------------------

def test_owner_reference_gc_and_namespace_deletion(cluster: Cluster, namespace: str) -> None:
    owner = cluster.core.create_namespaced_config_map(namespace, {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}})
    cluster.core.create_namespaced_config_map(namespace, {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {
            "name": "dependant",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                                 "uid": owner.metadata.uid}],
        }})
    cluster.core.delete_namespaced_config_map("owner", namespace)

    def dependant_gone() -> bool:
        names = [c.metadata.name for c in cluster.core.list_namespaced_config_map(namespace).items]
        return "dependant" not in names

    wait_for(dependant_gone, 60, message="dependant ConfigMap not garbage-collected")

    # A namespace with a running pod, a Job and a PVC goes away completely.
    other = create_namespace(cluster, "deleted")
    try:
        cluster.core.create_namespaced_pod(other, pod_manifest(
            "sleeper", cluster.shell_image, ["sleep", "3600"], restart="Always"))
        cluster.batch.create_namespaced_job(other, job_manifest(
            "job", cluster.shell_image, command=["sleep", "3600"]))
        cluster.core.create_namespaced_persistent_volume_claim(other, {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "1Mi"}}}})
        wait_pod_phase(cluster, other, "sleeper", ("Running",), 60)
        wait_for(lambda: [p for p in job_pods(cluster, other, "job")
                          if p.status.phase == "Running"], 60, message="job pod not running")
    finally:
        delete_namespace(cluster, other, timeout=120)


# ---- 9: image pull failure, Services to the host --------------------------------------------

def test_unknown_image_fails_to_pull(cluster: Cluster, namespace: str) -> None:
    cluster.core.create_namespaced_pod(namespace, pod_manifest(
        "nopull", "registry.invalid/tsb/not-an-image:0", ["true"]))

    def pull_failed() -> bool:
        pod = cluster.core.read_namespaced_pod("nopull", namespace)
        return (pod.status.phase == "Pending"
                and waiting_reason(pod) in ("ErrImagePull", "ImagePullBackOff"))

    wait_for(pull_failed, 90, message="pod with unknown image did not fail to pull")


@pytest.fixture
def host_server(cluster: Cluster) -> Iterator[tuple[int, bytes]]:
    """A TCP server on this host that answers a token: what pods must reach."""
    token = b"tsb-host-" + socket.gethostname().encode()[:20]
    server = socket.create_server((cluster.host_bind_address, 0))
    server.settimeout(0.5)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.sendall(token)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], token
    stop.set()
    server.close()
    thread.join(timeout=5)


CONNECT_SCRIPT = textwrap.dedent("""
    import socket, sys
    for host in sys.argv[1:]:
        with socket.create_connection((host, 7070), timeout=10) as s:
            data = s.recv(100)
        print(host, data.decode())
""")


def test_selectorless_service_reaches_host(cluster: Cluster, namespace: str,
                                           host_server: tuple[int, bytes]) -> None:
    port, token = host_server
    cluster.expose_host_port(namespace, "hostecho", 7070, port)
    cluster.core.create_namespaced_pod(namespace, pod_manifest(
        "client", cluster.image, ["python", "-c", CONNECT_SCRIPT],
        args=["hostecho", f"hostecho.{namespace}.svc.cluster.local"]))
    wait_pod_phase(cluster, namespace, "client", ("Succeeded",), 60)
    logs = all_logs(cluster, namespace, "client")
    assert logs.count(token.decode()) == 2, logs
