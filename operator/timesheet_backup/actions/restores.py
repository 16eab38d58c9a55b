"""What a Restore reads from and does to the cluster, the bucket and its own status
(actions/restore_steps.py and handlers/restores.py call these; the choices are made in
decisions/restores.py).

Quiesced Deployments carry their original replica count in an annotation written in the same
patch that scales them to 0, so the count survives an operator crash at any point; unquiesce
reads it back from there. Deleting a Restore mid-way also gives the replicas back."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import kopf
from kubernetes.client import ApiException

from timesheet_backup import constants as c
from timesheet_backup import kube
from timesheet_backup.actions import bucket
from timesheet_backup.actions.common import (
    claim_users,
    config,
    enter,
    job_identity,
    missing_secrets,
    now,
    post_event,
    write,
)
from timesheet_backup.api import models
from timesheet_backup.api.defaults import Defaults
from timesheet_backup.api.fields import dump, parse
from timesheet_backup.decisions import restores as decide
from timesheet_backup.decisions.restores import RestoreFailed
from timesheet_backup.errors import AgentError
from timesheet_backup.jobs import agent_args, identity
from timesheet_backup.jobs.pod import job_settings
from timesheet_backup.storage import catalog
from timesheet_backup.storage import manifest as mf

Status = models.RestoreStatus
log = logging.getLogger(__name__)


def resolve(namespace: str, spec: models.RestoreSpec) -> dict[str, Any]:
    """Everything later steps need, as JSON for status.resolved: source storage and manifest
    key, components, database and uploads targets, and whether artifacts are encrypted.
    Raises BackupNotReady, RestoreFailed, or SpecError (a bad storage setting)."""
    defaults = config().defaults
    backup = (kube.get_custom(namespace, c.PLURAL_BACKUP, spec.backup_name)
              if spec.backup_name else None)
    # Read once, in the tick that resolves: the choice goes to status.resolved and later
    # steps read it from there, so a newer Backup of the schedule never changes it.
    candidates = (kube.list_custom(namespace, c.PLURAL_BACKUP,
                                   f"{c.LABEL_SCHEDULE}={spec.latest.schedule_name}")
                  if spec.latest else [])
    in_bucket = (_bucket_entries(namespace, spec, defaults)
                 if spec.source is not None and spec.source.latest is not None else [])
    location = decide.locate(spec, backup, defaults, candidates, in_bucket, namespace)
    storage_spec = parse(models.StorageSpec, location.storage, "storage")
    try:
        manifest = mf.read(bucket.open_store(storage_spec, namespace), location.manifest_key)
    except (LookupError, AgentError) as exc:
        raise decide.manifest_unreadable(location, exc) from exc
    database = manifest.artifact(c.COMPONENT_DATABASE)
    return decide.resolve(spec, decide.source(
        location, manifest.backup_id, manifest.components,
        [a.component for a in manifest.artifacts if a.encrypted], defaults,
        database.format if database else None,
        database is not None and database.roles is not None))


def _bucket_entries(namespace: str, spec: models.RestoreSpec,
                    defaults: Defaults) -> list[decide.BucketEntry]:
    """Every manifest under the chosen namespace's prefix, read once (the tick that resolves;
    the choice then lives in status.resolved). Unreadable ones are listed with their error."""
    storage = decide.source_storage(spec, defaults)
    try:
        store = bucket.open_store(parse(models.StorageSpec, storage, "storage"), namespace)
        entries = catalog.list_backups(store, store.settings.prefix,
                                       decide.bucket_namespace(spec, namespace))
    except (LookupError, AgentError) as exc:
        raise RestoreFailed("ManifestUnreadable",
                            f"cannot list the backups in bucket {storage.get('bucket')!r}: "
                            f"{exc}") from exc
    return bucket_entries(entries)


def bucket_entries(entries: Sequence[catalog.Entry]) -> list[decide.BucketEntry]:
    """The catalog's listing as the choice needs it."""
    return [decide.BucketEntry(e.key, error=e.error) if e.manifest is None else
            decide.BucketEntry(e.key, e.manifest.namespace, dict(e.manifest.labels),
                               e.manifest.completion_time)
            for e in entries]


