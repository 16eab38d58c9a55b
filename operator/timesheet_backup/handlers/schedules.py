"""BackupSchedule: create Backups on cron, prune them by retention, run restore tests. Kopf
glue: the choices are in decisions/schedules.py, the cluster calls in actions/schedules.py."""

from __future__ import annotations

import time
from typing import Any

import kopf

from timesheet_backup import constants as c
from timesheet_backup import kube
from timesheet_backup.actions import schedules as act
from timesheet_backup.actions.common import config, now, post_event, running_on, write
from timesheet_backup.api import models
from timesheet_backup.api.fields import SpecError, parse
from timesheet_backup.decisions import schedules as decide
from timesheet_backup.decisions.schedules import backup_body, last_run_condition
from timesheet_backup.schedule import cron
from timesheet_backup.status import parse_time

TICK_SECONDS = 10.0
Status = models.BackupScheduleStatus
__all__ = ["backup_body", "last_run_condition", "reconcile_schedule"]


@kopf.timer(c.GROUP, c.VERSION, c.PLURAL_SCHEDULE, interval=TICK_SECONDS)
def reconcile_schedule(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    meta, st = body["metadata"], body.get("status") or {}
    if meta.get("deletionTimestamp"):
        return
    clock, namespace = now(), meta["namespace"]
    fields = Status(observed_generation=meta.get("generation"))
    try:
        spec = parse(models.BackupScheduleSpec, body.get("spec"))
        cron.validate(spec.schedule, spec.time_zone)
        if spec.verification:
            cron.validate(spec.verification.schedule, spec.time_zone)
    except (SpecError, cron.CronError) as exc:
        if decide.invalid(fields, st, str(exc), clock):
            post_event(body, "Warning", reason="InvalidSchedule", message=str(exc))
        return write(patch, fields)
    backups = kube.list_custom(namespace, c.PLURAL_BACKUP, f"{c.LABEL_SCHEDULE}={meta['name']}")

    run = decide.due_run(body, spec, backups, config().defaults, clock)
    fields.next_schedule_time = run.next_schedule_time
    if run.last_schedule_time is not None:
        fields.last_schedule_time = run.last_schedule_time
    skipped = run.skipped
    if run.name:
        blocker = running_on(namespace, c.PLURAL_RESTORE, run.database_target)
        if blocker:
            skipped = decide.blocked(blocker)
        else:
            act.create_backup(body, spec, run)
            fields.last_backup = run.name
    if skipped and skipped != st.get("message"):
        post_event(body, "Warning", reason="RunSkipped", message=skipped)

    # One LIST of the namespace's Restores per tick serves both: retention keeps what a
    # running Restore reads, and the schedule's own restore tests are among them.
    restores = (kube.list_custom(namespace, c.PLURAL_RESTORE)
                if spec.retention or spec.verification else [])
    started = time.monotonic()
    while True:
        decided = decide.retention_pass(meta["name"], backups, restores, spec.retention,
                                        clock, cron.zone(spec.time_zone),
                                        parse_time(fields.next_schedule_time))
        clean = act.prune(body, decided, backups)
        if not decide.another_pass(decided, clean, time.monotonic() - started):
            break
        gone = set(decided.prune)  # every one of them went (clean)
        backups = [b for b in backups if b["metadata"]["name"] not in gone]
    fields.retention = act.retention_status(decided)

    if spec.verification:
        runs = decide.verification_runs(restores, meta["name"])
        finished = decide.finished_verification(runs, st.get("lastVerification"))
        if finished:
            fields.last_verification = finished.result
        act.record_verifications(body, runs, backups, finished)
        test = decide.next_verification(body, spec, runs, backups, clock)
        if test.record_time is not None:
            fields.last_verification_schedule_time = test.record_time
        if test.failed:
            fields.last_verification = test.failed
        if test.create:
            act.start_verification(body, test.create)

    decide.summary(fields, spec, backups, st, skipped, clock)
    # None removes these (the schedule has no next run, none active, nothing skipped).
    write(patch, fields, clear=("next_schedule_time", "active", "message", "retention"))
