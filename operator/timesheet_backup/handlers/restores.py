"""Restore: a small state machine driven by a timer, its position kept in status so an
operator restart resumes where it stopped.

    resolve -> wait -> quiesce -> restore -> hooks -> unquiesce -> verify -> Succeeded
                            \\_______ on failure ______/ -> unquiesce -> Failed

Quiesced Deployments carry their original replica count in an annotation written in the same
patch that scales them to 0, so the count survives an operator crash at any point; unquiesce
reads it back from there. Deleting a Restore mid-way also gives the replicas back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from timesheet_backup import constants as c
from timesheet_backup import kube
from timesheet_backup.agent.errors import AgentError
from timesheet_backup.api import models
from timesheet_backup.api.fields import SpecError, dump, parse
from timesheet_backup.api.resolve import deep_merge
from timesheet_backup.handlers import bucket
from timesheet_backup.handlers.common import (
    claim_users,
    config,
    database_target,
    enter,
    job_identity,
    lock_database,
    not_terminal,
    now,
    post_event,
    write,
)
from timesheet_backup.jobs import agent_args
from timesheet_backup.jobs.outcome import job_outcome
from timesheet_backup.jobs.pod import UPLOADS_MOUNT, AgentJob, PodVolume, agent_job, child_name
from timesheet_backup.status import TERMINAL_PHASES, parse_time, timestamp

POLL_SECONDS = 3.0
ANNOTATION_REPLICAS = f"{c.GROUP}/original-replicas"
ANNOTATION_QUIESCED_BY = f"{c.GROUP}/quiesced-by"
STEPS = ("resolve", "wait", "quiesce", "restore", "hooks", "unquiesce", "verify")


class RestoreFailed(Exception):
    """A step failed; the message is for status and the Event."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class BackupNotReady(Exception):
    """The Backup to restore has not finished yet: wait for it."""


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
        if backup is None:
            raise RestoreFailed("BackupNotFound", f"Backup {spec.backup_name} not found")
        bst = backup.get("status") or {}
        if bst.get("phase") in (None, "Pending", "Running"):
            raise BackupNotReady(f"waiting for Backup {spec.backup_name} to finish")
        if bst.get("phase") != "Succeeded":
            raise RestoreFailed("BackupNotSucceeded",
                                f"Backup {spec.backup_name} is {bst.get('phase')}, "
                                "only a Succeeded backup can be restored")
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
        manifest = bucket.read_manifest(bucket.open_store(storage_spec, namespace), manifest_key)
    except (LookupError, AgentError) as exc:
        raise RestoreFailed("ManifestUnreadable", f"cannot read {manifest_key}: {exc}") from exc
    components: list[str] = list(spec.components or manifest.components)
    absent = [x for x in components if x not in manifest.components]
    if absent:
        raise RestoreFailed("ComponentMissing",
                            f"the backup has no {', '.join(absent)} (it has "
                            f"{', '.join(manifest.components)})")
    # Connection settings come from the backup (or operator defaults for a bucket source);
    # the user's target fields win. Backup-only fields (format, tables, ...) do not apply.
    base_db = backup_db or (dump(defaults.database) if defaults.database else {})
    connection = {k: v for k, v in base_db.items()
                  if k in ("host", "port", "name", "user", "passwordSecretRef", "sslMode")}
    target_db = deep_merge(connection, dump(spec.database) if spec.database else {})
    base_uploads = backup_uploads or (dump(defaults.uploads) if defaults.uploads else {})
    uploads = {k: v for k, v in base_uploads.items() if k in ("claimName", "subPath")}
    target_uploads = deep_merge(uploads, dump(spec.uploads) if spec.uploads else {})
    missing = []
    if "database" in components:
        missing += [f"database.{k}" for k in ("host", "name", "user", "passwordSecretRef")
                    if not target_db.get(k)]
    if "uploads" in components and not target_uploads.get("claimName"):
        missing.append("uploads.claimName")
    if missing:
        raise RestoreFailed("InvalidSpec", "incomplete restore target, set: " + ", ".join(missing))
    encrypted = any(a.encrypted for a in manifest.artifacts if a.component in components)
    if encrypted and spec.decryption is None:
        raise RestoreFailed("DecryptionKeyMissing",
                            "the backup is encrypted: set spec.decryption.secretRef")
    return {
        "storage": storage,
        "manifestKey": manifest_key,
        "backupId": manifest.backup_id,
        "components": components,
        "database": target_db if "database" in components else None,
        "uploads": target_uploads if "uploads" in components else None,
        "encrypted": encrypted,
    }


def check_secrets(namespace: str, resolved: Mapping[str, Any],
                  spec: models.RestoreSpec) -> None:
    refs: list[tuple[str, str]] = []
    db = resolved.get("database") or {}
    if db.get("passwordSecretRef"):
        refs.append((db["passwordSecretRef"]["name"], db["passwordSecretRef"]["key"]))
    creds = (resolved.get("storage") or {}).get("credentialsSecretRef")
    if creds:
        spec_creds = parse(models.CredentialsSecretRef, creds, "credentialsSecretRef")
        refs += [(spec_creds.name, spec_creds.access_key_id_key),
                 (spec_creds.name, spec_creds.secret_access_key_key)]
    if resolved.get("encrypted") and spec.decryption:
        refs.append((spec.decryption.secret_ref.name, spec.decryption.secret_ref.key))
    problems = []
    for name, key in refs:
        try:
            kube.read_secret_key(namespace, name, key)
        except LookupError as exc:
            problems.append(str(exc))
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


