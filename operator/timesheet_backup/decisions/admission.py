"""Admission: what the API server refuses before the operator sees an object (the validating
webhook in webhook.py), from the same checks the handlers run afterwards.

- Refused: what can never work, whatever the cluster holds — a spec the parser rejects, a
  cron expression or time zone the operator cannot run (`0 2 30 2 *` never fires,
  `Mars/Olympus_Mons` is no zone), a restore into a PostgreSQL template database.
- Warned (the object is admitted): what depends on state that may change after the apply —
  Secrets or keys that do not exist yet (GitOps often applies them later), settings the
  operator's current defaults leave incomplete.

The handlers still check everything and report in status: the webhook's failurePolicy is
Ignore, so a stopped operator never blocks an apply or a sync. Pure: the webhook gathers the
request, the operator's defaults and which Secrets are missing, and carries out the verdict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from timesheet_backup import constants as c
from timesheet_backup.api import models
from timesheet_backup.api.defaults import Defaults
from timesheet_backup.api.fields import SpecError, parse
from timesheet_backup.api.resolve import ResolveError, resolve_backup
from timesheet_backup.api.validation import SYSTEM_DATABASES
from timesheet_backup.constants import AGE_IDENTITY_ENV
from timesheet_backup.jobs import agent_args
from timesheet_backup.jobs.pod import (
    SecretVolume,
    deletion_secrets,
    required_secrets,
    secret_env,
    storage_env,
)
from timesheet_backup.schedule import cron

# The kinds the webhook is registered for, with the spec model each one parses into.
SPECS: dict[str, type] = {
    c.KIND_BACKUP: models.BackupSpec,
    c.KIND_SCHEDULE: models.BackupScheduleSpec,
    c.KIND_RESTORE: models.RestoreSpec,
}


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    message: str = ""
    warnings: tuple[str, ...] = ()


ALLOW = Verdict(allowed=True)


def needs_review(request: Mapping[str, Any]) -> bool:
    """Only a new spec is judged. An UPDATE that leaves the spec alone (finalizers, labels,
    annotations the operator writes) and an object being deleted always pass: refusing them
    would keep the operator from finishing its work on an object admitted before a stricter
    check (or while the webhook was down)."""
    if request.get("operation") not in ("CREATE", "UPDATE"):
        return False
    obj = request.get("object") or {}
    if (obj.get("metadata") or {}).get("deletionTimestamp"):
        return False
    if request.get("operation") == "UPDATE":
        return (request.get("oldObject") or {}).get("spec") != obj.get("spec")
    return True


def refusal(kind: str, spec: Mapping[str, Any] | None) -> str | None:
    """Why the object can never run, or None."""
    try:
        parsed: Any = parse(SPECS[kind], spec)
    except SpecError as exc:
        return str(exc)
    try:
        if isinstance(parsed, models.BackupScheduleSpec):
            cron.validate(parsed.schedule, parsed.time_zone)
            if parsed.verification:
                cron.validate(parsed.verification.schedule, parsed.time_zone)
                return _system_database("spec.verification.database",
                                        parsed.verification.database)
        if isinstance(parsed, models.RestoreSpec) and parsed.database:
            return _system_database("spec.database.name", parsed.database.name)
    except cron.CronError as exc:
        return f"spec: {exc}"
    return None


def _system_database(path: str, name: str | None) -> str | None:
    if name in SYSTEM_DATABASES:
        return (f"{path}: {name!r} is a PostgreSQL template database; restore into the app's "
                "database or a new one")
    return None


def secrets_needed(kind: str, spec: Mapping[str, Any] | None, defaults: Defaults
                   ) -> tuple[list[tuple[str, str]], list[str]]:
    """The (Secret, key) pairs the object's Jobs will read, from the same functions that
    build their env, and warnings about settings the operator's defaults leave incomplete.
    Call only for a spec refusal() let through."""
    if kind == c.KIND_RESTORE:
        return _restore_secrets(parse(models.RestoreSpec, spec)), []
    template = spec
    extra: list[dict[str, Any]] = []
    if kind == c.KIND_SCHEDULE:
        schedule = parse(models.BackupScheduleSpec, spec)
        template = (spec or {}).get("template", {}).get("spec")
        if schedule.verification and schedule.verification.decryption:
            extra = secret_env(AGE_IDENTITY_ENV, schedule.verification.decryption.secret_ref)
    try:
        resolved = resolve_backup(template, defaults)
    except (ResolveError, SpecError) as exc:
        what = "each Backup of this schedule" if kind == c.KIND_SCHEDULE else "this Backup"
        return required_secrets(extra), [
            f"with the operator's current defaults {what} would fail: {exc}"]
    return required_secrets(agent_args.backup_env(resolved) + extra,
                            agent_args.backup_volumes(resolved)), []


def deletion_secrets_needed(kind: str, spec: Mapping[str, Any] | None, defaults: Defaults
                            ) -> list[tuple[str, str]]:
    """The (Secret, key) pairs the operator reads to delete the objects of the Backups this
    object makes (storage.deleteCredentialsSecretRef): not a Job's. Restores delete nothing.
    Call only for a spec refusal() let through."""
    if kind == c.KIND_RESTORE:
        return []
    template = (spec or {}).get("template", {}).get("spec") if kind == c.KIND_SCHEDULE \
        else spec
    try:
        resolved = resolve_backup(template, defaults)
    except (ResolveError, SpecError):
        return []  # secrets_needed() already warns about the incomplete settings
    return deletion_secrets(resolved.storage)


def _restore_secrets(spec: models.RestoreSpec) -> list[tuple[str, str]]:
    # Only what the spec names itself: the rest comes from the Backup, which the operator
    # checks when the Restore starts (SecretMissing).
    env: list[dict[str, Any]] = []
    volumes: list[SecretVolume] = []
    if spec.database:
        if spec.database.password_secret_ref:
            env += secret_env("PGPASSWORD", spec.database.password_secret_ref)
        tls_env, volumes = agent_args.database_tls(spec.database.ssl_root_cert_secret_ref,
                                                   spec.database.client_cert_secret_ref)
        env += tls_env
    if spec.source:
        env += storage_env(spec.source.storage)
        volumes += agent_args.storage_volumes(spec.source.storage)
    if spec.decryption:
        env += secret_env(AGE_IDENTITY_ENV, spec.decryption.secret_ref)
    return required_secrets(env, volumes)


def verdict(refused: str | None, missing_secrets: Sequence[str],
            warnings: Sequence[str], missing_deletion_secrets: Sequence[str] = ()) -> Verdict:
    if refused:
        return Verdict(allowed=False, message=refused)
    return Verdict(allowed=True, warnings=tuple(
        [f"{problem}: the Jobs cannot start until it exists" for problem in missing_secrets]
        + [deletion_secret_warning(problem) for problem in missing_deletion_secrets]
        + list(warnings)))


def deletion_secret_warning(problem: str) -> str:
    """A missing storage.deleteCredentialsSecretRef: backups still run, deletes wait."""
    return (f"{problem} (storage.deleteCredentialsSecretRef): backups run, but the operator "
            "cannot delete their objects (retention, deletionPolicy Delete) until it exists")
