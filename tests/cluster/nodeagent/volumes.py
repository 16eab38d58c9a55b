"""Materialise a pod's volumes as host directories, as the kubelet's volume manager does.

Every volume becomes a directory under the pod's state directory (or, for a PVC,
the directory of its hostPath PV); the launcher later bind-mounts it at each
``mountPath``. Files of secret/configMap/downwardAPI/projected volumes are written
with their modes and, with an fsGroup, group-owned by it, like the kubelet's
SetVolumeOwnership.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .env import field_ref, format_map, object_data, resource_field
from .kube import ApiError, Kube

log = logging.getLogger("nodeagent.volumes")

Obj = dict[str, Any]


class MountError(Exception):
    """A volume cannot be set up yet (the kubelet's FailedMount); retried later."""


@dataclass
class Volume:
    name: str
    path: Path
    kind: str
    read_only: bool = False  # e.g. persistentVolumeClaim.readOnly
    token_files: list[tuple[Path, Obj, float]] = field(default_factory=list)


@dataclass
class PodVolumes:
    """Set up (and refresh) the volumes of one pod."""

    kube: Kube
    pod: Obj
    root: Path  # <pod dir>/volumes
    pv_root: Path
    allocatable: dict[str, str]
    ca_fallback: str | None = None
    volumes: dict[str, Volume] = field(default_factory=dict)

    # ---- helpers ---------------------------------------------------------------

    @property
    def ns(self) -> str:
        return str(self.pod["metadata"]["namespace"])

    @property
    def fs_group(self) -> int | None:
        value = (self.pod["spec"].get("securityContext") or {}).get("fsGroup")
        return int(value) if value is not None else None

    def _fetch(self, kind: str, name: str) -> Obj | None:
        return self.kube.get_or_none(f"/api/v1/namespaces/{self.ns}/{kind}/{name}")

    def _write(self, base: Path, rel: str, data: bytes, mode: int) -> Path:
        rel_path = Path(rel)
        if rel_path.is_absolute() or ".." in rel_path.parts:
            raise MountError(f"invalid path {rel!r}")
        target = base / rel_path
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(data)
        os.chmod(tmp, mode)
        if self.fs_group is not None:
            os.chown(tmp, -1, self.fs_group)
            os.chmod(tmp, mode | 0o440)
        os.replace(tmp, target)  # atomic, so a running container never sees half a file
        return target

    def _fresh_dir(self, name: str) -> Path:
        path = self.root / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        os.chmod(path, 0o755)
        if self.fs_group is not None:
            os.chown(path, -1, self.fs_group)
            os.chmod(path, 0o2755)
        return path

    # ---- sources ---------------------------------------------------------------

    def _keys(self, kind: str, source: Obj, base: Path, default_mode: int) -> None:
        """A secret/configMap volume or projection: its keys (or ``items``) as files."""
        name = source.get("secretName") or source.get("name") or ""
        obj = self._fetch(kind, name)
        word = "secret" if kind == "secrets" else "configmap"
        if obj is None:
            if source.get("optional"):
                return
            raise MountError(f'{word} "{name}" not found')
        data = object_data(kind, obj)
        items = source.get("items")
        if not items:
            for key, value in data.items():
                self._write(base, key, value, default_mode)
            return
        for item in items:
            if item["key"] not in data:
                if source.get("optional"):
                    continue
                raise MountError(f"{word} {self.ns}/{name} has no key {item['key']!r}")
            self._write(base, item["path"], data[item["key"]], item.get("mode", default_mode))

    def _downward(self, items: list[Obj], base: Path, default_mode: int) -> None:
        containers = self.pod["spec"].get("containers", [])
        for item in items:
            if "fieldRef" in item:
                path = item["fieldRef"]["fieldPath"]
                if path in ("metadata.labels", "metadata.annotations"):
                    value = format_map(self.pod["metadata"].get(path.split(".")[1]) or {})
                else:
                    value = field_ref(self.pod, path)
            else:
                ref = item["resourceFieldRef"]
                container = next(
                    (c for c in containers if c["name"] == ref.get("containerName")),
                    containers[0],
                )
                value = resource_field(self.pod, container, ref, self.allocatable)
            self._write(base, item["path"], value.encode(), item.get("mode", default_mode))

    def _token(self, source: Obj, base: Path, default_mode: int, vol: Volume) -> None:
        """A bound service-account token from the TokenRequest API, as the kubelet asks."""
        meta = self.pod["metadata"]
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        spec: Obj = {
            "expirationSeconds": int(source.get("expirationSeconds", 3600)),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                               "name": meta["name"], "uid": meta["uid"]},
        }
        if source.get("audience"):
            spec["audiences"] = [source["audience"]]
        try:
            answer = self.kube.post(
                f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token",
                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
            )
        except ApiError as exc:
            raise MountError(f"failed to fetch token: {exc}") from exc
        target = self._write(base, source["path"], answer["status"]["token"].encode(),
                             default_mode)
        lifetime = float(answer["spec"].get("expirationSeconds", spec["expirationSeconds"]))
        vol.token_files.append((target, source, time.time() + 0.8 * lifetime))

    def _root_ca(self, source: Obj, base: Path, default_mode: int) -> None:
        """kube-root-ca.crt; falls back to the kubeconfig CA if the publisher is not running."""
        if self._fetch("configmaps", source.get("name", "")) is None and self.ca_fallback:
            log.warning("%s: ConfigMap kube-root-ca.crt missing; using the kubeconfig CA "
                        "(is root-ca-certificate-publisher-controller running?)", self.ns)
            for item in source.get("items") or [{"key": "ca.crt", "path": "ca.crt"}]:
                self._write(base, item["path"], self.ca_fallback.encode(),
                            item.get("mode", default_mode))
            return
        self._keys("configmaps", source, base, default_mode)

    # ---- public ----------------------------------------------------------------

    def setup(self) -> None:
        """Prepare every volume, or raise MountError (and retry later)."""
        for spec in self.pod["spec"].get("volumes") or []:
            name = spec["name"]
            if name in self.volumes:
                continue
            self.volumes[name] = self._setup_one(spec)

    def _setup_one(self, spec: Obj) -> Volume:
        name = spec["name"]
        if "emptyDir" in spec:
            path = self.root / name
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o777)  # the kubelet creates emptyDirs world-writable
            self._own_writable(path)
            return Volume(name, path, "emptyDir")
        if "persistentVolumeClaim" in spec:
            claim = spec["persistentVolumeClaim"]
            path = self._pvc_path(claim["claimName"])
            self._own_writable(path)
            return Volume(name, path, "pvc", read_only=bool(claim.get("readOnly")))
        if "hostPath" in spec:
            return Volume(name, self._host_path(spec["hostPath"]), "hostPath")
        if "secret" in spec:
            src = spec["secret"]
            path = self._fresh_dir(name)
            self._keys("secrets", src, path, src.get("defaultMode", 0o644))
            return Volume(name, path, "secret", read_only=True)
        if "configMap" in spec:
            src = spec["configMap"]
            path = self._fresh_dir(name)
            self._keys("configmaps", src, path, src.get("defaultMode", 0o644))
            return Volume(name, path, "configMap", read_only=True)
        if "downwardAPI" in spec:
            src = spec["downwardAPI"]
            path = self._fresh_dir(name)
            self._downward(src.get("items") or [], path, src.get("defaultMode", 0o644))
            return Volume(name, path, "downwardAPI", read_only=True)
        if "projected" in spec:
            src = spec["projected"]
            path = self._fresh_dir(name)
            vol = Volume(name, path, "projected", read_only=True)
            mode = src.get("defaultMode", 0o644)
            for source in src.get("sources") or []:
                if "serviceAccountToken" in source:
                    self._token(source["serviceAccountToken"], path, mode, vol)
                elif "secret" in source:
                    self._keys("secrets", source["secret"], path, mode)
                elif "configMap" in source:
                    if source["configMap"].get("name") == "kube-root-ca.crt":
                        self._root_ca(source["configMap"], path, mode)
                    else:
                        self._keys("configmaps", source["configMap"], path, mode)
                elif "downwardAPI" in source:
                    self._downward(source["downwardAPI"].get("items") or [], path, mode)
                else:
                    raise MountError(f"unsupported projected source {sorted(source)}")
            return vol
        raise MountError(f"volume {name}: unsupported volume type {sorted(set(spec) - {'name'})}")

    def refresh_tokens(self) -> None:
        """Rotate projected tokens at 80% of their lifetime, as the kubelet does."""
        for vol in self.volumes.values():
            due = [t for t in vol.token_files if t[2] < time.time()]
            if not due:
                continue
            vol.token_files = [t for t in vol.token_files if t[2] >= time.time()]
            for _, source, _ in due:
                try:
                    self._token(source, vol.path, 0o644, vol)
                except MountError as exc:
                    log.warning("token refresh failed: %s", exc)

    def _pvc_path(self, claim_name: str) -> Path:
        pvc = self._fetch("persistentvolumeclaims", claim_name)
        if pvc is None:
            raise MountError(f'persistentvolumeclaim "{claim_name}" not found')
        if pvc.get("metadata", {}).get("deletionTimestamp"):
            raise MountError(f'persistentvolumeclaim "{claim_name}" is being deleted')
        if pvc.get("status", {}).get("phase") != "Bound" or not pvc["spec"].get("volumeName"):
            raise MountError(f'persistentvolumeclaim "{claim_name}" is not bound')
        pv = self.kube.get_or_none(f"/api/v1/persistentvolumes/{pvc['spec']['volumeName']}")
        if pv is None:
            raise MountError(f"persistentvolume {pvc['spec']['volumeName']} not found")
        source = pv["spec"].get("hostPath") or pv["spec"].get("local")
        if not source:
            raise MountError(f"persistentvolume {pv['metadata']['name']} is not a hostPath "
                             "or local volume; this node cannot attach it")
        path = Path(source["path"])
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _host_path(self, src: Obj) -> Path:
        path = Path(src["path"])
        kind = src.get("type", "")
        if kind == "DirectoryOrCreate":
            path.mkdir(parents=True, exist_ok=True)
        elif kind == "FileOrCreate":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(exist_ok=True)
        elif kind == "Directory" and not path.is_dir():
            raise MountError(f"hostPath {path} is not a directory")
        elif kind == "File" and not path.is_file():
            raise MountError(f"hostPath {path} is not a file")
        return path

    def _own_writable(self, path: Path) -> None:
        """fsGroup on writable volumes: group-own everything, g+rw, setgid dirs."""
        group = self.fs_group
        if group is None:
            return
        policy = (self.pod["spec"].get("securityContext") or {}).get("fsGroupChangePolicy")
        st = path.stat()
        if policy == "OnRootMismatch" and st.st_gid == group and st.st_mode & 0o2070 == 0o2070:
            return
        for dirpath, _dirnames, filenames in os.walk(path):
            for entry in [dirpath] + [os.path.join(dirpath, f) for f in filenames]:
                if os.path.islink(entry):
                    continue
                os.chown(entry, -1, group)
                mode = os.stat(entry).st_mode & 0o7777
                if os.path.isdir(entry):
                    mode |= 0o2070
                else:
                    mode |= 0o060
                os.chmod(entry, mode)

    def cleanup(self) -> None:
        """Remove the pod's own volume data (PVC data stays with its PV)."""
        shutil.rmtree(self.root, ignore_errors=True)
