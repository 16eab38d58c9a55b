"""kopf handlers, one module per resource. Importing this package registers them all."""

from timesheet_backup.handlers import backups, metrics, restores, schedules, startup

__all__ = ["backups", "metrics", "restores", "schedules", "startup"]
