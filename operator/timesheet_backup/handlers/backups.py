"""Backup: resolve defaults, run one agent Job, record what landed in the bucket; on deletion,
remove the objects when the deletion policy says so."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf
from botocore.exceptions import BotoCoreError, ClientError

from timesheet_backup import constants as c
from timesheet_backup import kube
from timesheet_backup.api import models
from timesheet_backup.api.fields import SpecError, dump, parse
from timesheet_backup.api.resolve import ResolveError, resolve_backup
from timesheet_backup.decisions.backups import deletion
from timesheet_backup.errors import AgentError, ConfigError, MissingBucket
from timesheet_backup.handlers import bucket, content_alarms
from timesheet_backup.handlers.common import (
    claim_users,
    config,
    database_target,
    enter,
    insecure_settings,
    job_identity,
    lock_database,
    missing_secrets,
    not_terminal,
    now,
    post_event,
    write,
)
from timesheet_backup.jobs import agent_args
from timesheet_backup.jobs.manifests import backup_job, uploads_claim
from timesheet_backup.jobs.outcome import job_outcome
from timesheet_backup.status import human_size, parse_time, timestamp
from timesheet_backup.storage import layout
from timesheet_backup.storage import manifest as manifests

log = logging.getLogger(__name__)

POLL_SECONDS = 5.0
Status = models.BackupStatus
# After the Job completed, how long a manifest that cannot be read is retried before the
# backup is declared Failed (covers a store that is briefly unreachable from the operator).
MANIFEST_GRACE_SECONDS = 120


def manifest_key_of(body: Mapping[str, Any], spec: models.BackupSpec) -> str:
    meta = body["metadata"]
    prefix = spec.storage.prefix if spec.storage else None
    return layout.manifest_key(prefix or "", meta["namespace"], meta["name"])


def start(body: Mapping[str, Any], patch: kopf.Patch) -> None:
    meta = body["metadata"]
    namespace = meta["namespace"]
    try:
        spec = resolve_backup(body.get("spec"), config().defaults)
        # Before the Job: a prefix the schema lets through but the key layout refuses (a
        # `..` segment) must fail the Backup, not crash this handler after the Job started.
        manifest_key = manifest_key_of(body, spec)
    except (ResolveError, SpecError, ConfigError) as exc:
        enter(body, patch, "Failed", "InvalidSpec", str(exc), Status(), event="Warning")
        return
    problems = missing_secrets(namespace, agent_args.backup_secrets(spec))
    if problems:
        enter(body, patch, "Failed", "SecretMissing", "; ".join(problems), Status(),
              event="Warning")
        return
    target = database_target(dump(spec.database)) if "database" in spec.components else None
    blocker = lock_database(namespace, target, c.PLURAL_BACKUP, meta["name"],
                            (c.PLURAL_RESTORE,))
    if blocker:
        enter(body, patch, "Pending", "WaitingForRestore",
              f"waiting for {blocker} of the same database to finish", Status())
        return
    claim = uploads_claim(spec)
    users = claim_users(namespace, claim)
    explicit = spec.job.pod_security_context if spec.job else None
    chosen = job_identity(body, explicit, claim, users)
    manifest = backup_job(body, spec, config(), users.node, chosen.security_context)
    kube.create_job(manifest)
    job_name = manifest["metadata"]["name"]
    enter(body, patch, "Running", "JobStarted", f"backup Job {job_name} started", Status(
        job_name=job_name, start_time=timestamp(now()), backup_id=meta["uid"],
        warnings=insecure_settings(body, spec.storage),
        job_identity=chosen.description,
        manifest_key=manifest_key, components=",".join(spec.components),
        database_target=target, resolved=dump(spec),
        schedule=(meta.get("labels") or {}).get(c.LABEL_SCHEDULE)), event="Normal")


def discard_incomplete_uploads(body: Mapping[str, Any]) -> None:
    """The Job has ended: abort multipart uploads a killed agent left open (best effort; a
    failure here must not keep the Backup from its outcome)."""
    st = body.get("status") or {}
    namespace = body["metadata"]["namespace"]
    try:
        spec = parse(models.BackupSpec, st.get("resolved"), "status.resolved")
        if spec.storage is None or not st.get("manifestKey"):
            return
        aborted = bucket.abort_incomplete_uploads(bucket.open_store(spec.storage, namespace),
                                                  st["manifestKey"])
    except (LookupError, AgentError, SpecError, BotoCoreError, ClientError) as exc:
        log.warning("backup %s/%s: cannot check for incomplete uploads: %s", namespace,
                    body["metadata"]["name"], exc)
        return
    if aborted:
        post_event(body, "Normal", "UploadsAborted",
                   f"aborted {len(aborted)} incomplete upload(s) left by an interrupted agent: "
                   f"{', '.join(sorted(set(aborted)))}")


def follow(body: Mapping[str, Any], patch: kopf.Patch) -> None:
    st = body.get("status") or {}
    namespace = body["metadata"]["namespace"]
    job = kube.get_job(namespace, st["jobName"])
    pods = kube.job_pods(namespace, st["jobName"]) if job else []
    outcome = job_outcome(job, pods, now())
    if outcome.state == "running":
        return
    discard_incomplete_uploads(body)
    if outcome.state == "failed":
        enter(body, patch, "Failed", outcome.reason, outcome.message, Status(), event="Warning")
        return
    spec = parse(models.BackupSpec, st.get("resolved"), "status.resolved")
    key = st["manifestKey"]
    try:
        if spec.storage is None:
            raise SpecError("status.resolved.storage is missing")
        manifest = manifests.read(bucket.open_store(spec.storage, namespace), key)
    except (LookupError, AgentError, SpecError) as exc:
        finished = parse_time(((job or {}).get("status") or {}).get("completionTime"))
        if finished and (now() - finished).total_seconds() < MANIFEST_GRACE_SECONDS:
            write(patch, Status(message=f"the Job finished; reading the manifest: {exc}"))
            return
        enter(body, patch, "Failed", "ManifestUnreadable",
              f"the agent finished but its manifest cannot be read: {exc}", Status(),
              event="Warning")
        return
    summary = manifests.summary(manifest, key)
    size = human_size(summary["sizeBytes"])
    where = f"s3://{spec.storage.bucket}/{layout.dir_of_manifest(key)}"
    enter(body, patch, "Succeeded", "Completed",
          f"backed up {', '.join(manifest.components)} ({size}) to {where}",
          parse(Status, {"size": size, "components": ",".join(manifest.components), **summary},
                "status"), event="Normal")
    content_alarms.check(body, patch)  # Suspicious when the dump shrank (issue 14 item 5)


@kopf.timer(c.GROUP, c.VERSION, c.PLURAL_BACKUP, interval=POLL_SECONDS, when=not_terminal)
def reconcile_backup(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    if body.get("metadata", {}).get("deletionTimestamp"):
        return
    phase = (body.get("status") or {}).get("phase")
    if phase in (None, "Pending"):
        start(body, patch)
    elif phase == "Running":
        follow(body, patch)


@kopf.on.delete(c.GROUP, c.VERSION, c.PLURAL_BACKUP)
def delete_backup(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    st = body.get("status") or {}
    namespace = body["metadata"]["namespace"]
    if st.get("jobName") and kube.job_pods(namespace, st["jobName"]):
        # An agent still uploading could write a manifest after we deleted the objects.
        kube.delete_job(namespace, st["jobName"])
        raise kopf.TemporaryError("waiting for the backup Job's pods to stop", delay=5)
    if not st.get("resolved") or not st.get("manifestKey"):
        return  # never started: nothing can be in the bucket
    spec = parse(models.BackupSpec, st["resolved"], "status.resolved")
    if spec.deletion_policy == "Retain" or spec.storage is None:
        post_event(body, "Normal", reason="Retained", message="deletionPolicy Retain: objects kept")
        return
    where = f"s3://{spec.storage.bucket}/{layout.dir_of_manifest(st['manifestKey'])}"
    locked_until = parse_time(st.get("lockedUntil"))
    step = deletion(locked_until, now(), where=where, current_message=st.get("message"),
                    namespace_terminating=bool(locked_until) and
                    kube.namespace_terminating(namespace))
    if step.action == "release":
        log.warning("backup %s/%s: %s", namespace, body["metadata"]["name"], step.message)
        post_event(body, "Warning", "ObjectsLocked", step.message)
        return
    if step.action == "wait":
        if step.event:
            post_event(body, "Normal", "ObjectsLocked", step.message)
        write(patch, Status(phase="Deleting", message=step.message))
        raise kopf.TemporaryError(step.message, delay=step.delay)
    write(patch, Status(phase="Deleting", message="deleting the backup's objects"))
    try:
        count = bucket.delete_backup_objects(bucket.open_store(spec.storage, namespace),
                                             st["manifestKey"], all_versions=step.all_versions)
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
        message = f"cannot delete the backup's objects, will retry: {exc}"
        post_event(body, "Warning", "DeleteFailed", message)
        write(patch, Status(message=message))
        raise kopf.TemporaryError(message, delay=30) from exc
    except AgentError as exc:
        message = f"cannot delete the backup's objects, will retry: {exc}"
        post_event(body, "Warning", reason="DeleteFailed", message=message)
        write(patch, Status(message=message))
        raise kopf.TemporaryError(message, delay=30) from exc
    post_event(body, "Normal", "Deleted", f"deleted {count} object(s) from the bucket")
