"""What deleting a Backup does with its objects (pure), from what handlers/backups.py saw.

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

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from timesheet_backup.status import timestamp

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
