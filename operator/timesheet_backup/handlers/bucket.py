"""Compatibility path: moved to timesheet_backup.actions.bucket (the act layer).
handlers/restore_actions.py still imports it from here."""

from timesheet_backup.actions.bucket import (
    abort_incomplete_uploads,
    delete_backup_objects,
    open_store,
)

__all__ = ["abort_incomplete_uploads", "delete_backup_objects", "open_store"]
