"""BackupSchedule: create Backups on cron, prune them by retention, run restore tests."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import kopf

from timesheet_backup import constants as c
from timesheet_backup import kube
from timesheet_backup.api import models
from timesheet_backup.api.fields import SpecError, dump, parse
from timesheet_backup.api.resolve import ResolveError, resolve_backup
from timesheet_backup.decisions.schedules import (
    backup_body,
    retention_pass,
    time_of,
    verification_body,
    verification_marks,
    verification_runs,
)
from timesheet_backup.handlers.common import (
    conditions,
    config,
    database_target,
    now,
    post_event,
    running_on,
    write,
)
from timesheet_backup.schedule import cron, planner
from timesheet_backup.status import (
    TERMINAL_PHASES,
    condition,
    merge_conditions,
    parse_time,
    timestamp,
)

TICK_SECONDS = 10.0
KEEP_VERIFICATIONS = 3
CANNOT_CREATE = "cannot create a Backup"
Status = models.BackupScheduleStatus


def _active(backups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [b for b in backups if (b.get("status") or {}).get("phase") not in
            ("Succeeded", "Failed") and not b["metadata"].get("deletionTimestamp")]


def run_schedule(body: Mapping[str, Any], spec: models.BackupScheduleSpec,
                 backups: list[dict[str, Any]], fields: Status) -> str | None:
    """Create the due Backup, if any; returns a message when a due run was skipped."""
    meta = body["metadata"]
    st = body.get("status") or {}
    clock = now()
    plan = planner.plan(spec.schedule, spec.time_zone, clock,
                        parse_time(meta.get("creationTimestamp")) or clock,
                        parse_time(st.get("lastScheduleTime")), spec.starting_deadline_seconds,
                        spec.run_on_create, spec.suspend)
    fields.next_schedule_time = timestamp(plan.next_time) if plan.next_time else None
    if plan.record_time is not None:
        fields.last_schedule_time = timestamp(plan.record_time)
    if plan.skipped:
        return plan.skipped
    if plan.run_at is None:
        return None
    active = _active(backups)
    if active and spec.concurrency_policy == "Forbid":
        return f"skipped a run: Backup {active[0]['metadata']['name']} is still running " \
               "(concurrencyPolicy Forbid)"
    try:
        resolved = resolve_backup(dump(spec.template.spec) if spec.template.spec else {},
                                  config().defaults)
    except (ResolveError, SpecError) as exc:
        return f"{CANNOT_CREATE}: {exc}"
    target = database_target(dump(resolved.database)) \
        if "database" in resolved.components else None
    blocker = running_on(meta["namespace"], c.PLURAL_RESTORE, target)
    if blocker:
        return f"skipped a run: Restore {blocker} of the same database is running"
    if active and spec.concurrency_policy == "Replace":
        for b in active:
            kube.delete_custom(meta["namespace"], c.PLURAL_BACKUP, b["metadata"]["name"])
    name = planner.backup_name(meta["name"], plan.run_at)
    if kube.create_custom(meta["namespace"], c.PLURAL_BACKUP, backup_body(body, spec, name)):
        post_event(body, "Normal", reason="BackupCreated", message=f"created Backup {name}")
    fields.last_backup = name
    return None


def last_run_condition(backups: list[dict[str, Any]],
                       conditions: list[dict[str, Any]] | None, create_error: str | None,
                       clock: datetime, generation: int | None) -> dict[str, Any]:
    """The schedule's `Failed` condition: True while its last run failed -- the newest
    finished Backup failed, or no Backup could be created -- until a Backup that finished
    after the failure succeeds. (A failed Backup pruned by retention, `keepFailed: 0`, so
    does not clear it: only a later success does.)"""
    previous = next((x for x in conditions or [] if x.get("type") == "Failed"), None)
    if create_error:
        return condition("Failed", "True", "BackupNotCreated", create_error, clock, generation)
    finished = [b for b in backups
                if (b.get("status") or {}).get("phase") in TERMINAL_PHASES]
    if not finished:
        return {**previous, "observedGeneration": generation} if previous else condition(
            "Failed", "False", "NoRunYet", "no Backup has finished yet", clock, generation)
    newest = max(finished, key=lambda b: (time_of(b), b["metadata"]["name"]))
    name, st = newest["metadata"]["name"], newest["status"]
    if st["phase"] == "Failed":
        return condition("Failed", "True", "BackupFailed",
                         f"Backup {name} failed: {st.get('message') or 'no message'}",
                         clock, generation)
    failed_since = parse_time(previous.get("lastTransitionTime")) \
        if previous and previous.get("status") == "True" else None
    if previous and failed_since and time_of(newest) < failed_since:
        return {**previous, "observedGeneration": generation}
    return condition("Failed", "False", "BackupSucceeded", f"Backup {name} succeeded", clock,
                     generation)


def prune(body: Mapping[str, Any], spec: models.BackupScheduleSpec,
          backups: list[dict[str, Any]], restores: list[dict[str, Any]],
          fields: Status) -> list[str]:
    """Delete what retention prunes; say why in an Event and in `status.retention`."""
    if spec.retention is None:
        fields.retention = None
        return []
    meta = body["metadata"]
    next_time = parse_time(fields.next_schedule_time)
    decided = retention_pass(meta["name"], backups, restores, spec.retention, now(),
                             cron.zone(spec.time_zone), next_time)
    for name in decided.prune:
        kube.delete_custom(meta["namespace"], c.PLURAL_BACKUP, name)
    if decided.event:
        post_event(body, "Normal", reason="Pruned", message=decided.event)
    fields.retention = (None if decided.status is None
                        else parse(models.RetentionStatus, decided.status, "status.retention"))
    return decided.prune


def verify(body: Mapping[str, Any], spec: models.BackupScheduleSpec,
           backups: list[dict[str, Any]], restores: list[dict[str, Any]],
           fields: Status) -> None:
    """Start a restore test when due; record the outcome of the last one."""
    verification = spec.verification
    if verification is None:
        return
    meta = body["metadata"]
    st = body.get("status") or {}
    namespace = meta["namespace"]
    runs = verification_runs(restores, meta["name"])
    if runs:
        newest = runs[-1]
        rst = newest.get("status") or {}
        last = st.get("lastVerification") or {}
        if rst.get("phase") in TERMINAL_PHASES and \
                last.get("time") != rst.get("completionTime"):
            result = models.VerificationResult(
                # completionTime is written with a terminal phase (status.transition)
                time=rst.get("completionTime"),  # type: ignore[arg-type]
                result=rst["phase"],
                message=rst.get("message") or "",
                backup_name=(newest.get("spec") or {}).get("backupName"))
            fields.last_verification = result
            post_event(body, "Normal" if rst["phase"] == "Succeeded" else "Warning",
                       f"Verification{rst['phase']}",
                       f"restore test of {result.backup_name}: {result.message}")
        # The proof outlives the Restores (pruned below): it goes on the tested Backup.
        for backup_name, backup_status in verification_marks(runs, backups):
            kube.patch_custom_status(namespace, c.PLURAL_BACKUP, backup_name, backup_status)
        for old in runs[:-KEEP_VERIFICATIONS]:
            kube.delete_custom(namespace, c.PLURAL_RESTORE, old["metadata"]["name"])
    clock = now()
    plan = planner.plan(verification.schedule, spec.time_zone, clock,
                        parse_time(meta.get("creationTimestamp")) or clock,
                        parse_time(st.get("lastVerificationScheduleTime")))
    if plan.record_time is not None:
        fields.last_verification_schedule_time = timestamp(plan.record_time)
    if plan.run_at is None:
        return
    if any((r.get("status") or {}).get("phase") not in TERMINAL_PHASES for r in runs):
        return  # one restore test at a time
    good = [b for b in backups if (b.get("status") or {}).get("phase") == "Succeeded"
            and "database" in ((b.get("status") or {}).get("components") or "").split(",")]
    if not good:
        fields.last_verification = models.VerificationResult(
            time=timestamp(clock), result="Failed",
            message="no successful database backup to verify")
        return
    newest_good = max(good, key=time_of)
    name = planner.backup_name(f"{meta['name']}-verify", plan.run_at)
    kube.create_custom(namespace, c.PLURAL_RESTORE,
                       verification_body(body, verification, newest_good, name))


@kopf.timer(c.GROUP, c.VERSION, c.PLURAL_SCHEDULE, interval=TICK_SECONDS)
def reconcile_schedule(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    meta = body["metadata"]
    if meta.get("deletionTimestamp"):
        return
    generation = meta.get("generation")
    st = body.get("status") or {}
    fields = Status(observed_generation=generation)
    try:
        spec = parse(models.BackupScheduleSpec, body.get("spec"))
        cron.validate(spec.schedule, spec.time_zone)
        if spec.verification:
            cron.validate(spec.verification.schedule, spec.time_zone)
    except (SpecError, cron.CronError) as exc:
        ready = condition("Ready", "False", "InvalidSchedule", str(exc), now(), generation)
        if (st.get("message") != str(exc)):
            post_event(body, "Warning", reason="InvalidSchedule", message=str(exc))
        fields.message = str(exc)
        fields.conditions = conditions(merge_conditions(st.get("conditions"), [ready]))
        write(patch, fields)
        return
    backups = kube.list_custom(meta["namespace"], c.PLURAL_BACKUP,
                               f"{c.LABEL_SCHEDULE}={meta['name']}")
    skipped = run_schedule(body, spec, backups, fields)
    if skipped and skipped != st.get("message"):
        post_event(body, "Warning", reason="RunSkipped", message=skipped)
    # One LIST of the namespace's Restores per tick serves both: retention keeps what a
    # running Restore reads, and the schedule's own restore tests are among them.
    restores = (kube.list_custom(meta["namespace"], c.PLURAL_RESTORE)
                if spec.retention or spec.verification else [])
    prune(body, spec, backups, restores, fields)
    verify(body, spec, backups, restores, fields)

    succeeded = [b for b in backups if (b.get("status") or {}).get("phase") == "Succeeded"]
    if succeeded:
        fields.last_successful_time = timestamp(max(time_of(b) for b in succeeded))
    fields.active = [models.ActiveRef(name=b["metadata"]["name"]) for b in _active(backups)] \
        or None
    if spec.suspend:
        ready = condition("Ready", "True", "Suspended", "suspended: no new Backups", now(),
                          generation)
    else:
        ready = condition("Ready", "True", "Scheduled",
                          f"next run {fields.next_schedule_time}", now(), generation)
    create_error = skipped if skipped and skipped.startswith(CANNOT_CREATE) else None
    failed = last_run_condition(backups, st.get("conditions"), create_error, now(), generation)
    fields.conditions = conditions(merge_conditions(st.get("conditions"), [ready, failed]))
    fields.message = skipped
    # None removes these (the schedule has no next run, none active, nothing skipped).
    write(patch, fields, clear=("next_schedule_time", "active", "message", "retention"))
