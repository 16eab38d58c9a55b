"""The Restore's steps: each observes (actions/restores.py reads the cluster and the bucket),
asks decisions/restores.py what to do, and acts (actions/restores.py again: cluster changes,
and status through its Run). handlers/restores.py runs the current one on each tick."""

from __future__ import annotations

from collections.abc import Callable

from timesheet_backup import constants as c
from timesheet_backup.actions import restores as actions
from timesheet_backup.actions.common import (
    config,
    database_target,
    enter,
    insecure_settings,
    lock_database,
    now,
    post_event,
    write,
)
from timesheet_backup.actions.restores import Run, Status
from timesheet_backup.api import models
from timesheet_backup.api.fields import SpecError
from timesheet_backup.decisions import restores as decide
from timesheet_backup.decisions.restores import BackupNotReady, QuiesceBusy, RestoreFailed
from timesheet_backup.jobs import agent_args, manifests
from timesheet_backup.jobs.pod import child_name
from timesheet_backup.status import timestamp

# Each step either returns (still working: next tick), or moves with run.advance()/end().


def resolve(run: Run) -> None:
    if not run.st.get("startTime"):
        write(run.patch, Status(start_time=timestamp(now())))
    try:
        resolved = actions.resolve(run.namespace, run.spec)
    except BackupNotReady as exc:
        enter(run.body, run.patch, "Waiting", "BackupNotReady", str(exc),
              Status(current_step="resolve"))
        return
    except SpecError as exc:
        raise RestoreFailed("InvalidSpec", str(exc)) from exc
    decide.check_secrets(actions.secret_problems(run.namespace, run.spec, resolved))
    run.st["resolved"] = resolved
    run.advance("resolve", phase="Waiting", fields=Status(
        resolved=resolved, database_target=database_target(resolved.get("database")),
        restored_from=decide.restored_from(run.spec, resolved)))


def wait(run: Run) -> None:
    target = database_target((run.st.get("resolved") or {}).get("database"))
    # Other Restores of the database too: two would undo each other's work.
    blocker = lock_database(run.namespace, target, c.PLURAL_RESTORE, run.name,
                            (c.PLURAL_BACKUP, c.PLURAL_RESTORE))
    if blocker:
        reason, message = decide.waiting_for(blocker)
        enter(run.body, run.patch, "Waiting", reason, message, Status(current_step="wait"))
        return
    run.advance("wait")


def quiesce(run: Run) -> None:
    busy, left = None, []
    try:
        write(run.patch, Status(quiesced=actions.quiesce(run.namespace, run.name,
                                                         run.deployments)))
        left = actions.pods_left(run.namespace, run.deployments)
    except QuiesceBusy as exc:
        busy = str(exc)
    progress = decide.quiesce_progress(
        decide.step_started(run.st.get("steps"), "quiesce") or now(), now(),
        (run.spec.quiesce or models.QuiesceSpec()).timeout_seconds, busy, left)
    if progress.action == "fail":
        raise RestoreFailed(progress.reason, progress.message)
    if progress.action == "wait":
        write(run.patch, Status(message=progress.message))
        return
    run.advance("quiesce")


def safety(run: Run) -> None:
    """Back up what the restore overwrites, and wait for it: the restore starts only from a
    Succeeded safety Backup (the app is quiesced already, so nothing writes in between)."""
    resolved = run.st.get("resolved") or {}
    components = decide.safety_components(run.spec, resolved)
    name = decide.safety_backup_name(run.name, run.uid)
    recorded = (run.st.get("safetyBackup") or {}).get("backupName")
    backup = actions.get_backup(run.namespace, name)
    step = decide.safety_step(name, recorded, backup)
    if step.action == "fail":
        write(run.patch, Status(safety_backup=models.SafetyBackupStatus(
            backup_name=name, phase="Failed", components=components)))
        raise RestoreFailed(decide.SAFETY_FAILED, step.message)
    if step.action == "create":
        actions.create_safety_backup(run.namespace, decide.safety_backup_body(
            run.namespace, run.name, run.uid, run.spec, resolved, components))
        post_event(run.body, "Normal", "SafetyBackupCreated",
                   f"Backup {name} of the current {' and '.join(components)} created")
    if step.action in ("create", "wait"):
        running = ((backup or {}).get("status") or {}).get("phase") == "Running"
        write(run.patch, Status(message=step.message, safety_backup=models.SafetyBackupStatus(
            backup_name=name, phase="Running" if running else "Pending",
            components=components)))
        return
    write(run.patch, Status(safety_backup=models.SafetyBackupStatus(
        backup_name=name, phase="Succeeded", manifest_key=step.manifest_key,
        components=components)))
    run.st["safetyBackup"] = {"backupName": name}
    actions.prune_safety_backups(run.namespace, run.spec)
    run.advance("safety", step.message)


def restore(run: Run) -> None:
    resolved = run.st.get("resolved") or {}
    decision = run.job("restore", child_name(run.name, "restore"))
    if decision.action == "create":
        chosen = actions.restore_identity(run.body, run.spec, resolved)
        warnings = insecure_settings(run.body, agent_args.restore_storage(resolved))
        write(run.patch, Status(job_identity=chosen.description, warnings=warnings))
        run.start_job(manifests.restore_job(run.body, run.spec, resolved, config(),
                                            chosen.security_context))
    elif decision.action == "done":
        run.advance("restore", decision.message)  # the row-count comparison, if any


def hooks(run: Run) -> None:
    specs = (run.spec.hooks.post_restore if run.spec.hooks else None) or []
    names = [manifests.hook_job_name(run.name, index) for index in range(len(specs))]
    # From the hook at work on: finished ones are not looked at again (their Jobs may
    # be gone, removed by ttlSecondsAfterFinished).
    for index in range(decide.current_hook(names, run.st.get("jobName")), len(specs)):
        try:
            decision = run.job("hooks", names[index])
        except RestoreFailed as exc:
            raise RestoreFailed(exc.reason, f"hook {specs[index].name} failed: {exc}") from exc
        if decision.action == "create":
            run.start_job(manifests.hook_job(run.body, index, specs[index], run.spec, config()))
        if decision.action != "done":
            return
    run.advance("hooks")


def unquiesce(run: Run) -> None:
    actions.unquiesce(run.namespace, run.name, run.deployments)
    run.advance("unquiesce")


def verify(run: Run) -> None:
    check = run.spec.verify.http_get if run.spec.verify else None
    if check is None:
        run.end()
        return
    decision = run.job("verify", child_name(run.name, "verify"))
    if decision.action == "create":
        run.start_job(manifests.verify_job(run.body, run.spec, check, config()))
    elif decision.action == "done":
        run.advance("verify", decision.message)


STEPS: dict[str, Callable[[Run], None]] = {
    "resolve": resolve, "wait": wait, "quiesce": quiesce, "safety": safety, "restore": restore,
    "hooks": hooks,
    "unquiesce": unquiesce, "verify": verify,
}
