"""What a Backup does to the cluster and the bucket: start its Job, read what the agent
wrote, delete its objects; every choice comes from decisions/backups.py."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NoReturn

import kopf
from botocore.exceptions import BotoCoreError, ClientError

from timesheet_backup import constants as c
from timesheet_backup import kube
from timesheet_backup.actions import bucket, content_alarms
from timesheet_backup.actions.common import (
    claim_users,
    config,
    enter,
    insecure_settings,
    job_identity,
    post_event,
    write,
)
from timesheet_backup.api import models
from timesheet_backup.api.fields import SpecError, dump, parse
from timesheet_backup.decisions import backups as decide
from timesheet_backup.errors import AgentError, MissingBucket
from timesheet_backup.jobs.manifests import backup_job, uploads_claim
from timesheet_backup.jobs.outcome import Outcome, job_outcome
from timesheet_backup.status import human_size, timestamp
from timesheet_backup.storage import layout
from timesheet_backup.storage import manifest as manifests
from timesheet_backup.storage.s3 import S3Store

log = logging.getLogger(__name__)
Status = models.BackupStatus


def move(body: Mapping[str, Any], patch: kopf.Patch, step: decide.Transition,
         fields: Status | None = None) -> None:
    enter(body, patch, step.phase, step.reason, step.message, fields or Status(),
          event=step.event)


def start_job(body: Mapping[str, Any], patch: kopf.Patch, spec: models.BackupSpec,
              manifest_key: str, target: str | None, now: datetime,
              warnings: list[str]) -> None:
    """Create the agent Job, as the app's identity where one can be found; go Running.
    `warnings`: problems that do not stop the backup, kept in status next to the insecure
    settings."""
    meta = body["metadata"]
    claim = uploads_claim(spec)
    users = claim_users(meta["namespace"], claim)
    explicit = spec.job.pod_security_context if spec.job else None
    chosen = job_identity(body, explicit, claim, users)
    manifest = backup_job(body, spec, config(), users.node, chosen.security_context)
    kube.create_job(manifest)
    job_name = manifest["metadata"]["name"]
    move(body, patch, decide.started(job_name), Status(
        job_name=job_name, start_time=timestamp(now), backup_id=meta["uid"],
        warnings=((insecure_settings(body, spec.storage) or []) + warnings) or None,
        job_identity=chosen.description,
        manifest_key=manifest_key, components=",".join(spec.components),
        database_target=target, resolved=dump(spec),
        schedule=(meta.get("labels") or {}).get(c.LABEL_SCHEDULE)))


def observe_job(body: Mapping[str, Any], now: datetime) -> tuple[Outcome, dict[str, Any] | None]:
    """The Backup's Job, and what its state and pods say of it."""
    namespace, job_name = body["metadata"]["namespace"], body["status"]["jobName"]
    job = kube.get_job(namespace, job_name)
    pods = kube.job_pods(namespace, job_name) if job else []
    return job_outcome(job, pods, now), job


def committed(body: Mapping[str, Any]) -> bool:
    """Whether this Backup's manifest (the commit marker) is in the bucket: a Job that
    finished and was removed (job.ttlSecondsAfterFinished shorter than a poll) before the
    operator saw it is then a success, not a vanished run."""
    st = body.get("status") or {}
    try:
        store = _resolved_store(body)
        if store is None:
            return False
        manifest = manifests.read(store, st["manifestKey"])
    except (LookupError, AgentError, SpecError, BotoCoreError, ClientError):
        return False
    return manifest.backup_id == st.get("backupId")


def _resolved_store(body: Mapping[str, Any]) -> S3Store | None:
    """The bucket of the Backup's resolved settings (status.resolved), or None when it has
    none or no manifest key yet. Raises what parsing and bucket.open_store raise."""
    st = body.get("status") or {}
    spec = parse(models.BackupSpec, st.get("resolved"), "status.resolved")
    if spec.storage is None or not st.get("manifestKey"):
        return None
    return bucket.open_store(spec.storage, body["metadata"]["namespace"])


