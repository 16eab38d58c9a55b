"""e2e fixtures and helpers: a cluster (local control plane or kind), a fresh namespace per
test, API clients, pod logs, and waiting with timeouts.

Providers (``E2E_PROVIDER``):

- ``local`` (default): ``tests/cluster/cluster-up.sh`` (idempotent) starts etcd,
  kube-apiserver, kube-controller-manager and a real node (kubelet, containerd, runc, CNI,
  kube-scheduler, kube-proxy, CoreDNS) running the images ``make image`` built, and writes
  ``.cluster/env``. The host is 192.0.2.1 to pods (an address on lo).
- ``kind``: creates (or reuses) a kind cluster, builds the image from the root
  Dockerfile and loads it. Without a Docker engine the session fails, loudly.
- ``existing``: $KUBECONFIG as it is, with the images already on its nodes.

Pods reach the host (PostgreSQL, S3, a test's TCP server) through a selectorless
Service whose EndpointSlice points at ``cluster.host_address``: see
``expose_host_port``. Logs come from the API (``kubectl logs``), as anywhere.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_DIR = Path(os.environ.get("TSB_CLUSTER_DIR") or REPO_ROOT / ".cluster")
LOCAL_HOST_ALIAS = "192.0.2.1"  # cluster-up adds it to lo; pods route to it via their bridge
LOCAL_SHELL_IMAGE = "tsb-test/shell:1"
KIND_SHELL_IMAGE = "busybox:1.36"

T = TypeVar("T")


# ---- waiting ----------------------------------------------------------------------------

def wait_for(
    predicate: Callable[[], T],
    timeout: float = 60.0,
    interval: float = 0.25,
    message: str | Callable[[], str] = "condition not met",
) -> T:
    """Poll until ``predicate()`` is truthy and return it; fail with ``message`` on timeout.

    Exceptions from the predicate count as "not yet" (the API may briefly answer
    404 right after a create); the last one is reported on timeout.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    error: BaseException | None = None
    while True:
        try:
            last = predicate()
            error = None
            if last:
                return last
        except Exception as exc:
            error = exc
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            detail = f"; last error: {error!r}" if error else f"; last value: {last!r}"
            raise AssertionError(f"timed out after {timeout:.0f}s: {text}{detail}")
        time.sleep(interval)


# ---- the cluster ----------------------------------------------------------------------

@dataclass
class Cluster:
    provider: str
    kubeconfig: Path
    env: dict[str, str]
    image: str
    shell_image: str
    host_address: str  # where pods reach this host (an EndpointSlice address)
    host_bind_address: str  # where a test server must listen for pods to reach it
    _api: k8s.ApiClient | None = field(default=None, repr=False)

    @property
    def api(self) -> k8s.ApiClient:
        if self._api is None:
            self._api = k8s_config.new_client_from_config(config_file=str(self.kubeconfig))
        return self._api

    @cached_property
    def core(self) -> k8s.CoreV1Api:
        return k8s.CoreV1Api(self.api)

    @cached_property
    def batch(self) -> k8s.BatchV1Api:
        return k8s.BatchV1Api(self.api)

    @cached_property
    def apps(self) -> k8s.AppsV1Api:
        return k8s.AppsV1Api(self.api)

    @cached_property
    def rbac(self) -> k8s.RbacAuthorizationV1Api:
        return k8s.RbacAuthorizationV1Api(self.api)

    @cached_property
    def discovery(self) -> k8s.DiscoveryV1Api:
        return k8s.DiscoveryV1Api(self.api)

    @cached_property
    def networking(self) -> k8s.NetworkingV1Api:
        return k8s.NetworkingV1Api(self.api)

    @cached_property
    def custom(self) -> k8s.CustomObjectsApi:
        return k8s.CustomObjectsApi(self.api)

    def pod_logs(self, namespace: str, pod: str) -> dict[str, str]:
        return pod_logs(namespace, pod, self)

    def container_pid(self, namespace: str, pod: str, container: str) -> int | None:
        """The host PID of a running container's main process, as containerd reports it
        (None while it is not running). Only the local provider's node is this host."""
        if self.provider != "local":
            pytest.fail(f"a container's host process needs the local node, not {self.provider}",
                        pytrace=False)
        status = self.core.read_namespaced_pod(pod, namespace).status
        ids = [s.container_id for s in status.container_statuses or []
               if s.name == container and s.state.running and s.container_id]
        if not ids:
            return None
        out = subprocess.run(
            [str(Path(self.env["TSB_NODE_BIN"]) / "crictl"), "--runtime-endpoint",
             self.env["CONTAINER_RUNTIME_ENDPOINT"], "inspect", "-o", "json",
             ids[0].split("://", 1)[1]], capture_output=True, text=True, timeout=30)
        return int(json.loads(out.stdout)["info"]["pid"]) if out.returncode == 0 else None

    def expose_host_port(self, namespace: str, name: str, port: int, host_port: int) -> None:
        """A selectorless Service ``name:port`` whose backend is ``host_port`` on this host.

        The same manifests work on a real cluster; only the address differs.
        """
        self.core.create_namespaced_service(namespace, {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name},
            "spec": {"ports": [{"name": "tcp", "port": port, "targetPort": host_port,
                                "protocol": "TCP"}]},
        })
        self.discovery.create_namespaced_endpoint_slice(namespace, {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-host", "labels": {
                "kubernetes.io/service-name": name,
                "endpointslice.kubernetes.io/managed-by": "tsb-e2e",
            }},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [self.host_address], "conditions": {"ready": True}}],
            "ports": [{"name": "tcp", "port": host_port, "protocol": "TCP"}],
        })
        if self.provider == "local":
            self._wait_programmed(namespace, name)

    def _wait_programmed(self, namespace: str, name: str) -> None:
        """Wait until kube-proxy has written the Service's rules, as a client on a real node
        must: a pod's first SYN sent before them is conntracked un-translated, and its
        retries then never reach the backend. This host is the node, so its nat table tells.
        """
        mark = f"{namespace}/{name}:tcp -> "

        def programmed() -> bool:
            out = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True,
                                 text=True, check=True).stdout
            return mark in out

        wait_for(programmed, 30, interval=0.2,
                 message=f"kube-proxy never wrote the rules of Service {namespace}/{name}")


