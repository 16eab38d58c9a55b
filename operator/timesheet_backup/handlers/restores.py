"""Restore: a small state machine driven by a timer, its position kept in status so an
operator restart resumes where it stopped. The steps and their decisions are in
decisions/restores.py; this module observes the cluster and carries them out.

Quiesced Deployments carry their original replica count in an annotation written in the same
patch that scales them to 0, so the count survives an operator crash at any point; unquiesce
reads it back from there. Deleting a Restore mid-way also gives the replicas back."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import kopf

from timesheet_backup import constants as c
from timesheet_backup import kube
from timesheet_backup.api import models
from timesheet_backup.api.fields import SpecError, dump, parse
from timesheet_backup.api.resolve import deep_merge
from timesheet_backup.decisions import restores as decide
from timesheet_backup.decisions.restores import BackupNotReady, RestoreFailed
from timesheet_backup.errors import AgentError
from timesheet_backup.handlers import bucket
from timesheet_backup.handlers.common import (
    claim_users,
    config,
    database_target,
    enter,
    job_identity,
    lock_database,
    missing_secrets,
    not_terminal,
    now,
    post_event,
    write,
)
from timesheet_backup.jobs import agent_args, manifests
from timesheet_backup.jobs.pod import child_name, job_settings, required_secrets
from timesheet_backup.status import TERMINAL_PHASES, parse_time, timestamp
from timesheet_backup.storage import manifest as mf

POLL_SECONDS = 3.0
ANNOTATION_REPLICAS = f"{c.GROUP}/original-replicas"
ANNOTATION_QUIESCED_BY = f"{c.GROUP}/quiesced-by"


# --- resolution (which backup, which targets) -----------------------------------------------


def resolve(body: Mapping[str, Any]) -> dict[str, Any]:
    """Everything later steps need, as JSON for status.resolved: source storage and manifest
    key, components, database and uploads targets, and whether artifacts are encrypted."""
    namespace = body["metadata"]["namespace"]
    spec = parse(models.RestoreSpec, body.get("spec"))
    defaults = config().defaults
    backup_db: dict[str, Any] = {}
    backup_uploads: dict[str, Any] = {}
    if spec.backup_name:
        backup = kube.get_custom(namespace, c.PLURAL_BACKUP, spec.backup_name)
        decide.check_backup(spec.backup_name, backup)
        bst = (backup or {}).get("status") or {}
        resolved_backup = bst.get("resolved") or {}
        storage = resolved_backup.get("storage") or {}
        manifest_key = bst["manifestKey"]
        backup_db = resolved_backup.get("database") or {}
        backup_uploads = resolved_backup.get("uploads") or {}
    elif spec.source is not None:
        storage = deep_merge(dump(defaults.storage) if defaults.storage else {},
                             dump(spec.source.storage))
        manifest_key = spec.source.manifest_key
    else:
        raise RestoreFailed("InvalidSpec", "set exactly one of backupName or source")
    storage_spec = parse(models.StorageSpec, storage, "storage")
    try:
        manifest = mf.read(bucket.open_store(storage_spec, namespace), manifest_key)
    except (LookupError, AgentError) as exc:
        raise RestoreFailed("ManifestUnreadable", f"cannot read {manifest_key}: {exc}") from exc
    # Connection settings come from the backup (or operator defaults for a bucket source).
    return decide.resolve(spec, decide.Source(
        storage=storage, manifest_key=manifest_key, backup_id=manifest.backup_id,
        components=list(manifest.components),
        encrypted=[a.component for a in manifest.artifacts if a.encrypted],
        database=backup_db or (dump(defaults.database) if defaults.database else {}),
        uploads=backup_uploads or (dump(defaults.uploads) if defaults.uploads else {})))


def check_secrets(namespace: str, resolved: Mapping[str, Any],
                  spec: models.RestoreSpec) -> None:
    problems = missing_secrets(namespace,
                               required_secrets(agent_args.restore_env(spec, resolved)))
    if problems:
        raise RestoreFailed("SecretMissing", "; ".join(problems))


# --- steps ----------------------------------------------------------------------------------


def quiesce(namespace: str, restore: str, names: list[str]) -> list[dict[str, Any]]:
    """Scale each Deployment to 0, recording its replicas in the same patch."""
    recorded = []
    for name in names:
        deployment = kube.get_deployment(namespace, name)
        if deployment is None:
            raise RestoreFailed("DeploymentNotFound", f"Deployment {name} to quiesce not found")
        annotations = deployment["metadata"].get("annotations") or {}
        owner = annotations.get(ANNOTATION_QUIESCED_BY)
        if owner and owner != restore and restore_active(namespace, owner):
            raise QuiesceBusy(f"waiting for Restore {owner}, which scaled Deployment {name} "
                              "down, to give it back")
        if owner == restore:
            replicas = int(annotations.get(ANNOTATION_REPLICAS, "1"))
        elif owner:
            # Left by a Restore that is gone: its record of the replicas is the true one
            # (the Deployment is at 0 because of it), so keep the count and take it over.
            replicas = int(annotations.get(ANNOTATION_REPLICAS, "1"))
            kube.patch_deployment(namespace, name, {
                "metadata": {"annotations": {ANNOTATION_QUIESCED_BY: restore}},
                "spec": {"replicas": 0},
            })
        else:
            replicas = int(deployment["spec"].get("replicas", 1))
            kube.patch_deployment(namespace, name, {
                "metadata": {"annotations": {ANNOTATION_REPLICAS: str(replicas),
                                             ANNOTATION_QUIESCED_BY: restore}},
                "spec": {"replicas": 0},
            })
        recorded.append({"name": name, "replicas": replicas})
    return recorded


class QuiesceBusy(Exception):
    """Another Restore still holds a Deployment scaled down: wait for it."""


def restore_active(namespace: str, name: str) -> bool:
    restore = kube.get_custom(namespace, c.PLURAL_RESTORE, name)
    if restore is None or restore.get("metadata", {}).get("deletionTimestamp"):
        return False
    return (restore.get("status") or {}).get("phase") not in TERMINAL_PHASES


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
        deployment = kube.get_deployment(namespace, name)
        if deployment is None:
            continue
        annotations = deployment["metadata"].get("annotations") or {}
        if annotations.get(ANNOTATION_QUIESCED_BY) != restore:
            continue
        kube.patch_deployment(namespace, name, {
            "metadata": {"annotations": {ANNOTATION_REPLICAS: None,
                                         ANNOTATION_QUIESCED_BY: None}},
            "spec": {"replicas": int(annotations.get(ANNOTATION_REPLICAS, "1"))},
        })
        restored.append(name)
    return restored


# --- the state machine ------------------------------------------------------------------------


def _step_record(st: Mapping[str, Any], name: str, phase: str, message: str | None = None
                 ) -> list[dict[str, Any]]:
    steps = [dict(s) for s in st.get("steps") or []]
    stamp = timestamp(now())
    for s in steps:
        if s["name"] == name:
            s["phase"] = phase
            if phase != "Running":
                s["completionTime"] = stamp
            if message:
                s["message"] = message
            return steps
    entry: dict[str, Any] = {"name": name, "phase": phase, "startTime": stamp}
    if phase != "Running":
        entry["completionTime"] = stamp
    if message:
        entry["message"] = message
    steps.append(entry)
    return steps


class Machine:
    """One tick of a Restore: do what the current step needs, move on when it is done."""

    def __init__(self, body: Mapping[str, Any], patch: kopf.Patch) -> None:
        self.body = body
        self.patch = patch
        self.st: dict[str, Any] = dict(body.get("status") or {})
        self.namespace = body["metadata"]["namespace"]
        self.name = body["metadata"]["name"]
        self.spec = parse(models.RestoreSpec, body.get("spec"))
        self.deployments = self.spec.quiesce.deployments if self.spec.quiesce else []

    def goto(self, step: str, message: str, phase: str = "Running", **fields: Any) -> None:
        steps = _step_record(self.st, step, "Running")
        reason = f"Step{step.capitalize()}"
        enter(self.body, self.patch, phase, reason, message, currentStep=step, steps=steps,
              **fields)
        post_event(self.body, "Normal", reason, message)

    def finish_step(self, step: str, result: str, message: str | None = None) -> None:
        self.st["steps"] = _step_record(self.st, step, result, message)
        write(self.patch, {"steps": self.st["steps"]})

    def fail(self, step: str, reason: str, message: str) -> None:
        """Record the failure, then give the app back before ending Failed (the Warning
        Event is posted once, by end())."""
        self.finish_step(step, "Failed", message)
        write(self.patch, {"failedStep": step, "failureReason": reason})
        self.st["failedStep"], self.st["failureReason"] = step, reason
        self.st["message"] = message
        if decide.unquiesce_after_failure(step, self.deployments):
            self.goto("unquiesce", decide.unquiescing_message(message),
                      failedStep=step, failureReason=reason)
        else:
            self.end()

    def end(self) -> None:
        if self.st.get("failedStep"):
            enter(self.body, self.patch, "Failed", str(self.st.get("failureReason")),
                  decide.failure_message(self.st), event="Warning", currentStep=None,
                  steps=self.st.get("steps"))
        else:
            source = (self.st.get("resolved") or {}).get("manifestKey")
            enter(self.body, self.patch, "Succeeded", "Completed",
                  f"restored from {source}", event="Normal", currentStep=None,
                  steps=self.st.get("steps"))
        # transition() leaves None out; a null in the merge patch removes the field, so a
        # finished Restore shows no STEP (the steps list keeps the history).
        write(self.patch, {"currentStep": None})

    def tick(self) -> None:
        step = self.st.get("currentStep") or "resolve"
        try:
            unknown = decide.unknown_step(step)
            if unknown:
                raise unknown
            getattr(self, f"step_{step}")()
        except RestoreFailed as exc:
            self.fail(step, exc.reason, str(exc))

    # Each step either returns (still working: next tick), or moves with goto()/end().

    def step_resolve(self) -> None:
        if not self.st.get("startTime"):
            write(self.patch, {"startTime": timestamp(now())})
        try:
            resolved = resolve(self.body)
        except BackupNotReady as exc:
            enter(self.body, self.patch, "Waiting", "BackupNotReady", str(exc),
                  currentStep="resolve")
            return
        except SpecError as exc:
            raise RestoreFailed("InvalidSpec", str(exc)) from exc
        check_secrets(self.namespace, resolved, self.spec)
        self.st["resolved"] = resolved
        self.finish_step("resolve", "Succeeded")
        self.goto("wait", "checking that no backup of the target is running",
                  phase="Waiting", resolved=resolved,
                  databaseTarget=database_target(resolved.get("database")),
                  restoredFrom={"backupName": self.spec.backup_name,
                                "manifestKey": resolved["manifestKey"],
                                "backupId": resolved.get("backupId")})

    def step_wait(self) -> None:
        target = database_target((self.st.get("resolved") or {}).get("database"))
        # Other Restores of the database too: two would undo each other's work.
        blocker = lock_database(self.namespace, target, c.PLURAL_RESTORE, self.name,
                                (c.PLURAL_BACKUP, c.PLURAL_RESTORE))
        if blocker:
            enter(self.body, self.patch, "Waiting",
                  "WaitingForBackup" if blocker.startswith(c.KIND_BACKUP) else
                  "WaitingForRestore",
                  f"waiting for {blocker} of the same database to finish",
                  currentStep="wait")
            return
        self.finish_step("wait", "Succeeded")
        if self.deployments:
            self.goto("quiesce", f"scaling {', '.join(self.deployments)} to 0")
        else:
            self.goto("restore", "restoring")

    def step_quiesce(self) -> None:
        busy, left = None, []
        try:
            write(self.patch, {"quiesced": quiesce(self.namespace, self.name,
                                                   self.deployments)})
            left = pods_left(self.namespace, self.deployments)
        except QuiesceBusy as exc:
            busy = str(exc)
        quiesce_spec = self.spec.quiesce or models.QuiesceSpec()
        progress = decide.quiesce_progress(self._step_start("quiesce") or now(), now(),
                                           quiesce_spec.timeout_seconds, busy, left)
        if progress.action == "fail":
            raise RestoreFailed(progress.reason, progress.message)
        if progress.action == "wait":
            write(self.patch, {"message": progress.message})
            return
        self.finish_step("quiesce", "Succeeded")
        self.goto("restore", "restoring")

    def _step_start(self, name: str) -> datetime | None:
        for s in self.st.get("steps") or []:
            if s["name"] == name:
                return parse_time(s.get("startTime"))
        return None

    def job_step(self, step: str, name: str) -> decide.JobStep:
        """Observe the step's Job `name` and decide; a Job to create is created by the
        caller, which records it in status.jobName in the same patch."""
        job = kube.get_job(self.namespace, name)
        pods = kube.job_pods(self.namespace, name) if job else []
        decision = decide.job_step(step, name, self.st.get("jobName"), job, pods, now())
        if decision.action == "fail":
            raise RestoreFailed(decision.reason, decision.message)
        return decision

    def start_job(self, manifest: Mapping[str, Any]) -> None:
        kube.create_job(manifest)  # False (409) after a crash before the status patch: ours
        self.st["jobName"] = manifest["metadata"]["name"]
        write(self.patch, {"jobName": self.st["jobName"]})

    def step_restore(self) -> None:
        resolved = self.st.get("resolved") or {}
        decision = self.job_step("restore", child_name(self.name, "restore"))
        if decision.action == "create":
            # Decided once, when the Job is created: the restored files must belong to the
            # app (whose pods are gone by now: its Deployment's template tells who it is).
            claim = (resolved.get("uploads") or {}).get("claimName")
            explicit = job_settings(self.spec.job, config()).pod_security_context
            chosen = job_identity(self.body, explicit, claim,
                                  claim_users(self.namespace, claim))
            write(self.patch, {"jobIdentity": chosen.description})
            self.start_job(manifests.restore_job(self.body, self.spec, resolved, config(),
                                                 chosen.security_context))
            return
        if decision.action == "wait":
            return
        self.finish_step("restore", "Succeeded")
        hooks = self.spec.hooks.post_restore if self.spec.hooks else None
        if hooks:
            self.goto("hooks", f"running hook {hooks[0].name}")
        else:
            self.after_data()

    def after_data(self) -> None:
        if self.deployments:
            self.goto("unquiesce", "scaling Deployments back up")
        else:
            self.after_unquiesce()

    def step_hooks(self) -> None:
        hooks = (self.spec.hooks.post_restore if self.spec.hooks else None) or []
        names = [manifests.hook_job_name(self.name, index) for index in range(len(hooks))]
        # From the hook at work on: finished ones are not looked at again (their Jobs may
        # be gone, removed by ttlSecondsAfterFinished).
        for index in range(decide.current_hook(names, self.st.get("jobName")), len(hooks)):
            hook = hooks[index]
            try:
                decision = self.job_step("hooks", names[index])
            except RestoreFailed as exc:
                raise RestoreFailed(exc.reason, f"hook {hook.name} failed: {exc}") from exc
            if decision.action == "create":
                self.start_job(manifests.hook_job(self.body, index, hook, self.spec, config()))
                return
            if decision.action == "wait":
                return
        self.finish_step("hooks", "Succeeded")
        self.after_data()

    def step_unquiesce(self) -> None:
        unquiesce(self.namespace, self.name, self.deployments)
        self.finish_step("unquiesce", "Succeeded")
        if self.st.get("failedStep"):
            self.end()
        else:
            self.after_unquiesce()

    def after_unquiesce(self) -> None:
        if self.spec.verify and self.spec.verify.http_get:
            self.goto("verify", f"checking {self.spec.verify.http_get.url}")
        else:
            self.end()

    def step_verify(self) -> None:
        check = self.spec.verify.http_get if self.spec.verify else None
        if check is None:
            self.end()
            return
        decision = self.job_step("verify", child_name(self.name, "verify"))
        if decision.action == "create":
            self.start_job(manifests.verify_job(self.body, self.spec, check, config()))
            return
        if decision.action == "wait":
            return
        self.finish_step("verify", "Succeeded", decision.message)
        self.end()


@kopf.timer(c.GROUP, c.VERSION, c.PLURAL_RESTORE, interval=POLL_SECONDS, when=not_terminal)
def reconcile_restore(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    if body.get("metadata", {}).get("deletionTimestamp"):
        return
    Machine(body, patch).tick()


@kopf.on.delete(c.GROUP, c.VERSION, c.PLURAL_RESTORE)
def delete_restore(body: kopf.Body, **_: Any) -> None:
    """A Restore deleted mid-way still gives the app its replicas back, once none of its
    Jobs' pods runs any more (a restore Job may be running pg_restore or swapping the
    uploads in: the app must not start on a half-restored state)."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    own = {c.LABEL_RESTORE: name}
    plan = decide.deletion(kube.jobs_matching(namespace, own), kube.pods_matching(namespace, own))
    for job in plan.delete_jobs:
        kube.delete_job(namespace, job)
    if not plan.unquiesce:
        raise kopf.TemporaryError(
            f"waiting for the Restore's Jobs to stop before scaling back up: "
            f"{', '.join(plan.waiting_for)}", delay=5)
    spec = body.get("spec") or {}
    names = (spec.get("quiesce") or {}).get("deployments") or []
    if names:
        unquiesce(namespace, name, list(names))