def secret_problems(namespace: str, spec: models.RestoreSpec,
                    resolved: Mapping[str, Any]) -> list[str]:
    """What is missing of the Secrets the restore Job needs (empty: all there)."""
    return missing_secrets(namespace, agent_args.restore_secrets(spec, resolved))


def quiesce(namespace: str, restore: str, names: list[str]
            ) -> list[models.QuiescedDeployment]:
    """Scale each Deployment to 0, recording its replicas in the same patch (raises
    RestoreFailed, or QuiesceBusy while another Restore holds one)."""
    recorded = []
    for name in names:
        deployment = kube.get_deployment(namespace, name)
        other = decide.holder(restore, deployment)
        step = decide.quiesce_deployment(
            restore, name, deployment,
            other is not None and decide.at_work(
                kube.get_custom(namespace, c.PLURAL_RESTORE, other)))
        if step.patch is not None:
            kube.patch_deployment(namespace, name, step.patch)
        recorded.append(models.QuiescedDeployment(name=name, replicas=step.replicas))
    return recorded


def pods_left(namespace: str, names: list[str]) -> list[str]:
    left = []
    for name in names:
        deployment = kube.get_deployment(namespace, name)
        selector = ((deployment or {}).get("spec") or {}).get("selector", {}).get("matchLabels")
        if selector:
            left += [p["metadata"]["name"] for p in kube.pods_matching(namespace, selector)]
    return left


def unquiesce(namespace: str, restore: str, names: list[str]) -> list[str]:
    """Give every Deployment this restore scaled down its replicas back; returns names."""
    restored = []
    for name in names:
        patch = decide.unquiesce_patch(restore, kube.get_deployment(namespace, name))
        if patch is not None:
            kube.patch_deployment(namespace, name, patch)
            restored.append(name)
    return restored


