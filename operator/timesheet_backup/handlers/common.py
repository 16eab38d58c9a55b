"""Compatibility path: the shared helpers moved to timesheet_backup.actions.common (the act
layer). handlers/restores.py and handlers/restore_actions.py still import them from here."""

from timesheet_backup.actions.common import (
    ClaimUsers,
    claim_users,
    conditions,
    config,
    database_target,
    enter,
    insecure_settings,
    job_identity,
    lock_database,
    missing_secrets,
    not_terminal,
    now,
    post_event,
    running_on,
    set_config,
    write,
)

__all__ = ["ClaimUsers", "claim_users", "conditions", "config", "database_target", "enter",
           "insecure_settings", "job_identity", "lock_database", "missing_secrets",
           "not_terminal", "now", "post_event", "running_on", "set_config", "write"]
