"""The Jobs of a Backup and a Restore (pure): the agent's arguments and environment
(agent_args), the volumes it works on, and the locked-down pod around it (pod.agent_job).
The handlers create what these return; the contract test parses it with the agent's own
parser (tests/unit/test_agent_contract.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from timesheet_backup import constants as c
from timesheet_backup.api import models
from timesheet_backup.jobs import agent_args
from timesheet_backup.jobs.pod import UPLOADS_MOUNT, AgentJob, PodVolume, agent_job, child_name
from timesheet_backup.settings import OperatorConfig


def uploads_claim(spec: models.BackupSpec) -> str | None:
    if "uploads" in spec.components and spec.uploads and spec.uploads.claim_name:
        return spec.uploads.claim_name
    return None


def manifest_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The Backup's labels its manifest records: the schedule's, so that a fresh cluster can
    choose "the newest backup of schedule X" from the bucket alone (Restore source.latest)."""
    return {k: v for k, v in labels.items() if k == c.LABEL_SCHEDULE}


def backup_job(body: Mapping[str, Any], spec: models.BackupSpec, config: OperatorConfig,
               run_on_node: str | None = None,
               security_context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    volumes = []
    claim = uploads_claim(spec)
    if claim and spec.uploads:
        volumes.append(PodVolume("uploads", claim, UPLOADS_MOUNT,
                                 spec.uploads.sub_path, read_only=True))
    job = AgentJob(
        name=child_name(name, "backup"),
        namespace=namespace,
        owner=body,
        labels={c.LABEL_BACKUP: name},
        args=agent_args.backup_args(meta["uid"], namespace, name, spec,
                                    manifest_labels(meta.get("labels") or {})),
        env=agent_args.backup_env(spec),
        volumes=volumes,
        secret_volumes=agent_args.backup_volumes(spec),
        job=spec.job or models.JobSpec(),
        run_on_node=run_on_node,
        security_context=security_context,
    )
    return agent_job(job, config)


def restore_job(body: Mapping[str, Any], spec: models.RestoreSpec,
                resolved: Mapping[str, Any], config: OperatorConfig,
                security_context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    meta = body["metadata"]
    volumes = []
    uploads = resolved.get("uploads")
    if uploads and uploads.get("scratch") is not None:
        volumes.append(PodVolume("uploads", None, UPLOADS_MOUNT,
                                 size_limit=uploads["scratch"].get("sizeLimit")))
    elif uploads:
        volumes.append(PodVolume("uploads", uploads["claimName"], UPLOADS_MOUNT,
                                 uploads.get("subPath")))
    return agent_job(AgentJob(
        name=child_name(meta["name"], "restore"),
        namespace=meta["namespace"],
        owner=body,
        labels={c.LABEL_RESTORE: meta["name"]},
        args=agent_args.restore_args(spec, resolved),
        env=agent_args.restore_env(spec, resolved),
        volumes=volumes,
        secret_volumes=agent_args.restore_volumes(resolved),
        job=spec.job or models.JobSpec(),
        security_context=security_context,
    ), config)


def hook_job_name(restore: str, index: int) -> str:
    return child_name(restore, f"hook-{index}")


def hook_job(body: Mapping[str, Any], index: int, hook: models.HookSpec,
             spec: models.RestoreSpec, config: OperatorConfig) -> dict[str, Any]:
    meta = body["metadata"]
    manifest = agent_job(AgentJob(
        name=hook_job_name(meta["name"], index),
        namespace=meta["namespace"],
        owner=body,
        labels={c.LABEL_RESTORE: meta["name"]},
        args=hook.args or [],
        command=hook.command,
        image=hook.image,
        env=hook.env or [],
        job=spec.job or models.JobSpec(),
    ), config)
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    container["name"] = hook.name
    if hook.env_from:
        container["envFrom"] = hook.env_from
    return manifest


def verify_job(body: Mapping[str, Any], spec: models.RestoreSpec,
               check: models.HttpCheck, config: OperatorConfig) -> dict[str, Any]:
    meta = body["metadata"]
    return agent_job(AgentJob(
        name=child_name(meta["name"], "verify"),
        namespace=meta["namespace"],
        owner=body,
        labels={c.LABEL_RESTORE: meta["name"]},
        args=agent_args.http_check_args(check),
        job=spec.job or models.JobSpec(),
    ), config)