def job_and_pods(namespace: str, name: str
                 ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    job = kube.get_job(namespace, name)
    return job, (kube.job_pods(namespace, name) if job else [])


def create_job(manifest: Mapping[str, Any]) -> str:
    """Create a step's Job; returns its name. A 409 (created before a crash, before the status
    patch recorded it) is ours: kube.create_job returns False and it is followed as usual."""
    kube.create_job(manifest)
    return str(manifest["metadata"]["name"])


def restore_identity(body: Mapping[str, Any], spec: models.RestoreSpec,
                     resolved: Mapping[str, Any]) -> identity.Identity:
    """Decided once, when the restore Job is created: the restored files must belong to the
    app (whose pods are gone by now: its Deployment's template tells who it is)."""
    claim = (resolved.get("uploads") or {}).get("claimName")
    explicit = job_settings(spec.job, config()).pod_security_context
    return job_identity(body, explicit, claim, claim_users(body["metadata"]["namespace"], claim))


def get_backup(namespace: str, name: str) -> dict[str, Any] | None:
    return kube.get_custom(namespace, c.PLURAL_BACKUP, name)


def create_safety_backup(namespace: str, body: Mapping[str, Any]) -> None:
    """Create the safety Backup. A 409 (created before a crash, before status recorded it) is
    this Restore's own (its name holds the Restore's uid). One the API server refuses (the
    schema, the admission webhook, RBAC) fails the Restore with the server's message instead
    of retrying forever."""
    name = body["metadata"]["name"]
    try:
        kube.create_custom(namespace, c.PLURAL_BACKUP, body)
    except ApiException as exc:
        if exc.status not in (400, 403, 422):
            raise
        raise RestoreFailed(decide.SAFETY_FAILED,
                            f"the API server refused safety Backup {name}: "
                            f"{api_message(exc)}; the restore did not start") from exc


def api_message(exc: ApiException) -> str:
    """The Status message of an API error (its body), else its HTTP reason."""
    try:
        message = json.loads(exc.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or exc.reason)


def prune_safety_backups(namespace: str, spec: models.RestoreSpec) -> None:
    """The safety Backups' own retention, applied when a new one Succeeded (best effort: a
    failure to delete an old one must not hold up the restore; the next one tries again)."""
    keep = (spec.safety_backup or models.SafetyBackupSpec()).keep
    try:
        for name in decide.prune_safety_backups(
                kube.list_custom(namespace, c.PLURAL_BACKUP, c.LABEL_SAFETY_FOR), keep):
            kube.delete_custom(namespace, c.PLURAL_BACKUP, name)
    except ApiException as exc:
        log.warning("cannot prune the safety Backups of %s: %s", namespace, exc)


def stop_jobs(namespace: str, restore: str) -> decide.Deletion:
    """Delete the Restore's Jobs (their pods get SIGTERM); returns what is still running."""
    own = {c.LABEL_RESTORE: restore}
    plan = decide.deletion(kube.jobs_matching(namespace, own), kube.pods_matching(namespace, own))
    for job in plan.delete_jobs:
        kube.delete_job(namespace, job)
    return plan


class Run:
    """A Restore as one tick sees it (its spec, its status so far) and the acts on itself:
    status through the one writer (common.write/enter, as models.RestoreStatus), and a
    Normal Event per step."""

    def __init__(self, body: Mapping[str, Any], patch: kopf.Patch) -> None:
        self.body, self.patch = body, patch
        self.st: dict[str, Any] = dict(body.get("status") or {})
        self.namespace, self.name = body["metadata"]["namespace"], body["metadata"]["name"]
        self.uid = str(body["metadata"].get("uid") or "")
        self.spec = parse(models.RestoreSpec, body.get("spec"))
        self.deployments = decide.deployments_of(self.spec)

    def goto(self, step: str, message: str, phase: str = "Running",
             fields: Status | None = None) -> None:
        reason = f"Step{step.capitalize()}"
        fields = fields or Status()
        fields.current_step = step
        fields.steps = decide.record_step(self.st.get("steps"), step, "Running", now())
        enter(self.body, self.patch, phase, reason, message, fields)
        post_event(self.body, "Normal", reason, message)

    def finish_step(self, step: str, result: str, message: str | None = None) -> None:
        steps = decide.record_step(self.st.get("steps"), step, result, now(), message)
        self.st["steps"] = dump(steps)
        write(self.patch, Status(steps=steps))

    def advance(self, step: str, message: str | None = None, phase: str = "Running",
                fields: Status | None = None) -> None:
        """`step` succeeded: go to the step that follows, or end."""
        self.finish_step(step, "Succeeded", message)
        following = decide.following(
            step, self.spec, bool(self.st.get("failedStep")),
            decide.safety_components(self.spec, self.st.get("resolved") or {}))
        if following is None:
            self.end()
        else:
            self.goto(*following, phase=phase, fields=fields)

    def fail(self, step: str, reason: str, message: str) -> None:
        """Record the failure, then give the app back before ending Failed (the Warning
        Event is posted once, by end())."""
        self.finish_step(step, "Failed", message)
        write(self.patch, Status(failed_step=step, failure_reason=reason))
        self.st.update(failedStep=step, failureReason=reason, message=message)
        if decide.unquiesce_after_failure(step, self.deployments):
            self.goto("unquiesce", decide.unquiescing_message(message),
                      fields=Status(failed_step=step, failure_reason=reason))
        else:
            self.end()

    def end(self) -> None:
        # transition() leaves None out; clearing currentStep (a null in the merge patch)
        # removes it, so a finished Restore shows no STEP (the steps list keeps the history).
        ending = decide.ending(self.st)
        enter(self.body, self.patch, ending.phase, ending.reason, ending.message,
              Status(steps=decide.typed_steps(self.st.get("steps"))), event=ending.event,
              clear=("current_step",))

    def job(self, step: str, name: str) -> decide.JobStep:
        """Observe the step's Job `name` and decide; a Job to create is created by the
        caller (start_job), which records it in status.jobName in the same patch."""
        job, pods = job_and_pods(self.namespace, name)
        decision = decide.job_step(step, name, self.st.get("jobName"), job, pods, now())
        if decision.action == "fail":
            raise RestoreFailed(decision.reason, decision.message)
        return decision

    def start_job(self, manifest: Mapping[str, Any]) -> None:
        self.st["jobName"] = create_job(manifest)
        write(self.patch, Status(job_name=self.st["jobName"]))
