"""What a BackupSchedule does to the cluster: create and delete its Backups, record restore
tests on them, start and prune restore-test Restores; every choice comes from
decisions/schedules.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from timesheet_backup import constants as c
from timesheet_backup import kube
from timesheet_backup.actions import bucket
from timesheet_backup.actions.common import post_event
from timesheet_backup.api import models
from timesheet_backup.api.fields import parse
from timesheet_backup.decisions import schedules as decide
from timesheet_backup.errors import AgentError, ConfigError, MissingBucket


def create_backup(body: Mapping[str, Any], spec: models.BackupScheduleSpec,
                  run: decide.Run) -> None:
    """Create the run's Backup, after deleting those it replaces (concurrencyPolicy
    Replace). A Backup of that name already there (409) is the run already made."""
    namespace = body["metadata"]["namespace"]
    assert run.name is not None
    for name in run.replace:
        kube.delete_custom(namespace, c.PLURAL_BACKUP, name)
    if kube.create_custom(namespace, c.PLURAL_BACKUP, decide.backup_body(body, spec, run.name)):
        post_event(body, "Normal", reason="BackupCreated", message=f"created Backup {run.name}")


def prune(body: Mapping[str, Any], decided: decide.RetentionPass,
          backups: Sequence[Mapping[str, Any]]) -> bool:
    """Delete what retention prunes in few requests and say so in one Event: first the
    objects, batched per bucket (so nothing is left orphaned in the bucket), then the
    Backups whose objects went -- each marked as owning nothing and released from the
    finalizer in one PATCH, so no finalizer round (handler run, status writes, Event) per
    Backup; PRUNE_WORKERS at a time. A Backup whose objects could not be deleted stays,
    named in the Event and the status, and the next pass tries again. True when every
    pruned Backup went."""
    namespace = body["metadata"]["namespace"]
    targets = decide.prune_targets(backups, decided.prune)
    failed: dict[str, str] = {}
    changed: list[str] = []
    for group in decide.bucket_groups(targets):
        try:
            store = bucket.open_store(group[0].storage, namespace,  # type: ignore[arg-type]
                                      deleting=True)
            by_key = {t.manifest_key: t.name for t in group}
            refused = bucket.delete_many_backups(
                store, [t.manifest_key for t in group if t.manifest_key],
                all_versions=[t.manifest_key for t in group if t.all_versions and t.manifest_key])
        except MissingBucket:
            continue  # nothing to delete: the bucket is gone
        except (LookupError, AgentError, ConfigError) as exc:
            failed.update((t.name, str(exc)) for t in group)
            continue
        failed.update((by_key[key], why) for key, why in refused.items())

    def release_and_delete(t: decide.PruneTarget) -> str | None:
        """The Backup's name when it changed (or went) since the LIST and stays."""
        if t.finalizer:
            # The annotation keeps kopf from adding the finalizer back before the DELETE
            # (decisions/backups.py owns_objects); resourceVersion: only as this pass saw it.
            metadata = {"annotations": {c.ANNOTATION_OBJECTS_DELETED: "true"},
                        "finalizers": [f for f in _finalizers(backups, t.name)
                                       if f != c.FINALIZER],
                        "resourceVersion": t.resource_version}
            if not kube.patch_custom_metadata(namespace, c.PLURAL_BACKUP, t.name, metadata):
                return t.name  # gone or changed since the LIST: the next pass looks
        kube.delete_custom(namespace, c.PLURAL_BACKUP, t.name)
        return None

    with ThreadPoolExecutor(decide.PRUNE_WORKERS, thread_name_prefix="prune") as pool:
        outcomes = pool.map(release_and_delete, [t for t in targets if t.name not in failed])
        changed += [name for name in outcomes if name is not None]
    report = decide.prune_report(decided, failed, changed)
    if report:
        post_event(body, report[0], reason="Pruned", message=report[1])
    return not failed and not changed


def _finalizers(backups: Sequence[Mapping[str, Any]], name: str) -> list[str]:
    return next(list(b["metadata"].get("finalizers") or []) for b in backups
                if b["metadata"]["name"] == name)


def retention_status(decided: decide.RetentionPass) -> models.RetentionStatus | None:
    return (None if decided.status is None
            else parse(models.RetentionStatus, decided.status, "status.retention"))


def record_verifications(body: Mapping[str, Any], runs: Sequence[Mapping[str, Any]],
                         backups: Sequence[Mapping[str, Any]],
                         finished: decide.Finished | None) -> None:
    """Say a finished restore test in an Event, put the proof on the tested Backups (it
    outlives the Restores, pruned here to the last few)."""
    namespace = body["metadata"]["namespace"]
    if finished:
        post_event(body, finished.event_type, finished.reason, finished.message)
    for backup_name, backup_status in decide.verification_marks(runs, backups):
        kube.patch_custom_status(namespace, c.PLURAL_BACKUP, backup_name, backup_status)
    for name in decide.old_verifications(runs):
        kube.delete_custom(namespace, c.PLURAL_RESTORE, name)


def start_verification(body: Mapping[str, Any], restore: dict[str, Any]) -> None:
    kube.create_custom(body["metadata"]["namespace"], c.PLURAL_RESTORE, restore)