def discard_incomplete_uploads(body: Mapping[str, Any]) -> None:
    """The Job has ended: abort multipart uploads a killed agent left open (best effort; a
    failure here must not keep the Backup from its outcome)."""
    st = body.get("status") or {}
    namespace = body["metadata"]["namespace"]
    try:
        store = _resolved_store(body)
        if store is None:
            return
        aborted = bucket.abort_incomplete_uploads(store, st["manifestKey"])
    except (LookupError, AgentError, SpecError, BotoCoreError, ClientError) as exc:
        log.warning("backup %s/%s: cannot check for incomplete uploads: %s", namespace,
                    body["metadata"]["name"], exc)
        return
    if aborted:
        post_event(body, "Normal", "UploadsAborted",
                   f"aborted {len(aborted)} incomplete upload(s) left by an interrupted agent: "
                   f"{', '.join(sorted(set(aborted)))}")


def record_manifest(body: Mapping[str, Any], patch: kopf.Patch, job: dict[str, Any] | None,
                    now: datetime) -> None:
    """Read the manifest the agent wrote: Succeeded with its summary, or (unreadable) retry
    within the grace period, then Failed."""
    st = body["status"]
    spec = parse(models.BackupSpec, st.get("resolved"), "status.resolved")
    key = st["manifestKey"]
    try:
        if spec.storage is None:
            raise SpecError("status.resolved.storage is missing")
        manifest = manifests.read(bucket.open_store(spec.storage, body["metadata"]["namespace"]),
                                  key)
    except (LookupError, AgentError, SpecError) as exc:
        step = decide.manifest_unreadable(str(exc), decide.completion_time(job), now)
        if isinstance(step, str):
            write(patch, Status(message=step))
        else:
            move(body, patch, step)
        return
    summary = manifests.summary(manifest, key)
    size = human_size(summary["sizeBytes"])
    where = f"s3://{spec.storage.bucket}/{layout.dir_of_manifest(key)}"
    move(body, patch, decide.succeeded(list(manifest.components), size, where),
         parse(Status, {"size": size, "components": ",".join(manifest.components), **summary},
               "status"))
    content_alarms.check(body, patch)  # Suspicious when the dump shrank


def stop_job(namespace: str, job_name: str) -> NoReturn:
    """An agent still uploading could write a manifest after we deleted the objects: stop
    it and look again once its pods are gone."""
    kube.delete_job(namespace, job_name)
    raise kopf.TemporaryError("waiting for the backup Job's pods to stop", delay=5)


def wait_for_lock(body: Mapping[str, Any], patch: kopf.Patch, step: decide.Deletion) -> None:
    if step.action == "release":
        log.warning("backup %s/%s: %s", body["metadata"]["namespace"],
                    body["metadata"]["name"], step.message)
        post_event(body, "Warning", "ObjectsLocked", step.message)
        return
    if step.event:
        post_event(body, "Normal", "ObjectsLocked", step.message)
    write(patch, Status(phase="Deleting", message=step.message))
    raise kopf.TemporaryError(step.message, delay=step.delay)


def delete_objects(body: Mapping[str, Any], patch: kopf.Patch, spec: models.BackupSpec,
                   all_versions: bool) -> None:
    """Delete the Backup's objects; on an error, keep the finalizer and retry (unless the
    namespace is going away)."""
    st = body["status"]
    namespace = body["metadata"]["namespace"]
    assert spec.storage is not None  # decide.cleanup: "retain" without storage
    write(patch, Status(phase="Deleting", message="deleting the backup's objects"))
    try:
        count = bucket.delete_backup_objects(
            bucket.open_store(spec.storage, namespace, deleting=True), st["manifestKey"],
            all_versions=all_versions)
    except MissingBucket as exc:
        post_event(body, "Normal", "Deleted", f"nothing to delete: {exc}")
        return
    except LookupError as exc:
        if kube.namespace_terminating(namespace):
            # The namespace's Secrets are being deleted with it and will not come back:
            # waiting would block the namespace forever. Say what stays in the bucket.
            log.warning("namespace %s is being deleted and %s: the objects under %s stay in "
                        "s3://%s", namespace, exc, st["manifestKey"], spec.storage.bucket)
            return
        retry_delete(body, patch, exc)
    except AgentError as exc:
        retry_delete(body, patch, exc)
    post_event(body, "Normal", "Deleted", f"deleted {count} object(s) from the bucket")


def retry_delete(body: Mapping[str, Any], patch: kopf.Patch, exc: Exception) -> NoReturn:
    message = f"cannot delete the backup's objects, will retry: {exc}"
    post_event(body, "Warning", "DeleteFailed", message)
    write(patch, Status(message=message))
    raise kopf.TemporaryError(message, delay=30) from exc
