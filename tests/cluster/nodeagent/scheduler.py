"""The scheduler part: bind every pending pod to the one node.

With a single node, any pod fits; only ``nodeSelector`` is checked (a mismatch
leaves the pod Pending with PodScheduled=False/Unschedulable, as the scheduler
would). Affinity, taints and resources are not evaluated.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from typing import Any

from .kube import ApiError, Kube
from .node import now_iso

log = logging.getLogger("nodeagent.scheduler")

Obj = dict[str, Any]


class Scheduler:
    def __init__(self, kube: Kube, node_name: str, node_labels: dict[str, str],
                 stop: threading.Event, scheduler_name: str = "default-scheduler") -> None:
        self.kube = kube
        self.node_name = node_name
        self.node_labels = node_labels
        self.scheduler_name = scheduler_name
        self.stop = stop
        self._queue: queue.Queue[Obj] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wants(self, pod: Obj) -> bool:
        spec = pod.get("spec", {})
        return (
            not spec.get("nodeName")
            and not pod["metadata"].get("deletionTimestamp")
            and spec.get("schedulerName", "default-scheduler") == self.scheduler_name
            and pod.get("status", {}).get("phase", "Pending") == "Pending"
        )

    def handle(self, event: str, pod: Obj) -> None:
        if event != "DELETED" and self.wants(pod):
            self._queue.put(pod)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                pod = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self._schedule(pod)
            except Exception:
                log.exception("scheduling %s/%s failed", pod["metadata"].get("namespace"),
                              pod["metadata"]["name"])

    def _schedule(self, pod: Obj) -> None:
        meta = pod["metadata"]
        ns, name = meta["namespace"], meta["name"]
        selector = pod["spec"].get("nodeSelector") or {}
        mismatch = {k: v for k, v in selector.items() if self.node_labels.get(k) != v}
        if mismatch:
            message = (f"0/1 nodes are available: 1 node(s) didn't match Pod's node "
                       f"affinity/selector ({mismatch}).")
            conditions = [c for c in pod.get("status", {}).get("conditions") or []
                          if c["type"] == "PodScheduled"]
            if conditions and conditions[0].get("message") == message:
                return
            log.info("pod %s/%s is unschedulable: %s", ns, name, message)
            self.kube.patch(
                f"/api/v1/namespaces/{ns}/pods/{name}/status",
                {"status": {"conditions": [{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": message, "lastProbeTime": None, "lastTransitionTime": now_iso(),
                }]}},
                content_type="application/strategic-merge-patch+json",
            )
            return
        try:
            self.kube.post(f"/api/v1/namespaces/{ns}/pods/{name}/binding", {
                "apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": name, "namespace": ns, "uid": meta["uid"]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
            })
        except ApiError as exc:
            if exc.status in (404, 409):  # gone, or bound meanwhile
                return
            raise
        log.info("bound pod %s/%s to %s", ns, name, self.node_name)
        self._event(pod, f"Successfully assigned {ns}/{name} to {self.node_name}")

    def _event(self, pod: Obj, message: str) -> None:
        meta = pod["metadata"]
        with contextlib.suppress(ApiError):
            self.kube.post(f"/api/v1/namespaces/{meta['namespace']}/events", {
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
                "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                                   "namespace": meta["namespace"], "uid": meta["uid"]},
                "reason": "Scheduled", "message": message, "type": "Normal",
                "source": {"component": "default-scheduler"},
                "firstTimestamp": now_iso(), "lastTimestamp": now_iso(), "count": 1,
            })
