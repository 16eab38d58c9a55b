"""Content alarms after a Backup succeeded (issue 14 item 5): compare it with the previous
good Backup of its schedule (decisions/content.py decides) and raise the Suspicious
condition with a Warning Event. Called by actions/backups.py once the Succeeded status is
staged."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes.client import ApiException

from timesheet_backup import constants as c
from timesheet_backup import kube
from timesheet_backup.actions.common import conditions, now, post_event, write
from timesheet_backup.api import models
from timesheet_backup.api.fields import SpecError, parse
from timesheet_backup.decisions import content
from timesheet_backup.status import condition, merge_conditions

log = logging.getLogger(__name__)


def check(body: Mapping[str, Any], patch: kopf.Patch) -> None:
    """Call after the Succeeded status is staged in `patch` (its sizeBytes, tableCount,
    rowCounts, conditions). A Backup without a schedule, or a schedule with alerts off,
    is not checked. A failure to look is logged, never fails the Backup: the alarm is
    advice about a backup that did succeed."""
    meta = body["metadata"]
    schedule_name = (meta.get("labels") or {}).get(c.LABEL_SCHEDULE)
    if not schedule_name:
        return
    namespace = meta["namespace"]
    try:
        schedule = kube.get_custom(namespace, c.PLURAL_SCHEDULE, schedule_name)
        if schedule is None:
            return
        alerts = parse(models.ContentAlertsSpec,
                       (schedule.get("spec") or {}).get("alerts") or {}, "spec.alerts")
        if not alerts.enabled:
            return
        backups = kube.list_custom(namespace, c.PLURAL_BACKUP,
                                   f"{c.LABEL_SCHEDULE}={schedule_name}")
    except (ApiException, SpecError) as exc:
        log.warning("content alarms of Backup %s/%s not checked: %s",
                    namespace, meta["name"], exc)
        return
    staged = dict(patch.get("status") or {})
    this = {"metadata": meta, "status": {**(body.get("status") or {}), **staged}}
    alarm = content.content_alarm(this, backups, alerts.shrink_percent)
    if alarm is None:
        return
    merged = merge_conditions(staged.get("conditions") or (body.get("status") or {}).get(
        "conditions"), [condition(content.SUSPICIOUS, alarm.status, alarm.reason,
                                  alarm.message, now(), meta.get("generation"))])
    write(patch, models.BackupStatus(conditions=conditions(merged)))
    if alarm.status == "True":
        post_event(body, "Warning", content.SUSPICIOUS, alarm.message)
