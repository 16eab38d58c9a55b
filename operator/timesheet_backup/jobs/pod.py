"""Job manifests for the agent (pure): restricted pod security, Secrets only as env refs.

Every Job the operator creates goes through `agent_job`, so the security defaults live in
one place: non-root, read-only root filesystem, all capabilities dropped, RuntimeDefault
seccomp, no service account token, no service links, an emptyDir for scratch space."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from timesheet_backup import constants as c
from timesheet_backup.api import models
from timesheet_backup.jobs import identity
from timesheet_backup.settings import OperatorConfig

AGENT_UID = identity.AGENT_UID
UPLOADS_MOUNT = "/data/uploads"
# Scratch space (an emptyDir; TMPDIR points there). Not /tmp: a volume over /tmp would also
# hide whatever lives below it, which on the e2e harness includes the agent's own code.
SCRATCH_MOUNT = "/scratch"
DEFAULT_DEADLINE_SECONDS = 3600
DEFAULT_BACKOFF_LIMIT = 1
MAX_NAME = 63


def child_name(parent: str, suffix: str) -> str:
    """A deterministic DNS-label name `<parent>-<suffix>`, shortened with a hash when the
    parent is long (Job names become pod labels, limited to 63 characters)."""
    name = f"{parent}-{suffix}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(parent.encode()).hexdigest()[:8]
    keep = MAX_NAME - len(suffix) - len(digest) - 2
    return f"{parent[:keep].rstrip('-.')}-{digest}-{suffix}"


def secret_env(name: str, ref: models.SecretKeyRef | None, optional: bool = False
               ) -> list[dict[str, Any]]:
    if ref is None:
        return []
    selector: dict[str, Any] = {"name": ref.name, "key": ref.key}
    if optional:
        selector["optional"] = True
    return [{"name": name, "valueFrom": {"secretKeyRef": selector}}]


def required_secrets(env: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(secret, key) pairs a container's `env` reads and cannot start without: the one list of
    Secrets a Backup or Restore checks up front (SecretMissing) instead of leaving a pod in
    CreateContainerConfigError. Taken from the env the Job gets, so it cannot drift from it."""
    refs: list[tuple[str, str]] = []
    for entry in env:
        ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
        if ref and not ref.get("optional") and (ref["name"], ref["key"]) not in refs:
            refs.append((ref["name"], ref["key"]))
    return refs


def storage_env(storage: models.StorageSpec) -> list[dict[str, Any]]:
    """S3 credentials from their Secret; none when the pod's cloud identity is used."""
    creds = storage.credentials_secret_ref
    if creds is None:
        return []
    env = secret_env("AWS_ACCESS_KEY_ID", models.SecretKeyRef(name=creds.name,
                                                              key=creds.access_key_id_key))
    env += secret_env("AWS_SECRET_ACCESS_KEY", models.SecretKeyRef(
        name=creds.name, key=creds.secret_access_key_key))
    if creds.session_token_key:
        env += secret_env("AWS_SESSION_TOKEN", models.SecretKeyRef(
            name=creds.name, key=creds.session_token_key))
    return env


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


@dataclass
class PodVolume:
    """A PVC mounted into the agent container."""

    name: str
    claim_name: str
    mount_path: str
    sub_path: str | None = None
    read_only: bool = False


@dataclass
class AgentJob:
    name: str
    namespace: str
    owner: Mapping[str, Any]
    labels: Mapping[str, str]
    args: Sequence[str]
    env: Sequence[Mapping[str, Any]] = ()
    volumes: Sequence[PodVolume] = ()
    job: models.JobSpec = field(default_factory=models.JobSpec)
    run_on_node: str | None = None
    image: str | None = None
    command: Sequence[str] | None = None
    # The pod securityContext chosen by identity.choose (the app's identity for Jobs that
    # mount the uploads); None: job.podSecurityContext or the agent's default.
    security_context: Mapping[str, Any] | None = None


def node_affinity(node: str) -> dict[str, Any]:
    """Pin the pod to one node, the way DaemonSets do (by node name, not a label): a
    ReadWriteOnce volume already attached there cannot be attached anywhere else."""
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchFields": [{"key": "metadata.name", "operator": "In",
                                      "values": [node]}]}
                ]
            }
        }
    }


def agent_job(spec: AgentJob, config: OperatorConfig) -> dict[str, Any]:
    tuning = spec.job
    labels = {c.LABEL_MANAGED_BY: c.MANAGED_BY, **spec.labels}
    pod_security = dict(spec.security_context or identity.choose(
        tuning.pod_security_context, None, ()).security_context)
    mounts: list[dict[str, Any]] = [{"name": "scratch", "mountPath": SCRATCH_MOUNT}]
    # No sizeLimit: the directory format and parallel restores stage the whole artifact here.
    volumes: list[dict[str, Any]] = [{"name": "scratch", "emptyDir": {}}]
    for v in spec.volumes:
        mount: dict[str, Any] = {"name": v.name, "mountPath": v.mount_path,
                                 "readOnly": v.read_only}
        if v.sub_path:
            mount["subPath"] = v.sub_path
        mounts.append(mount)
        volumes.append({"name": v.name, "persistentVolumeClaim": {
            "claimName": v.claim_name, "readOnly": v.read_only}})
    container: dict[str, Any] = {
        "name": "agent",
        "image": spec.image or config.image,
        "imagePullPolicy": config.image_pull_policy,
        "args": list(spec.args),
        "env": [{"name": "TMPDIR", "value": SCRATCH_MOUNT}, *(dict(e) for e in spec.env)],
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            # Root only when job.podSecurityContext asks for it explicitly (identity.py).
            "runAsNonRoot": pod_security.get("runAsUser") != 0,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if spec.command is not None:
        container["command"] = list(spec.command)
    # Requests and limits: the resource's own, else the operator's defaults (chart values
    # `defaults.job.resources`, sized from measurements) for the agent; a hook runs another
    # image, whose needs only its author knows.
    default_job = config.defaults.job
    resources = tuning.resources or (
        default_job.resources if default_job and spec.image is None else None)
    if resources:
        container["resources"] = resources
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security,
        "containers": [container],
        "volumes": volumes,
    }
    if tuning.node_selector:
        pod_spec["nodeSelector"] = dict(tuning.node_selector)
    if tuning.tolerations:
        pod_spec["tolerations"] = list(tuning.tolerations)
    affinity = dict(tuning.affinity or {})
    if spec.run_on_node:
        affinity.update(node_affinity(spec.run_on_node))
    if affinity:
        pod_spec["affinity"] = affinity
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(spec.owner)],
        },
        "spec": {
            "backoffLimit": (DEFAULT_BACKOFF_LIMIT if tuning.backoff_limit is None
                             else tuning.backoff_limit),
            "activeDeadlineSeconds": tuning.active_deadline_seconds or DEFAULT_DEADLINE_SECONDS,
            "ttlSecondsAfterFinished": config.job_ttl_seconds_after_finished,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
