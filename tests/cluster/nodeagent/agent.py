"""Wiring: informers feed the scheduler, the provisioner, the service proxy and the
per-pod workers; shutdown stops all of them and every process they started."""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .images import ImageRegistry
from .kube import Informer, Kube
from .logserver import LogServer
from .node import NodeAgentNode
from .pods import PodWorker
from .provisioner import Provisioner
from .runtime import Process, Spawner
from .scheduler import Scheduler
from .services import ServiceProxy

log = logging.getLogger("nodeagent")

Obj = dict[str, Any]


@dataclass
class Config:
    node_name: str = "tsb-node"
    max_pods: int = 110
    backoff_initial: float = 1.0  # the kubelet uses 10s; tests want restarts sooner
    backoff_max: float = 30.0  # the kubelet uses 300s
    backoff_reset: float = 60.0
    host_aliases: tuple[str, ...] = ("192.0.2.1",)
    kubelet_port: int = 10250  # taken if free, else any free port (published in the Node)


class Agent:
    def __init__(self, kube: Kube, state_dir: Path, images: ImageRegistry, config: Config,
                 repo_root: Path) -> None:
        self.kube = kube
        self.state_dir = state_dir
        self.images = images
        self.config = config
        self.node_name = config.node_name
        self.stop = threading.Event()
        self.apiserver = (kube.server_host, kube.server_port)
        self.ca_pem = Path(kube.ca_file).read_text() if kube.ca_file else None
        # Paths a non-root container user must reach (the interpreter may sit in /root).
        self.reachable = sorted({os.path.realpath(sys.base_prefix), str(repo_root)})
        self.node = NodeAgentNode(kube, config.node_name, config.max_pods, self.stop)
        self.spawner = Spawner()
        self.scheduler = Scheduler(kube, config.node_name, self.node.labels(), self.stop)
        self.provisioner = Provisioner(kube, state_dir / "pvs", config.node_name, self.stop)
        self.informers: dict[str, Informer] = {}
        self.services = ServiceProxy(set(config.host_aliases), self.apiserver, self._lookup)
        self.services.on_change.append(self._services_changed)
        self.logs = LogServer(self, config.kubelet_port)
        self.workers: dict[str, PodWorker] = {}
        self._workers_lock = threading.Lock()
        self._processes: list[Process] = []
        self._lock_file: Any = None

    # ---- lifecycle -------------------------------------------------------------------

    def run(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "pods").mkdir(exist_ok=True)
        (self.state_dir / "pvs").mkdir(exist_ok=True)
        self._lock_file = open(self.state_dir / "agent.lock", "w")  # noqa: SIM115
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"another node agent is using {self.state_dir}") from None
        log.info("node agent %s starting; API server %s; images: %s", self.node_name,
                 self.kube.host, ", ".join(self.images.names()))
        self.node.kubelet_port = self.logs.start(
            self.state_dir / "pki", [self.node.hostname, self.node_name, "localhost"])
        self.node.register()
        self.node.start()
        self.provisioner.install_class()
        self.services.start()

        def informer(name: str, path: str, *handlers: Any) -> Informer:
            inf = Informer(self.kube, path, name=name, stop=self.stop)
            inf.handlers.extend(handlers)
            self.informers[name] = inf
            return inf

        # Endpoints and pods first: the service proxy looks them up.
        informer("endpointslices", "/apis/discovery.k8s.io/v1/endpointslices").start()
        informer("endpoints", "/api/v1/endpoints").start()
        informer("services", "/api/v1/services", self.services.handle).start()
        pvcs = informer("pvcs", "/api/v1/persistentvolumeclaims", self.provisioner.on_pvc)
        pvs = informer("pvs", "/api/v1/persistentvolumes", self.provisioner.on_pv)
        pvcs.start()
        pvs.start()
        self.provisioner.start(pvcs, pvs)
        self.scheduler.start()
        for name in ("endpointslices", "endpoints", "services"):
            self.informers[name].synced.wait(30)
        informer("pods", "/api/v1/pods", self._on_pod).start()
        log.info("node agent ready")
        while not self.stop.wait(1.0):
            pass
        self.shutdown()

    def shutdown(self) -> None:
        log.info("shutting down: stopping all containers")
        self.stop.set()
        with self._workers_lock:
            workers = list(self.workers.values())
        threads = [threading.Thread(target=w.shutdown) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        for proc in self._processes:  # anything a worker could not stop
            if proc.poll() is None:
                proc.kill()
        deadline = time.monotonic() + 5
        while any(p.poll() is None for p in self._processes) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.services.stop()
        self.logs.stop()
        self.spawner.stop()
        log.info("node agent stopped")

    def track(self, process: Process) -> None:
        self._processes = [p for p in self._processes if p.poll() is None] + [process]

    # ---- callbacks ---------------------------------------------------------------------

    def _lookup(self, kind: str, namespace: str) -> list[Obj]:
        inf = self.informers.get(kind)
        if inf is None:
            return []
        return [o for o in inf.items() if o["metadata"].get("namespace") == namespace]

    def _services_changed(self) -> None:
        with self._workers_lock:
            workers = list(self.workers.values())
        for worker in workers:
            if worker.volumes_ready and not worker.finished:
                try:
                    worker.write_hosts()
                except OSError as exc:
                    log.debug("hosts refresh for %s: %s", worker.name, exc)

    def _on_pod(self, event: str, pod: Obj) -> None:
        self.scheduler.handle(event, pod)
        if pod.get("spec", {}).get("nodeName") != self.node_name or self.stop.is_set():
            return
        uid = pod["metadata"]["uid"]
        with self._workers_lock:
            worker = self.workers.get(uid)
            if event == "DELETED":
                if worker is not None:
                    worker.deleted()
                    del self.workers[uid]
                return
            if worker is None:
                worker = PodWorker(self, pod)
                self.workers[uid] = worker
                worker.start()
            else:
                worker.update(pod)
