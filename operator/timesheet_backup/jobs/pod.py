"""Job manifests for the agent (pure): restricted pod security, Secrets only as env refs or
read-only files.

Every Job the operator creates (backup, restore, hook, verify) goes through `agent_job`, so
the security defaults live in one place: non-root, read-only root filesystem, all
capabilities dropped, RuntimeDefault seccomp, no service account token, no service links, an
emptyDir for scratch space. The same function applies the object's `job` settings merged over
the operator's `defaults.job` (`job_settings`): pull secrets, priority class, extra env, pod
labels and annotations, and a ServiceAccount -- whose token, and only then, is mounted."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from timesheet_backup import constants as c
from timesheet_backup.api import models
from timesheet_backup.api.resolve import merge_job
from timesheet_backup.jobs import identity
from timesheet_backup.settings import OperatorConfig

AGENT_UID = identity.AGENT_UID
UPLOADS_MOUNT = "/data/uploads"
# Scratch space (an emptyDir; TMPDIR points there). Not /tmp: a volume over /tmp would also
# hide whatever lives below it, which on the e2e harness includes the agent's own code.
SCRATCH_MOUNT = "/scratch"
# Certificates and keys from Secrets, mounted read-only (jobs/agent_args.py says which).
TLS_MOUNT_ROOT = "/etc/timesheet-backup"
# Modes of files from Secrets. A Secret volume's files belong to root (group: the pod's
# fsGroup, when it has one), never to the agent's uid: a private key of mode 0400 would be
# unreadable. So the key is group-readable for an fsGroup, else readable in the container
# (only the agent runs there), and the agent copies it to its scratch space with mode 0600
# before libpq sees it (agent/tlsfiles.py).
PUBLIC_FILE_MODE = 0o444
PRIVATE_KEY_MODE_FS_GROUP = 0o440
PRIVATE_KEY_MODE_NO_FS_GROUP = 0o444
DEFAULT_DEADLINE_SECONDS = 3600
DEFAULT_BACKOFF_LIMIT = 1
# Finished Jobs are kept a day unless job.ttlSecondsAfterFinished says otherwise: long enough
# for the runbooks' `kubectl logs job/...` the morning after a nightly run.
DEFAULT_TTL_SECONDS_AFTER_FINISHED = 86400
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


@dataclass(frozen=True)
class SecretFile:
    """One key of a Secret as a file `path` (relative to its volume's mount)."""

    secret: str
    key: str
    path: str
    private: bool = False  # a private key: see PRIVATE_KEY_MODE_*


@dataclass(frozen=True)
class SecretVolume:
    """Keys of Secrets mounted read-only as files (a projected volume)."""

    name: str
    mount_path: str
    files: tuple[SecretFile, ...]

    def path_of(self, path: str) -> str:
        return f"{self.mount_path}/{path}"


def required_secrets(env: Sequence[Mapping[str, Any]],
                     volumes: Sequence[SecretVolume] = ()) -> list[tuple[str, str]]:
    """(secret, key) pairs a container's `env` and Secret `volumes` read and cannot start
    without: the one list of Secrets a Backup or Restore checks up front (SecretMissing)
    instead of leaving a pod in CreateContainerConfigError or ContainerCreating. Taken from
    the env and volumes the Job gets, so it cannot drift from them."""
    refs: list[tuple[str, str]] = []
    for entry in env:
        ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
        if ref and not ref.get("optional") and (ref["name"], ref["key"]) not in refs:
            refs.append((ref["name"], ref["key"]))
    for volume in volumes:
        for f in volume.files:
            if (f.secret, f.key) not in refs:
                refs.append((f.secret, f.key))
    return refs


def secret_volume(volume: SecretVolume, pod_security: Mapping[str, Any]) -> dict[str, Any]:
    """The projected volume of `volume`, one source per Secret, keys as items."""
    key_mode = (PRIVATE_KEY_MODE_FS_GROUP if pod_security.get("fsGroup") is not None
                else PRIVATE_KEY_MODE_NO_FS_GROUP)
    by_secret: dict[str, list[dict[str, Any]]] = {}
    for f in volume.files:
        item: dict[str, Any] = {"key": f.key, "path": f.path}
        if f.private:
            item["mode"] = key_mode
        by_secret.setdefault(f.secret, []).append(item)
    return {"name": volume.name, "projected": {
        "defaultMode": PUBLIC_FILE_MODE,
        "sources": [{"secret": {"name": name, "items": items}}
                    for name, items in by_secret.items()]}}


def storage_env(storage: models.StorageSpec) -> list[dict[str, Any]]:
    """S3 credentials from their Secret; none when the pod's cloud identity is used. Never
    storage.deleteCredentialsSecretRef: only the operator deletes (deletion_secrets)."""
    return credentials_env(storage.credentials_secret_ref)


def deletion_secrets(storage: models.StorageSpec | None) -> list[tuple[str, str]]:
    """(Secret, key) pairs the operator itself reads to delete a Backup's objects
    (storage.deleteCredentialsSecretRef), never a Job: a missing one does not keep a backup
    from running, it keeps its objects from being deleted (a warning, not SecretMissing)."""
    if storage is None or storage.delete_credentials_secret_ref is None:
        return []
    return required_secrets(credentials_env(storage.delete_credentials_secret_ref))


def credentials_env(creds: models.CredentialsSecretRef | None) -> list[dict[str, Any]]:
    """The AWS_* variables of an S3 credentials Secret, as boto3's default chain reads them."""
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
    """A PVC mounted into the agent container, or (claim_name None) a throwaway emptyDir."""

    name: str
    claim_name: str | None
    mount_path: str
    sub_path: str | None = None
    read_only: bool = False
    size_limit: str | None = None  # emptyDir only


@dataclass
class AgentJob:
    name: str
    namespace: str
    owner: Mapping[str, Any]
    labels: Mapping[str, str]
    args: Sequence[str]
    env: Sequence[Mapping[str, Any]] = ()
    volumes: Sequence[PodVolume] = ()
    secret_volumes: Sequence[SecretVolume] = ()
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


def job_settings(own: models.JobSpec | None, config: OperatorConfig,
                 agent_image: bool = True) -> models.JobSpec:
    """An object's `job` over the operator's `defaults.job` (api.resolve.merge_job). A hook
    runs another image, whose needs only its author knows: the defaults' resources, sized
    for the agent, are not given to it."""
    defaults = config.defaults.job
    if defaults is not None and not agent_image:
        defaults = dataclasses.replace(defaults, resources=None)
    return merge_job(defaults, own)


def merge_env(*lists: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Env lists, a later entry replacing an earlier one of the same name in its place (a
    container's duplicate names would leave the choice to the kubelet)."""
    merged: dict[str, dict[str, Any]] = {}
    for entries in lists:
        for entry in entries:
            merged[entry["name"]] = dict(entry)
    return list(merged.values())


def agent_job(spec: AgentJob, config: OperatorConfig) -> dict[str, Any]:
    tuning = job_settings(spec.job, config, agent_image=spec.image is None)
    labels = {c.LABEL_MANAGED_BY: c.MANAGED_BY, **spec.labels}
    # The schema refuses the operator's own keys in podLabels; its labels still go last.
    pod_labels = {**(tuning.pod_labels or {}), **labels}
    extra_env = [{"name": e.name, "value": e.value or ""} for e in tuning.env or []]
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
        if v.claim_name is None:
            volumes.append({"name": v.name, "emptyDir": (
                {"sizeLimit": v.size_limit} if v.size_limit else {})})
        else:
            volumes.append({"name": v.name, "persistentVolumeClaim": {
                "claimName": v.claim_name, "readOnly": v.read_only}})
    for sv in spec.secret_volumes:
        mounts.append({"name": sv.name, "mountPath": sv.mount_path, "readOnly": True})
        volumes.append(secret_volume(sv, pod_security))
    container: dict[str, Any] = {
        "name": "agent",
        "image": spec.image or config.image,
        "imagePullPolicy": config.image_pull_policy,
        "args": list(spec.args),
        # The extra env cannot name what the agent sets (schema); a hook's own env does win
        # over the extra env of its Restore.
        "env": merge_env([{"name": "TMPDIR", "value": SCRATCH_MOUNT}], extra_env, spec.env),
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
    # `defaults.job.resources`, sized from measurements) for the agent (job_settings).
    if tuning.resources:
        container["resources"] = tuning.resources
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # No token unless a ServiceAccount is named: the agent never talks to the API server,
        # and a token in every pod would let a compromised one act as the namespace's default
        # account. A named one is asked for to carry a cloud workload identity, and some of
        # those (and tools such as Vault's Kubernetes auth) read its token (docs/security.md).
        "automountServiceAccountToken": tuning.service_account_name is not None,
        "enableServiceLinks": False,
        "securityContext": pod_security,
        "containers": [container],
        "volumes": volumes,
    }
    if tuning.service_account_name:
        pod_spec["serviceAccountName"] = tuning.service_account_name
    if tuning.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in tuning.image_pull_secrets]
    if tuning.priority_class_name:
        pod_spec["priorityClassName"] = tuning.priority_class_name
    if tuning.node_selector:
        pod_spec["nodeSelector"] = dict(tuning.node_selector)
    if tuning.tolerations:
        pod_spec["tolerations"] = list(tuning.tolerations)
    affinity = dict(tuning.affinity or {})
    if spec.run_on_node:
        affinity.update(node_affinity(spec.run_on_node))
    if affinity:
        pod_spec["affinity"] = affinity
    template_meta: dict[str, Any] = {"labels": pod_labels}
    if tuning.pod_annotations:
        template_meta["annotations"] = dict(tuning.pod_annotations)
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
            "ttlSecondsAfterFinished": (DEFAULT_TTL_SECONDS_AFTER_FINISHED
                                        if tuning.ttl_seconds_after_finished is None
                                        else tuning.ttl_seconds_after_finished),
            "template": {"metadata": template_meta, "spec": pod_spec},
        },
    }
