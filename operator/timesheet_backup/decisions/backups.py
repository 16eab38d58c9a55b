"""What a Backup does (pure), from what handlers/backups.py observed: which step a tick
takes, the phase each outcome moves to, and what deleting it does with its objects.

Object Lock (`storage.objectLock`): until `status.lockedUntil` the store refuses to delete
the objects (or, in a versioned bucket, only hides them behind a delete marker while the
locked versions stay). So the operator never tries before the date: the Backup keeps its
finalizer and waits, as a PersistentVolumeClaim in use waits behind `pvc-protection`, then
deletes every version of its objects. Refusing the DELETE in the admission webhook was
rejected: the webhook is `failurePolicy: Ignore` (a refusal would depend on the operator
running), and a refused delete breaks `helm uninstall`, Argo CD's prune and namespace
deletion with errors, where a Terminating Backup says plainly what it waits for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from timesheet_backup import constants as c
from timesheet_backup.api import models
from timesheet_backup.api.fields import parse
from timesheet_backup.status import parse_time, timestamp
from timesheet_backup.storage import layout

# After the Job completed, how long a manifest that cannot be read is retried before the
# backup is declared Failed (covers a store that is briefly unreachable from the operator).
MANIFEST_GRACE_SECONDS = 120


@dataclass(frozen=True)
class Transition:
    """Move to `phase` (status.transition: `reason`, `message`); `event`: the type of the
    Event that says so (None: no Event)."""

    phase: str
    reason: str
    message: str
    event: Literal["Normal", "Warning"] | None = None


def tick(body: Mapping[str, Any]) -> Literal["start", "follow"] | None:
    """What the timer does on this tick: start the Job (new or waiting for the database),
    follow it (Running), or nothing (being deleted: the delete handler has it)."""
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return None
    phase = (body.get("status") or {}).get("phase")
    if phase in (None, "Pending"):
        return "start"
    if phase == "Running":
        return "follow"
    return None


def database_target(database: Mapping[str, Any] | None) -> str | None:
    """The lock key of a database: host:port/name (one Job at a time per target)."""
    if not database or not database.get("host") or not database.get("name"):
        return None
    return f"{database['host']}:{database.get('port') or 5432}/{database['name']}"


def manifest_key(body: Mapping[str, Any], spec: models.BackupSpec) -> str:
    """Where the Backup's manifest goes (raises ConfigError for a prefix the key layout
    refuses, e.g. a `..` segment)."""
    meta = body["metadata"]
    prefix = spec.storage.prefix if spec.storage else None
    return layout.manifest_key(prefix or "", meta["namespace"], meta["name"])


def failed(reason: str, message: str) -> Transition:
    return Transition("Failed", reason, message, "Warning")


def waiting_for(blocker: str) -> Transition:
    """Another Job holds the database (`blocker`, e.g. "Restore r1"): wait, no Event."""
    return Transition("Pending", "WaitingForRestore",
                      f"waiting for {blocker} of the same database to finish")


def started(job_name: str) -> Transition:
    return Transition("Running", "JobStarted", f"backup Job {job_name} started", "Normal")


def manifest_unreadable(error: str, completed: datetime | None,
                        now: datetime) -> Transition | str:
    """The Job succeeded but its manifest cannot be read: within the grace period after the
    Job completed, the message to write while retrying (a str); after it, Failed."""
    if completed and (now - completed).total_seconds() < MANIFEST_GRACE_SECONDS:
        return f"the Job finished; reading the manifest: {error}"
    return failed("ManifestUnreadable",
                  f"the agent finished but its manifest cannot be read: {error}")


def succeeded(components: list[str], size: str, where: str) -> Transition:
    return Transition("Succeeded", "Completed",
                      f"backed up {', '.join(components)} ({size}) to {where}", "Normal")


def cleanup(status: Mapping[str, Any], job_pods_left: bool
            ) -> tuple[Literal["stop-job", "nothing", "retain", "objects"],
                       models.BackupSpec | None]:
    """The first look of a Backup's deletion: stop its Job and wait for the pods
    (`stop-job`: an agent still uploading could write a manifest after the objects are
    deleted), nothing to do (never started: nothing can be in the bucket), keep the objects
    (deletionPolicy Retain), or go on to `deletion` for the objects; with the spec the
    Backup ran with (status.resolved)."""
    if status.get("jobName") and job_pods_left:
        return "stop-job", None
    if not status.get("resolved") or not status.get("manifestKey"):
        return "nothing", None
    spec = parse(models.BackupSpec, status["resolved"], "status.resolved")
    if spec.deletion_policy == "Retain" or spec.storage is None:
        return "retain", spec
    return "objects", spec


def owns_objects(body: Mapping[str, Any]) -> bool:
    """Whether deleting this Backup has work to do, so it must carry the finalizer: it
    started (a manifest key and resolved settings: something may be in the bucket) with
    deletionPolicy Delete, and no schedule deleted its objects already (the annotation
    ANNOTATION_OBJECTS_DELETED). A Backup that never started, or with deletionPolicy Retain,
    carries none: each finalizer costs a PATCH to add and one to release, which for
    thousands of pruned Backups was most of retention's time (docs/benchmarks.md). Its Job,
    if one still runs, goes with it by garbage collection (the Job's owner reference); for
    Retain an agent finishing late only writes what is kept anyway."""
    meta = body.get("metadata") or {}
    if c.ANNOTATION_OBJECTS_DELETED in (meta.get("annotations") or {}):
        return False
    status = body.get("status") or {}
    resolved = status.get("resolved") or {}
    if not status.get("manifestKey") or not resolved:
        return False
    return resolved.get("deletionPolicy") != "Retain" and bool(resolved.get("storage"))


def completion_time(job: Mapping[str, Any] | None) -> datetime | None:
    return parse_time(((job or {}).get("status") or {}).get("completionTime"))

# A waiting deletion looks again at the date, or after this long at the latest (a lock
# cannot be shortened, but a person may remove the finalizer or the Backup's status changes).
MAX_WAIT_SECONDS = 3600.0
# Stores compare with their own clock: start a little after the date.
CLOCK_SKEW_SECONDS = 5.0


@dataclass(frozen=True)
class Deletion:
    """`action`: "delete" the objects now (`all_versions`: every version and delete marker,
    for an Object Lock bucket, which is always versioned on AWS), "wait" (`delay` seconds,
    the finalizer stays) or "release" (let the Backup go, the objects stay). `message` for
    status and an Event; `event`: post one (not on every look while waiting)."""

    action: Literal["delete", "wait", "release"]
    message: str = ""
    all_versions: bool = False
    delay: float = 0.0
    event: bool = False


def deletion(locked_until: datetime | None, now: datetime, *, where: str,
             namespace_terminating: bool, current_message: str | None) -> Deletion:
    """What to do with the objects at `where` (s3://bucket/dir/) of a Backup being deleted
    with deletionPolicy Delete."""
    if locked_until is None:
        return Deletion("delete")
    if locked_until <= now:
        return Deletion("delete", all_versions=True)
    until = timestamp(locked_until)
    if namespace_terminating:
        # Waiting would hold the whole namespace for days; the bucket keeps the objects.
        return Deletion(
            "release", event=True,
            message=f"the namespace is being deleted: the objects under {where} are locked "
                    f"until {until} and stay in the bucket; delete them after that date "
                    "(a lifecycle rule can)")
    message = (f"objects locked until {until} (Object Lock); the Backup and its objects are "
               "deleted after that")
    remaining = (locked_until - now).total_seconds() + CLOCK_SKEW_SECONDS
    return Deletion("wait", message=message, delay=min(remaining, MAX_WAIT_SECONDS),
                    event=message != current_message)
