"""Restore: a small state machine driven by a timer, its position kept in status so an
operator restart resumes where it stopped. Kopf glue: the steps are in
actions/restore_steps.py, every choice in decisions/restores.py."""

from __future__ import annotations

from typing import Any

import kopf

from timesheet_backup import constants as c
from timesheet_backup.actions import restores as actions
from timesheet_backup.actions.common import not_terminal
from timesheet_backup.actions.restore_steps import STEPS
from timesheet_backup.actions.restores import Run
from timesheet_backup.decisions import restores as decide
from timesheet_backup.decisions.restores import RestoreFailed

POLL_SECONDS = 3.0


@kopf.timer(c.GROUP, c.VERSION, c.PLURAL_RESTORE, interval=POLL_SECONDS, when=not_terminal)
def reconcile_restore(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """One tick: do what the current step needs, move on when it is done."""
    if body.get("metadata", {}).get("deletionTimestamp"):
        return
    run = Run(body, patch)
    step = run.st.get("currentStep") or "resolve"
    try:
        unknown = decide.unknown_step(step)
        if unknown:
            raise unknown
        STEPS[step](run)
    except RestoreFailed as exc:
        run.fail(step, exc.reason, str(exc))


@kopf.on.delete(c.GROUP, c.VERSION, c.PLURAL_RESTORE)
def delete_restore(body: kopf.Body, **_: Any) -> None:
    """A Restore deleted mid-way still gives the app its replicas back, once none of its
    Jobs' pods runs any more (a restore Job may be running pg_restore or swapping the
    uploads in: the app must not start on a half-restored state)."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    plan = actions.stop_jobs(namespace, name)
    if not plan.unquiesce:
        raise kopf.TemporaryError(
            f"waiting for the Restore's Jobs to stop before scaling back up: "
            f"{', '.join(plan.waiting_for)}", delay=5)
    spec = body.get("spec") or {}
    names = (spec.get("quiesce") or {}).get("deployments") or []
    if names:
        actions.unquiesce(namespace, name, list(names))
