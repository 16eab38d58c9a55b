"""A hostPath volume provisioner, the way local-path-provisioner works on kind.

It installs the StorageClass ``tsb-hostpath`` (default class unless the cluster
already has one) and, for every claim of that class (or of no class) that has no
volume, creates a PersistentVolume pre-bound to the claim (``claimRef``) whose
hostPath is a directory under ``<state-dir>/pvs``. The real controller-manager's
persistentvolume-binder then completes the binding. If the binder is not running,
the provisioner completes it itself after a grace period (see ``_bind_fallback``).
Released volumes of the class are deleted with their directory (reclaim Delete).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from .kube import ApiError, Informer, Kube

log = logging.getLogger("provisioner")

Obj = dict[str, Any]
CLASS_NAME = "tsb-hostpath"
PROVISIONER = "tsb.local/hostpath"
BIND_FALLBACK_SECONDS = 5.0
CLASSLESS_DELAY_SECONDS = 2.0


class Provisioner:
    def __init__(self, kube: Kube, root: Path, node_name: str, stop: threading.Event) -> None:
        self.kube = kube
        self.root = root
        self.node_name = node_name
        self.stop = stop
        self.pvcs: Informer | None = None
        self.pvs: Informer | None = None
        self._queue: queue.Queue[tuple[float, str, Obj]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="provisioner", daemon=True)

    def install_class(self) -> None:
        classes = self.kube.get("/apis/storage.k8s.io/v1/storageclasses")["items"]
        if any(c["metadata"]["name"] == CLASS_NAME for c in classes):
            return
        has_default = any(
            (c["metadata"].get("annotations") or {}).get(
                "storageclass.kubernetes.io/is-default-class") == "true"
            for c in classes
        )
        self.kube.post("/apis/storage.k8s.io/v1/storageclasses", {
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": CLASS_NAME, "annotations": {
                "storageclass.kubernetes.io/is-default-class": "false" if has_default else "true"
            }},
            "provisioner": PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        })
        log.info("created StorageClass %s (default=%s)", CLASS_NAME, not has_default)

    def start(self, pvcs: Informer, pvs: Informer) -> None:
        self.pvcs, self.pvs = pvcs, pvs
        self._thread.start()

    # informer callbacks ------------------------------------------------------------

    def on_pvc(self, event: str, pvc: Obj) -> None:
        if event == "DELETED" or pvc["spec"].get("volumeName"):
            return
        if pvc.get("status", {}).get("phase") != "Pending":
            return
        sc = pvc["spec"].get("storageClassName")
        if sc == CLASS_NAME:
            self._queue.put((time.monotonic(), "provision", pvc))
        elif not sc:
            self._queue.put((time.monotonic() + CLASSLESS_DELAY_SECONDS, "provision", pvc))

    def on_pv(self, event: str, pv: Obj) -> None:
        annotations = pv["metadata"].get("annotations") or {}
        if annotations.get("pv.kubernetes.io/provisioned-by") != PROVISIONER:
            return
        if event == "DELETED":
            self._remove_dir(pv)
            return
        if (pv.get("status", {}).get("phase") in ("Released", "Failed")
                and pv["spec"].get("persistentVolumeReclaimPolicy") == "Delete"):
            self._queue.put((time.monotonic(), "delete", pv))

    # worker ----------------------------------------------------------------------

    def _run(self) -> None:
        delayed: list[tuple[float, str, Obj]] = []
        while not self.stop.is_set():
            with contextlib.suppress(queue.Empty):
                delayed.append(self._queue.get(timeout=0.5))
            now = time.monotonic()
            due = [d for d in delayed if d[0] <= now]
            delayed = [d for d in delayed if d[0] > now]
            for _, action, obj in due:
                try:
                    if action == "provision":
                        self._provision(obj)
                    elif action == "bind":
                        self._bind_fallback(obj)
                    else:
                        self._delete(obj)
                except ApiError as exc:
                    log.warning("%s %s failed: %s", action, obj["metadata"]["name"], exc)

    def _current_pvc(self, pvc: Obj) -> Obj | None:
        meta = pvc["metadata"]
        assert self.pvcs is not None
        current = self.pvcs.get(f"{meta['namespace']}/{meta['name']}")
        if current is None or current["metadata"]["uid"] != meta["uid"]:
            return None
        return current

    def _provision(self, pvc: Obj) -> None:
        current = self._current_pvc(pvc)
        if current is None or current["spec"].get("volumeName"):
            return
        if current["metadata"].get("deletionTimestamp"):
            return
        meta = current["metadata"]
        pv_name = f"pvc-{meta['uid']}"
        assert self.pvs is not None
        if self.pvs.get(pv_name) is not None:
            return
        path = self.root / pv_name
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)  # like local-path-provisioner: any pod user may write
        request = ((current["spec"].get("resources") or {}).get("requests") or {}).get(
            "storage", "1Gi")
        pv = {
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": pv_name,
                         "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
            "spec": {
                "capacity": {"storage": request},
                "accessModes": current["spec"].get("accessModes") or ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": current["spec"].get("storageClassName") or "",
                "volumeMode": current["spec"].get("volumeMode") or "Filesystem",
                "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                             "namespace": meta["namespace"], "name": meta["name"],
                             "uid": meta["uid"]},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [{
                    "key": "kubernetes.io/hostname", "operator": "In",
                    "values": [self.node_name]}]}]}},
            },
        }
        try:
            self.kube.post("/api/v1/persistentvolumes", pv)
        except ApiError as exc:
            if exc.status != 409:
                raise
        log.info("provisioned %s for claim %s/%s at %s", pv_name, meta["namespace"],
                 meta["name"], path)
        self._queue.put((time.monotonic() + BIND_FALLBACK_SECONDS, "bind", current))

    def _bind_fallback(self, pvc: Obj) -> None:
        """Complete the binding when no persistentvolume-binder did it in time."""
        current = self._current_pvc(pvc)
        if current is None or current.get("status", {}).get("phase") == "Bound":
            return
        meta = current["metadata"]
        pv_name = f"pvc-{meta['uid']}"
        log.warning("claim %s/%s still unbound after %.0fs; binding it to %s myself "
                    "(is persistentvolume-binder running?)", meta["namespace"], meta["name"],
                    BIND_FALLBACK_SECONDS, pv_name)
        base = f"/api/v1/namespaces/{meta['namespace']}/persistentvolumeclaims/{meta['name']}"
        pv = self.kube.get(f"/api/v1/persistentvolumes/{pv_name}")
        self.kube.patch(f"/api/v1/persistentvolumes/{pv_name}/status",
                        {"status": {"phase": "Bound"}})
        self.kube.patch(base, {"metadata": {"annotations": {
            "pv.kubernetes.io/bind-completed": "yes", "pv.kubernetes.io/bound-by-controller": "yes"
        }}, "spec": {"volumeName": pv_name}})
        self.kube.patch(base + "/status", {"status": {
            "phase": "Bound", "accessModes": pv["spec"]["accessModes"],
            "capacity": pv["spec"]["capacity"],
        }})

    def _delete(self, pv: Obj) -> None:
        name = pv["metadata"]["name"]
        try:
            self.kube.delete(f"/api/v1/persistentvolumes/{name}")
            log.info("deleted released volume %s", name)
        except ApiError as exc:
            if exc.status != 404:
                raise
        self._remove_dir(pv)

    def _remove_dir(self, pv: Obj) -> None:
        path = Path((pv["spec"].get("hostPath") or {}).get("path", ""))
        if path.parent == self.root and path.name.startswith("pvc-"):
            shutil.rmtree(path, ignore_errors=True)
