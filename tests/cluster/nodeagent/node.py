"""The Node object and its heartbeats (node status conditions and the node Lease)."""

from __future__ import annotations

import logging
import os
import platform
import socket
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

from .kube import ApiError, Kube

log = logging.getLogger("nodeagent.node")

Obj = dict[str, Any]
LEASE_SECONDS = 40
HEARTBEAT_SECONDS = 10


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _mem_bytes() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 8 * 2**30


def _read(path: str, default: str) -> str:
    try:
        with open(path) as fh:
            return fh.read().strip() or default
    except OSError:
        return default


def _resolvable_hostname() -> str:
    """The machine's host name when it resolves, else localhost.

    The API server reaches a node's kubelet port (for ``kubectl logs``) at the first
    address of its preferred types, Hostname first; the node *name* (tsb-node) does
    not resolve, so it must not be the Hostname address.
    """
    name = socket.gethostname()
    try:
        socket.gethostbyname(name)
        return name
    except OSError:
        return "localhost"


def _os_image() -> str:
    for line in _read("/etc/os-release", "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return "Linux"


class NodeAgentNode:
    """Registers the Node, keeps its conditions and Lease fresh."""

    def __init__(self, kube: Kube, name: str, max_pods: int, stop: threading.Event) -> None:
        self.kube = kube
        self.name = name
        self.max_pods = max_pods
        self.stop = stop
        self.uid = ""
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
        self.arch = arch
        cpus = os.cpu_count() or 1
        self.capacity = {
            "cpu": str(cpus),
            "memory": f"{_mem_bytes() // 1024}Ki",
            "pods": str(max_pods),
            "ephemeral-storage": "100Gi",
        }
        self.allocatable = dict(self.capacity)
        self.version = "v0.0.0"
        self.kubelet_port = 10250
        self.hostname = _resolvable_hostname()
        self._thread = threading.Thread(target=self._run, name="node-heartbeat", daemon=True)

    def labels(self) -> dict[str, str]:
        return {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": self.arch,
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": self.arch,
            "node.kubernetes.io/instance-type": "tsb-nodeagent",
        }

    def _conditions(self) -> list[Obj]:
        t = now_iso()

        def cond(ctype: str, status: str, reason: str, message: str) -> Obj:
            return {"type": ctype, "status": status, "reason": reason, "message": message,
                    "lastHeartbeatTime": t, "lastTransitionTime": self._started}

        return [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory",
                 "kubelet has sufficient memory available"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure",
                 "kubelet has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID",
                 "kubelet has sufficient PID available"),
            cond("Ready", "True", "KubeletReady", "tsb node agent is posting ready status"),
        ]

    def _status(self) -> Obj:
        return {
            "capacity": self.capacity,
            "allocatable": self.allocatable,
            "conditions": self._conditions(),
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.hostname},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port}},
            "nodeInfo": {
                "machineID": _read("/etc/machine-id", uuid.uuid4().hex),
                "systemUUID": _read("/sys/class/dmi/id/product_uuid", str(uuid.uuid4())),
                "bootID": _read("/proc/sys/kernel/random/boot_id", str(uuid.uuid4())),
                "kernelVersion": platform.release(),
                "osImage": _os_image(),
                "containerRuntimeVersion": "tsb-nodeagent://0.1.0",
                "kubeletVersion": self.version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": self.arch,
            },
        }

    def register(self) -> None:
        try:
            self.version = self.kube.get("/version").get("gitVersion", self.version)
        except ApiError as exc:
            log.warning("cannot read /version: %s", exc)
        self._started = now_iso()
        path = f"/api/v1/nodes/{self.name}"
        node = self.kube.get_or_none(path)
        if node is None:
            node = self.kube.post("/api/v1/nodes", {
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.name, "labels": self.labels()},
                "spec": {},
            })
            log.info("registered node %s", self.name)
        else:
            self.kube.patch(path, {"metadata": {"labels": self.labels()}})
            log.info("node %s already registered; taking it over", self.name)
        self.uid = node["metadata"]["uid"]
        # A restarted agent must not inherit taints a lifecycle controller left behind.
        taints = [t for t in (node.get("spec") or {}).get("taints") or []
                  if not t["key"].startswith("node.kubernetes.io/")]
        self.kube.patch(path, {"spec": {"taints": taints or None, "unschedulable": None}})
        self.kube.patch(path + "/status", {"status": self._status()})
        self._renew_lease()

    def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.name}"
        spec = {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": now_micro()}
        try:
            self.kube.patch(path, {"spec": spec})
        except ApiError as exc:
            if exc.status != 404:
                raise
            self.kube.post("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": "kube-node-lease",
                             "ownerReferences": [{"apiVersion": "v1", "kind": "Node",
                                                  "name": self.name, "uid": self.uid}]},
                "spec": spec,
            })

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self.stop.wait(HEARTBEAT_SECONDS):
            try:
                self._renew_lease()
                self.kube.patch(f"/api/v1/nodes/{self.name}/status",
                                {"status": {"conditions": self._conditions()}},
                                content_type="application/strategic-merge-patch+json")
            except ApiError as exc:
                if exc.status == 404:
                    log.warning("node or lease vanished; registering again")
                    try:
                        self.register()
                    except Exception as again:
                        log.warning("re-registration failed: %s", again)
                else:
                    log.warning("heartbeat failed: %s", exc)
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)
