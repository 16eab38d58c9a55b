"""The operator's defaults for Backups (pure): the `defaults:` section of its configuration
(Helm values), parsed with the same strict parser and models as the custom resources.

It lives in `api` beside the models it is made of, so resolving a spec against it
(`api.resolve`) needs nothing outside the API package; `settings` reads it from the
configuration file as one field of `OperatorConfig`."""

from __future__ import annotations

from dataclasses import dataclass

from timesheet_backup.api import models
from timesheet_backup.api.fields import field


@dataclass(kw_only=True)
class Defaults:
    """Values for every field a Backup or BackupSchedule template leaves unset."""

    database: models.DatabaseSpec | None = field("Database defaults.", default=None)
    uploads: models.UploadsSpec | None = field("Uploads defaults.", default=None)
    storage: models.StorageSpec | None = field("Storage defaults.", default=None)
    compression: models.CompressionSpec | None = field("Compression defaults.", default=None)
    encryption: models.EncryptionSpec | None = field("Encryption defaults.", default=None)
    job: models.JobSpec | None = field("Job tuning defaults.", default=None)
