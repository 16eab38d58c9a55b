"""When a schedule must act (pure): the run that is due now, if any, and the next one.

Like a Kubernetes CronJob with `startingDeadlineSeconds`, but after downtime at most ONE
missed run is caught up (the latest), never a burst; a run missed by more than the deadline
is skipped and recorded, so the next tick does not try it again."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from timesheet_backup.schedule import cron


@dataclass(frozen=True)
class Plan:
    run_at: datetime | None  # the scheduled time of the run to start now (names it)
    record_time: datetime | None  # new lastScheduleTime (a run started or skipped)
    skipped: str | None  # why a due run is not started
    next_time: datetime | None  # the next run after this one


def plan(
    expr: str,
    time_zone: str | None,
    now: datetime,
    created: datetime,
    last_schedule_time: datetime | None,
    starting_deadline_seconds: int | None = None,
    run_on_create: bool = False,
    suspend: bool = False,
) -> Plan:
    next_time = cron.next_after(expr, now, time_zone)
    if suspend:
        return Plan(None, None, None, next_time)
    if last_schedule_time is None and run_on_create:
        # Named after the schedule's creation, not `now`: a tick that created the Backup but
        # did not get to record lastScheduleTime (a crash) plans the same name again and
        # finds it (409) instead of creating a second one.
        return Plan(created, now, None, next_time)
    reference = last_schedule_time or created
    due = cron.next_after(expr, reference, time_zone)
    if due > now:
        return Plan(None, None, None, due)
    latest = cron.previous_at_or_before(expr, now, time_zone)
    late = (now - latest).total_seconds()
    if starting_deadline_seconds is not None and late > starting_deadline_seconds:
        return Plan(None, latest, f"missed the run of {latest:%Y-%m-%d %H:%M} UTC by {int(late)}s"
                    f" (startingDeadlineSeconds {starting_deadline_seconds})", next_time)
    return Plan(latest, latest, None, next_time)


def backup_name(schedule: str, run_at: datetime) -> str:
    """`<schedule>-<UTC timestamp>`: deterministic, so a retried tick or a restarted
    operator never creates the same run twice."""
    return f"{schedule}-{run_at:%Y%m%d%H%M%S}"
