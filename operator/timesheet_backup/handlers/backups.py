"""Backup: resolve defaults, run one agent Job, record what landed in the bucket; on deletion,
remove the objects when the deletion policy says so. Kopf glue: the choices are in
decisions/backups.py, the cluster and bucket calls in actions/backups.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from timesheet_backup import constants as c
from timesheet_backup import kube
from timesheet_backup.actions import backups as act
from timesheet_backup.actions.common import (
    config,
    lock_database,
    missing_secrets,
    not_terminal,
    now,
    post_event,
)
from timesheet_backup.api.fields import SpecError, dump
from timesheet_backup.api.resolve import ResolveError, resolve_backup
from timesheet_backup.decisions import backups as decide
from timesheet_backup.decisions.admission import deletion_secret_warning
from timesheet_backup.errors import ConfigError
from timesheet_backup.jobs import agent_args
from timesheet_backup.jobs.pod import deletion_secrets
from timesheet_backup.status import parse_time
from timesheet_backup.storage import layout

POLL_SECONDS = 5.0


def start(body: Mapping[str, Any], patch: kopf.Patch) -> None:
    meta = body["metadata"]
    try:
        spec = resolve_backup(body.get("spec"), config().defaults)
        # Before the Job: a prefix the schema lets through but the key layout refuses (a
        # `..` segment) must fail the Backup, not crash this handler after the Job started.
        manifest_key = decide.manifest_key(body, spec)
    except (ResolveError, SpecError, ConfigError) as exc:
        return act.move(body, patch, decide.failed("InvalidSpec", str(exc)))
    problems = missing_secrets(meta["namespace"], agent_args.backup_secrets(spec))
    if problems:
        return act.move(body, patch, decide.failed("SecretMissing", "; ".join(problems)))
    target = decide.database_target(dump(spec.database)) \
        if "database" in spec.components else None
    # A safety Backup runs inside its Restore's hold on the database (labels: safety-for).
    blocker = lock_database(meta["namespace"], target, c.PLURAL_BACKUP, meta["name"],
                            (c.PLURAL_RESTORE,), (meta.get("labels") or {}).get(c.LABEL_SAFETY_FOR))
    if blocker:
        return act.move(body, patch, decide.waiting_for(blocker))
    # The operator's own delete key: its absence does not stop the backup, only (later) the
    # deletion of its objects, so it is a warning in status and an Event, not a failure.
    delete_problems = [deletion_secret_warning(p) for p in
                       missing_secrets(meta["namespace"], deletion_secrets(spec.storage))]
    for problem in delete_problems:
        post_event(body, "Warning", "DeleteSecretMissing", problem)
    act.start_job(body, patch, spec, manifest_key, target, now(), delete_problems)


def follow(body: Mapping[str, Any], patch: kopf.Patch) -> None:
    outcome, job = act.observe_job(body, now())
    if outcome.state == "running":
        return
    act.discard_incomplete_uploads(body)
    if outcome.state == "failed" and not (outcome.reason == "JobMissing"
                                          and act.committed(body)):
        return act.move(body, patch, decide.failed(outcome.reason, outcome.message))
    act.record_manifest(body, patch, job, now())


@kopf.timer(c.GROUP, c.VERSION, c.PLURAL_BACKUP, interval=POLL_SECONDS, when=not_terminal)
def reconcile_backup(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    step = decide.tick(body)
    if step == "start":
        start(body, patch)
    elif step == "follow":
        follow(body, patch)


def _owns_objects(body: kopf.Body, **_: Any) -> bool:
    return decide.owns_objects(body)


# Only a Backup that owns objects to delete carries the finalizer (decide.owns_objects); kopf
# releases the finalizer of one that no longer matches, e.g. a Retain Backup from before.
@kopf.on.delete(c.GROUP, c.VERSION, c.PLURAL_BACKUP, when=_owns_objects)
def delete_backup(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    st = body.get("status") or {}
    namespace = body["metadata"]["namespace"]
    pods_left = bool(st.get("jobName")) and bool(kube.job_pods(namespace, st["jobName"]))
    action, spec = decide.cleanup(st, pods_left)
    if action == "stop-job":
        act.stop_job(namespace, st["jobName"])
    if action == "retain":
        post_event(body, "Normal", reason="Retained", message="deletionPolicy Retain: objects kept")
    if spec is None or action != "objects" or spec.storage is None:
        return
    locked_until = parse_time(st.get("lockedUntil"))
    step = decide.deletion(
        locked_until, now(), current_message=st.get("message"),
        where=f"s3://{spec.storage.bucket}/{layout.dir_of_manifest(st['manifestKey'])}",
        namespace_terminating=bool(locked_until) and kube.namespace_terminating(namespace))
    if step.action != "delete":
        return act.wait_for_lock(body, patch, step)
    act.delete_objects(body, patch, spec, step.all_versions)