def read_env_file(path: Path) -> dict[str, str]:
    """``export K=V`` lines (as cluster-up writes them) into a dict; $PATH is not expanded."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"]:
            words = words[1:]
        for word in words:
            key, sep, value = word.partition("=")
            if sep and key.isidentifier():
                values[key] = value
    return values


def _local_cluster() -> Cluster:
    script = REPO_ROOT / "tests" / "cluster" / "cluster-up.sh"
    result = subprocess.run(["bash", str(script)], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=3600)
    if result.returncode != 0:
        pytest.fail(f"tests/cluster/cluster-up.sh failed (exit {result.returncode}):\n"
                    f"{result.stderr[-4000:]}", pytrace=False)
    env = read_env_file(CLUSTER_DIR / "env")
    cluster = Cluster(
        provider="local",
        kubeconfig=Path(env.get("KUBECONFIG", CLUSTER_DIR / "kubeconfig")),
        env=env,
        image=env.get("E2E_IMAGE", "timesheet-backup-operator:dev"),
        shell_image=LOCAL_SHELL_IMAGE,
        host_address=env.get("TSB_HOST_ALIAS", LOCAL_HOST_ALIAS),
        host_bind_address=env.get("TSB_HOST_ALIAS", LOCAL_HOST_ALIAS),
    )
    _wait_ready_node(cluster)
    return cluster


def _run(argv: list[str], what: str, timeout: float = 1800) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"{what} failed: {' '.join(argv)}\n{result.stderr[-4000:]}", pytrace=False)
    return result.stdout


def _kind_cluster() -> Cluster:
    docker, kind = shutil.which("docker"), shutil.which("kind")
    if docker is None:
        pytest.fail("E2E_PROVIDER=kind needs Docker, but there is no docker binary on PATH; "
                    "unset E2E_PROVIDER to use the local cluster", pytrace=False)
    if subprocess.run([docker, "info"], capture_output=True).returncode != 0:
        pytest.fail("E2E_PROVIDER=kind needs a running Docker engine ('docker info' failed); "
                    "unset E2E_PROVIDER to use the local cluster", pytrace=False)
    if kind is None:
        pytest.fail("E2E_PROVIDER=kind needs the kind binary on PATH", pytrace=False)
    name = os.environ.get("KIND_CLUSTER_NAME", "tsb-e2e")
    image = os.environ.get("E2E_IMAGE", "timesheet-backup-operator:dev")
    if name not in _run([kind, "get", "clusters"], "kind get clusters").split():
        _run([kind, "create", "cluster", "--name", name, "--wait", "180s"], "kind create")
    CLUSTER_DIR.mkdir(parents=True, exist_ok=True)
    kubeconfig = CLUSTER_DIR / f"kind-{name}.kubeconfig"
    kubeconfig.write_text(_run([kind, "get", "kubeconfig", "--name", name], "kind kubeconfig"))
    _run([docker, "build", "-t", image, str(REPO_ROOT)], "docker build")
    _run([kind, "load", "docker-image", image, "--name", name], "kind load")
    gateway = _run([docker, "network", "inspect", "kind", "-f",
                    "{{range .IPAM.Config}}{{.Gateway}} {{end}}"], "docker network inspect")
    ipv4 = [g for g in gateway.split() if re.fullmatch(r"[0-9.]+", g)]
    cluster = Cluster(
        provider="kind", kubeconfig=kubeconfig, env=dict(os.environ), image=image,
        shell_image=KIND_SHELL_IMAGE, host_address=ipv4[0] if ipv4 else "172.18.0.1",
        host_bind_address="0.0.0.0",
    )
    _wait_ready_node(cluster)
    return cluster


def _wait_ready_node(cluster: Cluster) -> None:
    def ready() -> bool:
        for node in cluster.core.list_node().items:
            for cond in node.status.conditions or []:
                if cond.type == "Ready" and cond.status == "True":
                    return True
        return False

    wait_for(ready, 120, message="no Ready node in the cluster")


def _existing_cluster() -> Cluster:
    """Whatever $KUBECONFIG points at, with the images (E2E_IMAGE, E2E_SHELL_IMAGE) on its
    nodes and pods able to reach TSB_HOST_ALIAS (this host)."""
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig:
        pytest.fail("E2E_PROVIDER=existing needs KUBECONFIG", pytrace=False)
    alias = os.environ.get("TSB_HOST_ALIAS", LOCAL_HOST_ALIAS)
    cluster = Cluster(
        provider="existing", kubeconfig=Path(kubeconfig), env=dict(os.environ),
        image=os.environ.get("E2E_IMAGE", "timesheet-backup-operator:dev"),
        shell_image=os.environ.get("E2E_SHELL_IMAGE", LOCAL_SHELL_IMAGE),
        host_address=alias, host_bind_address=alias,
    )
    _wait_ready_node(cluster)
    return cluster


def start_cluster() -> Cluster:
    provider = os.environ.get("E2E_PROVIDER", "local")
    if provider == "local":
        return _local_cluster()
    if provider == "kind":
        return _kind_cluster()
    if provider == "existing":
        return _existing_cluster()
    pytest.fail(f"unknown E2E_PROVIDER={provider!r} (use local, kind or existing)",
                pytrace=False)


# ---- logs and diagnostics -----------------------------------------------------------------

def pod_logs(namespace: str, pod: str, cluster: Cluster | None = None) -> dict[str, str]:
    """Output of each container of a pod, by container name, through the API's log
    subresource (the kubelet serves it): the previous run first when the container restarted.
    """
    if cluster is None:
        return {}
    out: dict[str, str] = {}
    with contextlib.suppress(k8s.ApiException):
        obj = cluster.core.read_namespaced_pod(pod, namespace)
        restarts = {s.name: s.restart_count for s in (obj.status.init_container_statuses or [])
                    + (obj.status.container_statuses or [])}
        for c in (obj.spec.init_containers or []) + obj.spec.containers:
            text = ""
            if restarts.get(c.name):
                with contextlib.suppress(k8s.ApiException):
                    text = cluster.core.read_namespaced_pod_log(
                        pod, namespace, container=c.name, previous=True) or ""
            try:
                text += cluster.core.read_namespaced_pod_log(pod, namespace,
                                                             container=c.name) or ""
            except k8s.ApiException as exc:
                text += f"<no logs: {exc.status} {exc.reason}>"
            out[c.name] = text
    return out


def describe_namespace(cluster: Cluster, namespace: str) -> str:
    """Pods (phase, container states) with their logs, and recent events: printed on failure."""
    lines: list[str] = []
    try:
        pods = cluster.core.list_namespaced_pod(namespace).items
    except k8s.ApiException as exc:
        return f"cannot list pods in {namespace}: {exc.status} {exc.reason}"
    for pod in pods:
        lines.append(f"--- pod {pod.metadata.name}: phase={pod.status.phase} "
                     f"node={pod.spec.node_name}")
        statuses = (pod.status.init_container_statuses or []) + (
            pod.status.container_statuses or [])
        for cs in statuses:
            lines.append(f"    {cs.name}: restarts={cs.restart_count} {_state(cs.state)}"
                         + (f" last={_state(cs.last_state)}" if cs.restart_count else ""))
        for name, text in pod_logs(namespace, pod.metadata.name, cluster).items():
            tail = "\n".join(text.splitlines()[-60:])
            lines.append(f"    == {name} log ==\n{_indent(tail)}")
    with contextlib.suppress(k8s.ApiException):
        events = sorted(cluster.core.list_namespaced_event(namespace).items,
                        key=lambda e: str(e.last_timestamp or e.event_time
                                          or e.metadata.creation_timestamp))[-30:]
        if events:
            lines.append("--- events")
            lines += [f"    {e.type} {e.reason} {e.involved_object.kind}/"
                      f"{e.involved_object.name}: {e.message}" for e in events]
    return "\n".join(lines) or f"(nothing in namespace {namespace})"


def _state(state: k8s.V1ContainerState | None) -> str:
    if state is None:
        return "state=?"
    if state.running:
        return f"running(since {state.running.started_at})"
    if state.terminated:
        t = state.terminated
        message = f", message={t.message.strip()!r}" if t.message else ""
        return f"terminated(exit={t.exit_code}, reason={t.reason}{message})"
    if state.waiting:
        w = state.waiting
        message = f", message={w.message!r}" if w.message else ""
        return f"waiting(reason={w.reason}{message})"
    return "state=none"


def _indent(text: str) -> str:
    return "\n".join("      " + line for line in text.splitlines())


# ---- namespace ----------------------------------------------------------------------------

def create_namespace(cluster: Cluster, hint: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", hint.lower()).strip("-")[:40].strip("-") or "test"
    name = f"e2e-{slug}-{secrets.token_hex(3)}"
    cluster.core.create_namespace({"metadata": {"name": name, "labels": {"tsb-e2e": "true"}}})
    # Pods are refused until the serviceaccount controller created "default".
    wait_for(lambda: cluster.core.read_namespaced_service_account("default", name), 30,
             message=f"ServiceAccount default in {name}")
    return name


def delete_namespace(cluster: Cluster, name: str, timeout: float = 120,
                     force_pods: bool = False) -> None:
    """Delete and wait until it is gone, so leaks (stuck finalizers) fail loudly.

    ``force_pods`` first deletes the pods with grace period 0: the namespace
    controller otherwise waits out the pods' whole grace period (its estimate) even
    when they stop at once, which adds seconds to every test's teardown.
    """
    if force_pods:
        with contextlib.suppress(k8s.ApiException):
            cluster.core.delete_collection_namespaced_pod(name, grace_period_seconds=0)
    with contextlib.suppress(k8s.ApiException):
        cluster.core.delete_namespace(name)

    def gone() -> bool:
        try:
            cluster.core.read_namespace(name)
        except k8s.ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    def why() -> str:
        try:
            ns = cluster.core.read_namespace(name)
            conds = [f"{c.type}={c.status}: {c.message}" for c in ns.status.conditions or []]
            return f"namespace {name} still exists: {conds}"
        except k8s.ApiException as exc:
            return f"namespace {name}: {exc.status}"

    wait_for(gone, timeout, interval=0.5, message=why)


# ---- manifests ------------------------------------------------------------------------

def secret_data(values: dict[str, str]) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}


def pod_manifest(name: str, image: str, command: list[str] | None = None,
                 args: list[str] | None = None, restart: str = "Never",
                 **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": image}
    if command is not None:
        container["command"] = command
    if args is not None:
        container["args"] = args
    for key in ("env", "envFrom", "volumeMounts", "securityContext", "workingDir", "ports",
                "readinessProbe"):
        if key in spec:
            container[key] = spec.pop(key)
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": restart, "terminationGracePeriodSeconds": 5,
                 "containers": [container], **spec},
    }


def wait_pod_phase(cluster: Cluster, namespace: str, name: str, phases: tuple[str, ...],
                   timeout: float = 60) -> k8s.V1Pod:
    def check() -> k8s.V1Pod | None:
        pod = cluster.core.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase in phases else None

    return wait_for(check, timeout, message=lambda: (
        f"pod {namespace}/{name} never reached {phases}:\n{describe_namespace(cluster, namespace)}"
    ))


# ---- pytest fixtures ----------------------------------------------------------------------

@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The e2e cluster; started (or reused) once per session."""
    yield start_cluster()


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace, deleted (and waited for) after the test."""
    name = create_namespace(cluster, request.node.name)
    yield name
    delete_namespace(cluster, name, force_pods=True)


@pytest.fixture
def core_v1(cluster: Cluster) -> k8s.CoreV1Api:
    return cluster.core


@pytest.fixture
def batch_v1(cluster: Cluster) -> k8s.BatchV1Api:
    return cluster.batch


@pytest.fixture
def apps_v1(cluster: Cluster) -> k8s.AppsV1Api:
    return cluster.apps


@pytest.fixture
def rbac_v1(cluster: Cluster) -> k8s.RbacAuthorizationV1Api:
    return cluster.rbac


def report_namespace_on_failure(item: pytest.Item, report: pytest.TestReport) -> None:
    """Attach the test namespace's pods, logs and events to a failed test's report."""
    if not report.failed or report.when not in ("setup", "call"):
        return
    funcargs = getattr(item, "funcargs", {})
    cluster_obj, ns = funcargs.get("cluster"), funcargs.get("namespace")
    if not isinstance(cluster_obj, Cluster) or not isinstance(ns, str):
        return
    try:
        text = describe_namespace(cluster_obj, ns)
    except Exception as exc:
        text = f"could not describe namespace {ns}: {exc!r}"
    report.sections.append((f"pods and logs in namespace {ns}", text))
