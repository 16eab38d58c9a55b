"""Names shared by every part of the operator: API group, labels, annotations."""

from typing import Final

GROUP: Final = "backup.northstar.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

KIND_BACKUP: Final = "Backup"
KIND_SCHEDULE: Final = "BackupSchedule"
KIND_RESTORE: Final = "Restore"
PLURAL_BACKUP: Final = "backups"
PLURAL_SCHEDULE: Final = "backupschedules"
PLURAL_RESTORE: Final = "restores"

MANAGED_BY: Final = "timesheet-backup-operator"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_SCHEDULE: Final = f"{GROUP}/schedule"
LABEL_BACKUP: Final = f"{GROUP}/backup"
LABEL_RESTORE: Final = f"{GROUP}/restore"
LABEL_VERIFICATION: Final = f"{GROUP}/verification"

COMPONENT_DATABASE: Final = "database"
COMPONENT_UPLOADS: Final = "uploads"
COMPONENTS: Final = (COMPONENT_DATABASE, COMPONENT_UPLOADS)

MANIFEST_NAME: Final = "manifest.json"

# The age identity (private key) reaches a restore Job only through this variable: the Job
# builder sets it from the decryption Secret, the agent reads it and masks it in its output.
AGE_IDENTITY_ENV: Final = "TSB_AGE_IDENTITY"