def restore_job(body: Mapping[str, Any], spec: models.RestoreSpec,
                resolved: Mapping[str, Any],
                security_context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    meta = body["metadata"]
    volumes = []
    uploads = resolved.get("uploads")
    if uploads:
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
        job=spec.job or models.JobSpec(),
        security_context=security_context,
    ), config())


def hook_job(body: Mapping[str, Any], index: int, hook: models.HookSpec,
             spec: models.RestoreSpec) -> dict[str, Any]:
    meta = body["metadata"]
    manifest = agent_job(AgentJob(
        name=child_name(meta["name"], f"hook-{index}"),
        namespace=meta["namespace"],
        owner=body,
        labels={c.LABEL_RESTORE: meta["name"]},
        args=hook.args or [],
        command=hook.command,
        image=hook.image,
        env=hook.env or [],
        job=spec.job or models.JobSpec(),
    ), config())
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    container["name"] = hook.name
    if hook.env_from:
        container["envFrom"] = hook.env_from
    return manifest


def verify_job(body: Mapping[str, Any], spec: models.RestoreSpec,
               check: models.HttpCheck) -> dict[str, Any]:
    meta = body["metadata"]
    return agent_job(AgentJob(
        name=child_name(meta["name"], "verify"),
        namespace=meta["namespace"],
        owner=body,
        labels={c.LABEL_RESTORE: meta["name"]},
        args=agent_args.http_check_args(check),
        job=spec.job or models.JobSpec(),
    ), config())


def run_job(manifest: Mapping[str, Any]) -> tuple[str, str]:
    """Create the Job if needed and report ('running'|'succeeded'|'failed', message)."""
    namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    job = kube.get_job(namespace, name)
    if job is None:
        kube.create_job(manifest)
        return "running", f"Job {name} started"
    outcome = job_outcome(job, kube.job_pods(namespace, name), now())
    return outcome.state, outcome.message


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
        if self.deployments and step not in ("resolve", "wait"):
            self.goto("unquiesce", f"{message}; scaling Deployments back up",
                      failedStep=step, failureReason=reason)
        else:
            self.end()

    def end(self) -> None:
        if self.st.get("failedStep"):
            message = str(self.st.get("message") or "restore failed")
            enter(self.body, self.patch, "Failed", str(self.st.get("failureReason")), message,
                  event="Warning", currentStep=None, steps=self.st.get("steps"))
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
        try:
            recorded = quiesce(self.namespace, self.name, self.deployments)
        except QuiesceBusy as exc:
            write(self.patch, {"message": str(exc)})
            return
        write(self.patch, {"quiesced": recorded})
        left = pods_left(self.namespace, self.deployments)
        if left:
            started = parse_time(self._step_start("quiesce")) or now()
            timeout = self.spec.quiesce.timeout_seconds if self.spec.quiesce else 300
            if (now() - started).total_seconds() > timeout:
                raise RestoreFailed("QuiesceTimeout",
                                    f"pods still running after {timeout}s: {', '.join(left)}")
            write(self.patch, {"message": f"waiting for pods to stop: {', '.join(left)}"})
            return
        self.finish_step("quiesce", "Succeeded")
        self.goto("restore", "restoring")

    def _step_start(self, name: str) -> str | None:
        for s in self.st.get("steps") or []:
            if s["name"] == name:
                return str(s.get("startTime"))
        return None

    def step_restore(self) -> None:
        resolved = self.st.get("resolved") or {}
        security_context = None
        if kube.get_job(self.namespace, child_name(self.name, "restore")) is None:
            # Decided once, when the Job is created: the restored files must belong to the
            # app (whose pods are gone by now: its Deployment's template tells who it is).
            claim = (resolved.get("uploads") or {}).get("claimName")
            explicit = self.spec.job.pod_security_context if self.spec.job else None
            chosen = job_identity(self.body, explicit, claim,
                                  claim_users(self.namespace, claim))
            security_context = chosen.security_context
            write(self.patch, {"jobIdentity": chosen.description})
        manifest = restore_job(self.body, self.spec, resolved, security_context)
        state, message = run_job(manifest)
        write(self.patch, {"jobName": manifest["metadata"]["name"]})
        if state == "running":
            return
        if state == "failed":
            raise RestoreFailed("RestoreJobFailed", message)
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
        hooks = self.spec.hooks.post_restore if self.spec.hooks else None
        for index, hook in enumerate(hooks or []):
            state, message = run_job(hook_job(self.body, index, hook, self.spec))
            if state == "running":
                return
            if state == "failed":
                raise RestoreFailed("HookFailed", f"hook {hook.name} failed: {message}")
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
        state, message = run_job(verify_job(self.body, self.spec, check))
        if state == "running":
            return
        if state == "failed":
            raise RestoreFailed("VerificationFailed", message)
        self.finish_step("verify", "Succeeded", message)
        self.end()


@kopf.timer(c.GROUP, c.VERSION, c.PLURAL_RESTORE, interval=POLL_SECONDS, when=not_terminal)
def reconcile_restore(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    if body.get("metadata", {}).get("deletionTimestamp"):
        return
    Machine(body, patch).tick()


@kopf.on.delete(c.GROUP, c.VERSION, c.PLURAL_RESTORE)
def delete_restore(body: kopf.Body, **_: Any) -> None:
    """A Restore deleted mid-way still gives the app its replicas back."""
    spec = body.get("spec") or {}
    names = (spec.get("quiesce") or {}).get("deployments") or []
    if names:
        unquiesce(body["metadata"]["namespace"], body["metadata"]["name"], list(names))
