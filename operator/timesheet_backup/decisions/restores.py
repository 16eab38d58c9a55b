"""What a Restore does next (pure): handlers/restores.py gathers what it sees (the Restore,
the Backup and manifest, its Jobs and their pods, the Deployments) and carries out what these
functions return. No kopf, no kubernetes, no clock reads: `now` is an argument.

The steps, in order (status.currentStep):

    resolve -> wait -> quiesce -> restore -> hooks -> unquiesce -> verify -> Succeeded
                            \\_______ on failure ______/ -> unquiesce -> Failed
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from timesheet_backup.api import models
from timesheet_backup.api.fields import dump
from timesheet_backup.api.resolve import deep_merge
from timesheet_backup.jobs.outcome import job_outcome

STEPS = ("resolve", "wait", "quiesce", "restore", "hooks", "unquiesce", "verify")
# Steps that fail before any Deployment was scaled down: nothing to give back.
BEFORE_QUIESCE = ("resolve", "wait")
# The reason a failed Job gives its step (a vanished Job keeps JobMissing, as for a Backup).
JOB_FAILURE = {"restore": "RestoreJobFailed", "hooks": "HookFailed", "verify": "VerificationFailed"}
# Restore fields taken from the backup's database; the rest (format, tables...) are the dump's.
CONNECTION_FIELDS = ("host", "port", "name", "user", "passwordSecretRef", "sslMode")
TERMINAL_POD_PHASES = frozenset({"Succeeded", "Failed"})
FINISHED_JOB_CONDITIONS = frozenset({"Complete", "Failed", "SuccessCriteriaMet", "FailureTarget"})


class RestoreFailed(Exception):
    """A step failed; the message is for status and the Event."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class BackupNotReady(Exception):
    """The Backup to restore has not finished yet: wait for it."""


# --- resolve ----------------------------------------------------------------------------


def check_backup(name: str, backup: Mapping[str, Any] | None) -> None:
    """A `backupName` source must be a Succeeded Backup; one still running is waited for."""
    if backup is None:
        raise RestoreFailed("BackupNotFound", f"Backup {name} not found")
    phase = (backup.get("status") or {}).get("phase")
    if phase in (None, "Pending", "Running"):
        raise BackupNotReady(f"waiting for Backup {name} to finish")
    if phase != "Succeeded":
        raise RestoreFailed("BackupNotSucceeded",
                            f"Backup {name} is {phase}, only a Succeeded backup can be restored")


@dataclass(frozen=True)
class Source:
    """What was read about the backup to restore: where it is and what its manifest says."""

    storage: Mapping[str, Any]
    manifest_key: str
    backup_id: str
    components: Sequence[str]  # the manifest's
    encrypted: Sequence[str]  # components whose artifact is age-encrypted
    database: Mapping[str, Any]  # the backup's resolved database (or the operator defaults)
    uploads: Mapping[str, Any]  # the backup's resolved uploads (or the operator defaults)


def resolve(spec: models.RestoreSpec, source: Source) -> dict[str, Any]:
    """status.resolved: components and targets (the user's target fields win over the
    backup's), or RestoreFailed naming what is wrong."""
    components = list(spec.components or source.components)
    absent = [x for x in components if x not in source.components]
    if absent:
        raise RestoreFailed("ComponentMissing",
                            f"the backup has no {', '.join(absent)} (it has "
                            f"{', '.join(source.components)})")
    connection = {k: v for k, v in source.database.items() if k in CONNECTION_FIELDS}
    target_db = deep_merge(connection, dump(spec.database) if spec.database else {})
    uploads = {k: v for k, v in source.uploads.items() if k in ("claimName", "subPath")}
    target_uploads = deep_merge(uploads, dump(spec.uploads) if spec.uploads else {})
    missing = []
    if "database" in components:
        missing += [f"database.{k}" for k in ("host", "name", "user", "passwordSecretRef")
                    if not target_db.get(k)]
    if "uploads" in components and not target_uploads.get("claimName"):
        missing.append("uploads.claimName")
    if missing:
        raise RestoreFailed("InvalidSpec", "incomplete restore target, set: " + ", ".join(missing))
    encrypted = any(x in source.encrypted for x in components)
    if encrypted and spec.decryption is None:
        raise RestoreFailed("DecryptionKeyMissing",
                            "the backup is encrypted: set spec.decryption.secretRef (for a "
                            "schedule's restore test: verification.decryption.secretRef)")
    return {
        "storage": dict(source.storage),
        "manifestKey": source.manifest_key,
        "backupId": source.backup_id,
        "components": components,
        "database": target_db if "database" in components else None,
        "uploads": target_uploads if "uploads" in components else None,
        "encrypted": encrypted,
    }


# --- steps ------------------------------------------------------------------------------


def unknown_step(step: str) -> RestoreFailed | None:
    """A currentStep this operator does not know (written by another version, or by hand):
    end the Restore instead of failing the same way on every tick."""
    if step in STEPS:
        return None
    return RestoreFailed("UnknownStep",
                         f"status.currentStep {step!r} is not a step of this operator "
                         f"({', '.join(STEPS)}): the Restore cannot resume; create a new one")


