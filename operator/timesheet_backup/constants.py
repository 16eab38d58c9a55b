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
# On a safety Backup: the Restore it was taken before (the Backup outlives it).
LABEL_SAFETY_FOR: Final = f"{GROUP}/safety-for"
# Set by the chart on a schedule from values that it rendered suspended because the values
# (defaults or the schedule's template) lack what its Backups need; the value lists them.
# The operator's own finalizer (kopf's settings.persistence.finalizer, handlers/startup.py).
FINALIZER: Final = f"{GROUP}/finalizer"
# Set by a schedule's retention on a Backup whose objects it deleted itself (in a batch):
# the Backup then owns nothing in the bucket and goes without a finalizer round.
ANNOTATION_OBJECTS_DELETED: Final = f"{GROUP}/objects-deleted"
ANNOTATION_SUSPENDED_UNTIL_SET: Final = f"{GROUP}/suspended-until-set"

COMPONENT_DATABASE: Final = "database"
COMPONENT_UPLOADS: Final = "uploads"
COMPONENTS: Final = (COMPONENT_DATABASE, COMPONENT_UPLOADS)

MANIFEST_NAME: Final = "manifest.json"

# The age identity (private key) reaches a restore Job only through this variable: the Job
# builder sets it from the decryption Secret, the agent reads it and masks it in its output.
AGE_IDENTITY_ENV: Final = "TSB_AGE_IDENTITY"

# Environment of the agent container that `job.env` may not set: what the Job builder sets
# itself (jobs/pod.py, jobs/agent_args.py) and what the agent reads (agent/cli.py, the libpq
# fallbacks). A user's PGPASSWORD or TMPDIR would silently replace the operator's (the last
# duplicate in a container's env wins); the TSB_ prefix is the agent's own namespace
# (TSB_AGE_IDENTITY, TSB_PG_CLIENTS_ROOT, and whatever comes next).
AGENT_ENV_NAMES: Final = (
    "TMPDIR",
    "PGPASSWORD", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGSSLMODE",
    "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
)
RESERVED_ENV_PREFIX: Final = "TSB_"

# Pod labels that `job.podLabels` may not set: the operator's own (it finds its Jobs and their
# pods by them) and those the Job controller puts on every pod it creates.
RESERVED_LABEL_KEYS: Final = (LABEL_MANAGED_BY, "job-name", "controller-uid")
RESERVED_LABEL_PREFIXES: Final = (f"{GROUP}/", "batch.kubernetes.io/")

# A Backup's status carries its per-table row counts up to this many tables (the object
# stays small); beyond, only tableCount, and content alarms compare sizes and table counts.
ROW_COUNTS_STATUS_MAX: Final = 1000

# The agent's first multipart parts (they double every 1,000 parts, storage/uploader.py):
# 8 MiB buffers for objects under 8 GiB. With 16 MiB, an uploads archive of incompressible
# files peaked at 170 MiB, with 8 MiB at 137 MiB (docs/agent.md).
DEFAULT_PART_SIZE: Final = 8 * 1024 * 1024