def unquiesce_after_failure(failed_step: str, deployments: Sequence[str]) -> bool:
    """Whether a failure must go through `unquiesce` (a step that may have scaled Deployments
    down; an unknown one too: unquiesce only touches what this Restore's annotation claims)."""
    return bool(deployments) and failed_step not in BEFORE_QUIESCE


# What status.message adds to a failure while the Restore gives the Deployments back.
UNQUIESCING_AFTER_FAILURE = "; scaling Deployments back up"


def unquiescing_message(failure: str) -> str:
    """status.message while a failed Restore scales its Deployments back up."""
    return failure + UNQUIESCING_AFTER_FAILURE


def failure_message(status: Mapping[str, Any]) -> str:
    """The message a failed Restore ends with: the failure itself, as the failed step
    recorded it in status.steps. Not status.message: a failure that went through `unquiesce`
    left it saying the Deployments are being scaled back up, which is done by the time the
    Restore ends (and status is all a later tick, or a restarted operator, knows). Without a
    recorded step message: status.message without that suffix, else a generic one."""
    failed = status.get("failedStep")
    for step in status.get("steps") or []:
        if step.get("name") == failed and step.get("phase") == "Failed" and step.get("message"):
            return str(step["message"])
    message = str(status.get("message") or "").removesuffix(UNQUIESCING_AFTER_FAILURE)
    return message or "restore failed"


@dataclass(frozen=True)
class Progress:
    """The outcome of one tick of a step that waits: keep waiting (with what to say), move on,
    or fail."""

    action: Literal["wait", "done", "fail"]
    reason: str = ""
    message: str = ""


def quiesce_progress(started: datetime, now: datetime, timeout: int, busy: str | None,
                     pods_left: Sequence[str]) -> Progress:
    """`busy`: why a Deployment cannot be taken yet (another Restore still holds it scaled
    down); `pods_left`: pods of the quiesced Deployments still there. Both are waited for up
    to quiesce.timeoutSeconds from the step's start, then the Restore fails (and gives back
    what it scaled down)."""
    late = (now - started).total_seconds() > timeout
    if busy:
        if late:
            return Progress("fail", "QuiesceBusy",
                            f"{busy}; gave up after {timeout}s (quiesce.timeoutSeconds)")
        return Progress("wait", message=busy)
    if pods_left:
        if late:
            return Progress("fail", "QuiesceTimeout",
                            f"pods still running after {timeout}s: {', '.join(pods_left)}")
        return Progress("wait", message=f"waiting for pods to stop: {', '.join(pods_left)}")
    return Progress("done")


@dataclass(frozen=True)
class JobStep:
    """What to do about the Job of a step this tick."""

    action: Literal["create", "wait", "done", "fail"]
    reason: str = ""
    message: str = ""


def job_step(step: str, name: str, recorded: str | None, job: Mapping[str, Any] | None,
             pods: Sequence[Mapping[str, Any]], now: datetime) -> JobStep:
    """`recorded` is status.jobName, the Job this Restore created last. A Job not created yet
    is created; one that was created and is gone fails the step (JobMissing, like a Backup's):
    recreating it would run the restore or a hook again without anyone asking."""
    if job is None and recorded != name:
        return JobStep("create", "JobCreated", f"Job {name} started")
    outcome = job_outcome(job, pods, now)
    if outcome.state == "running":
        return JobStep("wait")
    if outcome.state == "succeeded":
        return JobStep("done", outcome.reason, outcome.message)
    if outcome.reason == "JobMissing":
        return JobStep("fail", "JobMissing", f"Job {name}: {outcome.message}")
    return JobStep("fail", JOB_FAILURE[step], outcome.message)


def current_hook(job_names: Sequence[str], recorded: str | None) -> int:
    """Which post-restore hook is at work: the one whose Job is status.jobName, else the
    first (the restore Job was the last one)."""
    return job_names.index(recorded) if recorded in job_names else 0


# --- deletion ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Deletion:
    """A Restore being deleted: stop its Jobs, and give the Deployments back only once no pod
    of them runs (a restore Job may still be running pg_restore or swapping the uploads)."""

    delete_jobs: list[str]
    waiting_for: list[str]  # pods still running or about to

    @property
    def unquiesce(self) -> bool:
        return not self.waiting_for


def deletion(jobs: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]]) -> Deletion:
    """`jobs` and `pods`: those labelled with the Restore's name. Every Job is deleted (its
    pods get SIGTERM: the agent rolls back); the Deployments wait for every pod that has not
    ended, and for one more look when a Job had not finished (it may have been starting a
    pod as it was deleted)."""
    delete = sorted(str(j["metadata"]["name"]) for j in jobs
                    if not (j.get("metadata") or {}).get("deletionTimestamp"))
    unfinished = sorted(f"Job {j['metadata']['name']}" for j in jobs if not _finished(j))
    running = sorted(str(p["metadata"]["name"]) for p in pods
                     if (p.get("status") or {}).get("phase") not in TERMINAL_POD_PHASES)
    return Deletion(delete, running + unfinished)


def _finished(job: Mapping[str, Any]) -> bool:
    """A Job that will start no pod any more."""
    return any(cond.get("type") in FINISHED_JOB_CONDITIONS and cond.get("status") == "True"
               for cond in (job.get("status") or {}).get("conditions") or [])
