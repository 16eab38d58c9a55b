"""What a Restore does next (pure): actions/restore_steps.py gathers what it sees (the Restore,
the Backup and manifest, the Secrets, its Jobs and their pods, the Deployments; through
actions/restores.py) and carries out what these functions return. No kopf, no
kubernetes, no clock reads: `now` is an argument.

The steps, in order (status.currentStep):

    resolve -> wait -> quiesce -> safety -> restore -> hooks -> unquiesce -> verify -> Succeeded
                            \\_____________ on failure ______________/ -> unquiesce -> Failed

`safety` (a Backup of what an in-place restore overwrites, safety_components) runs only when
needed, after the app is quiesced so no write lands between it and the restore.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from timesheet_backup import constants as c
from timesheet_backup.api import models
from timesheet_backup.api.defaults import Defaults
from timesheet_backup.api.fields import dump, parse
from timesheet_backup.api.resolve import deep_merge
from timesheet_backup.jobs.outcome import job_outcome
from timesheet_backup.jobs.pod import child_name
from timesheet_backup.status import TERMINAL_PHASES, parse_time, timestamp

STEPS = ("resolve", "wait", "quiesce", "safety", "restore", "hooks", "unquiesce", "verify")
# Steps that fail before any Deployment was scaled down: nothing to give back.
BEFORE_QUIESCE = ("resolve", "wait")
# The reason a failed Job gives its step (a vanished Job keeps JobMissing, as for a Backup).
JOB_FAILURE = {"restore": "RestoreJobFailed", "hooks": "HookFailed", "verify": "VerificationFailed"}
# Restore fields taken from the backup's database; the rest (format, tables...) are the dump's.
# The TLS Secrets go with them: a verification Restore reaches the database as its backup did.
CONNECTION_FIELDS = ("host", "port", "name", "user", "passwordSecretRef", "sslMode",
                     "sslRootCertSecretRef", "clientCertSecretRef")
TERMINAL_POD_PHASES = frozenset({"Succeeded", "Failed"})
FINISHED_JOB_CONDITIONS = frozenset({"Complete", "Failed", "SuccessCriteriaMet", "FailureTarget"})
# On a quiesced Deployment: its replicas before the restore, and the Restore that holds it.
ANNOTATION_REPLICAS = f"{c.GROUP}/original-replicas"
ANNOTATION_QUIESCED_BY = f"{c.GROUP}/quiesced-by"


class RestoreFailed(Exception):
    """A step failed; the message is for status and the Event."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class BackupNotReady(Exception):
    """The Backup to restore has not finished yet: wait for it."""


class QuiesceBusy(Exception):
    """Another Restore still holds a Deployment scaled down: wait for it."""


# --- resolve ----------------------------------------------------------------------------


def check_backup(name: str, backup: Mapping[str, Any] | None) -> None:
    """A `backupName` source must be a Succeeded Backup; one still running is waited for."""
    if backup is None:
        raise RestoreFailed("BackupNotFound", f"Backup {name} not found")
    phase = (backup.get("status") or {}).get("phase")
    if phase in (None, "Pending", "Running"):
        raise BackupNotReady(f"waiting for Backup {name} to finish")
    if phase != "Succeeded":
        raise RestoreFailed("BackupNotSucceeded",
                            f"Backup {name} is {phase}, only a Succeeded backup can be restored")


@dataclass(frozen=True)
class Location:
    """Where the backup to restore is (before its manifest was read), and the settings it was
    taken with (empty for a bucket source)."""

    storage: Mapping[str, Any]
    manifest_key: str
    database: Mapping[str, Any]
    uploads: Mapping[str, Any]
    backup_name: str | None = None  # the Backup object restored, if any
    completion_time: str | None = None  # when it completed (recorded for `latest`)


@dataclass(frozen=True)
class BucketEntry:
    """One manifest found in the bucket, as far as choosing among them needs it (`error`: it
    could not be read)."""

    key: str
    namespace: str | None = None
    labels: Mapping[str, str] | None = None
    completion_time: datetime | None = None
    error: str | None = None


def source_storage(spec: models.RestoreSpec, defaults: Defaults) -> dict[str, Any]:
    """A bucket source's storage, merged over the operator's default storage."""
    assert spec.source is not None
    return deep_merge(dump(defaults.storage) if defaults.storage else {},
                      dump(spec.source.storage))


def bucket_namespace(spec: models.RestoreSpec, namespace: str) -> str:
    """Whose backups source.latest chooses among: its namespace, else the Restore's."""
    latest = spec.source.latest if spec.source else None
    return (latest.namespace if latest else None) or namespace


def locate(spec: models.RestoreSpec, backup: Mapping[str, Any] | None,
           defaults: Defaults, candidates: Sequence[Mapping[str, Any]] = (),
           in_bucket: Sequence[BucketEntry] = (), namespace: str = "") -> Location:
    """`backup`: the Backup named by spec.backupName as read (None: not found, or no
    backupName); `candidates`: for spec.latest, the Backups labelled with its schedule, as
    listed; `in_bucket`: for source.latest, the manifests under the namespace's prefix, as
    listed (`namespace`: the Restore's). A bucket source's storage is merged over the
    operator's default storage."""
    if spec.backup_name:
        check_backup(spec.backup_name, backup)
        return _backup_location(spec.backup_name, backup or {})
    if spec.latest is not None:
        chosen = choose_latest(spec.latest, candidates)
        return _backup_location(str(chosen["metadata"]["name"]), chosen,
                                str(chosen["status"]["completionTime"]))
    if spec.source is not None:
        storage = source_storage(spec, defaults)
        if spec.source.latest is not None:
            entry = choose_latest_in_bucket(spec.source.latest,
                                            bucket_namespace(spec, namespace), in_bucket,
                                            storage)
            assert entry.completion_time is not None
            return Location(storage=storage, manifest_key=entry.key, database={}, uploads={},
                            completion_time=timestamp(entry.completion_time))
        if spec.source.manifest_key:
            return Location(storage=storage, manifest_key=spec.source.manifest_key,
                            database={}, uploads={})
        raise RestoreFailed("InvalidSpec", "source: set manifestKey or latest")
    raise RestoreFailed("InvalidSpec", "set exactly one of backupName, source or latest")


def choose_latest_in_bucket(latest: models.BucketLatest, namespace: str,
                            entries: Sequence[BucketEntry],
                            storage: Mapping[str, Any]) -> BucketEntry:
    """The newest readable manifest of `namespace` (and of latest.scheduleName, by the label
    its manifest records) completed before latest.before; ties go to the later key. None
    fits: RestoreFailed(NoMatchingBackup) saying where it looked and what it skipped."""
    try:
        before = _aware(parse_time(latest.before))
    except ValueError as exc:
        raise RestoreFailed("InvalidSpec", f"source.latest.before {latest.before!r} is not "
                                           "an RFC 3339 time") from exc
    fitting: list[BucketEntry] = []
    unreadable = 0
    for entry in entries:
        if entry.error is not None or entry.completion_time is None:
            unreadable += 1
            continue
        if entry.namespace != namespace:
            continue  # listed by prefix; checked again, as for Backup objects
        if latest.schedule_name and \
                (entry.labels or {}).get(c.LABEL_SCHEDULE) != latest.schedule_name:
            continue
        completed = _aware(entry.completion_time)
        if before is not None and completed is not None and completed >= before:
            continue
        fitting.append(entry)
    if not fitting:
        where = f"s3://{storage.get('bucket', '?')}/{storage.get('prefix') or ''}"
        message = f"no backup of namespace {namespace}"
        if latest.schedule_name:
            message += f" and schedule {latest.schedule_name}"
        if latest.before:
            message += f" completed before {latest.before}"
        message += f" in {where}"
        if unreadable:
            message += (f" ({unreadable} unreadable manifest{'s' if unreadable > 1 else ''} "
                        "skipped)")
        raise RestoreFailed("NoMatchingBackup", message)
    return max(fitting, key=lambda e: (_aware(e.completion_time), e.key))


def _backup_location(name: str, backup: Mapping[str, Any],
                     completion_time: str | None = None) -> Location:
    bst = backup.get("status") or {}
    resolved_backup = bst.get("resolved") or {}
    return Location(storage=resolved_backup.get("storage") or {},
                    manifest_key=bst["manifestKey"],
                    database=resolved_backup.get("database") or {},
                    uploads=resolved_backup.get("uploads") or {},
                    backup_name=name, completion_time=completion_time)


def choose_latest(latest: models.RestoreLatest,
                  backups: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The newest Succeeded Backup of `latest.scheduleName` among `backups` (those labelled
    with the schedule), completed before `latest.before` and verified when asked; ties on the
    completion time go to the later name. None fits: RestoreFailed(NoMatchingBackup)."""
    try:
        before = _aware(parse_time(latest.before))
    except ValueError as exc:
        raise RestoreFailed("InvalidSpec",
                            f"latest.before {latest.before!r} is not an RFC 3339 time") from exc
    fitting: list[tuple[datetime, str, Mapping[str, Any]]] = []
    for backup in backups:
        meta, st = backup.get("metadata") or {}, backup.get("status") or {}
        if (meta.get("labels") or {}).get(c.LABEL_SCHEDULE) != latest.schedule_name:
            continue  # listed by label; checked again so a wrong list cannot pick a stranger
        if meta.get("deletionTimestamp") or st.get("phase") != "Succeeded":
            continue
        if not st.get("manifestKey") or not st.get("completionTime"):
            continue
        completed = _aware(parse_time(st["completionTime"]))
        if completed is None or (before is not None and completed >= before):
            continue
        if latest.verified_only and not (st.get("verification") or {}).get("verifiedTime"):
            continue
        fitting.append((completed, str(meta["name"]), backup))
    if not fitting:
        raise RestoreFailed("NoMatchingBackup", no_match_message(latest))
    return max(fitting, key=lambda entry: (entry[0], entry[1]))[2]


def _aware(moment: datetime | None) -> datetime | None:
    """A time without an offset is UTC (as Kubernetes writes them)."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


def no_match_message(latest: models.RestoreLatest) -> str:
    """What a Restore of `latest` that found nothing says."""
    kind = "verified Succeeded Backup" if latest.verified_only else "Succeeded Backup"
    message = f"no {kind} of schedule {latest.schedule_name}"
    if latest.before:
        message += f" completed before {latest.before}"
    return message


def manifest_unreadable(location: Location, error: Exception) -> RestoreFailed:
    """The failure of a manifest that cannot be read (or a bucket that cannot be opened)."""
    return RestoreFailed("ManifestUnreadable", f"cannot read {location.manifest_key}: {error}")


def source(location: Location, backup_id: str, components: Sequence[str],
           encrypted: Sequence[str], defaults: Defaults,
           database_format: str | None = None, database_roles: bool = False) -> Source:
    """The Source once the manifest was read (`backup_id`, `components`, the `encrypted`
    components, the database artifact's format and whether roles were dumped with it are
    the manifest's)."""
    # Connection settings come from the backup (or operator defaults for a bucket source).
    return Source(
        storage=location.storage, manifest_key=location.manifest_key, backup_id=backup_id,
        components=list(components), encrypted=list(encrypted),
        database=location.database or (dump(defaults.database) if defaults.database else {}),
        uploads=location.uploads or (dump(defaults.uploads) if defaults.uploads else {}),
        database_format=database_format, database_roles=database_roles,
        backup_name=location.backup_name,
        completion_time=location.completion_time)


@dataclass(frozen=True)
class Source:
    """What was read about the backup to restore: where it is and what its manifest says."""

    storage: Mapping[str, Any]
    manifest_key: str
    backup_id: str
    components: Sequence[str]  # the manifest's
    encrypted: Sequence[str]  # components whose artifact is age-encrypted
    database: Mapping[str, Any]  # the backup's resolved database (or the operator defaults)
    uploads: Mapping[str, Any]  # the backup's resolved uploads (or the operator defaults)
    database_format: str | None = None  # the manifest's database artifact: custom, plain...
    database_roles: bool = False  # the database artifact has the server's roles (globals)
    backup_name: str | None = None  # the Backup object restored, if any
    completion_time: str | None = None  # when it completed (recorded for `latest`)


PLAIN_NOT_SELECTIVE = (
    "{} select part of a dump, but this backup is a plain SQL dump, which can only be "
    "restored whole: take the backups in the custom or directory format (Backup "
    "database.format), or restore the whole dump into a side database (database.name with "
    "createDatabase) and copy from there")


NO_ROLES = (
    "database.globals recreates the roles the backup dumped, but this backup has none: it "
    "was taken without database.globals. Create the roles by hand (or restore a backup that "
    "has them), then restore without globals")


def selection(target: models.RestoreDatabaseTarget | None) -> list[str]:
    """The selective-restore fields a database target sets (as their JSON names)."""
    if target is None:
        return []
    chosen = {"tables": bool(target.tables), "schemas": bool(target.schemas),
              "dataOnly": target.data_only, "schemaOnly": target.schema_only}
    return [name for name in models.SELECTIVE_FIELDS if chosen[name]]


def resolve(spec: models.RestoreSpec, source: Source) -> dict[str, Any]:
    """status.resolved: components and targets (the user's target fields win over the
    backup's), or RestoreFailed naming what is wrong."""
    components = list(spec.components or source.components)
    absent = [x for x in components if x not in source.components]
    if absent:
        raise RestoreFailed("ComponentMissing",
                            f"the backup has no {', '.join(absent)} (it has "
                            f"{', '.join(source.components)})")
    connection = {k: v for k, v in source.database.items() if k in CONNECTION_FIELDS}
    target_db = deep_merge(connection, dump(spec.database) if spec.database else {})
    uploads = {k: v for k, v in source.uploads.items() if k in ("claimName", "subPath")}
    target_uploads = deep_merge(uploads, dump(spec.uploads) if spec.uploads else {})
    if target_uploads.get("scratch") is not None:
        # A throwaway emptyDir: the backup's claim is not where these uploads go.
        target_uploads.pop("claimName", None)
        target_uploads.pop("subPath", None)
    missing = []
    if "database" in components:
        missing += [f"database.{k}" for k in ("host", "name", "user") if not target_db.get(k)]
        if not (target_db.get("passwordSecretRef") or target_db.get("clientCertSecretRef")):
            missing.append("database.passwordSecretRef (or clientCertSecretRef)")
    if ("uploads" in components and not target_uploads.get("claimName")
            and target_uploads.get("scratch") is None):
        missing.append("uploads.claimName")
    if missing:
        raise RestoreFailed("InvalidSpec", "incomplete restore target, set: " + ", ".join(missing))
    selective = selection(spec.database) if "database" in components else []
    if selective and source.database_format == "plain":
        fields = ", ".join(f"database.{name}" for name in selective)
        raise RestoreFailed("SelectiveRestoreUnsupported", PLAIN_NOT_SELECTIVE.format(fields))
    if "database" in components and spec.database and spec.database.globals \
            and not source.database_roles:
        raise RestoreFailed("RolesMissing", NO_ROLES)
    encrypted = any(x in source.encrypted for x in components)
    if encrypted and spec.decryption is None:
        raise RestoreFailed("DecryptionKeyMissing",
                            "the backup is encrypted: set spec.decryption.secretRef (for a "
                            "schedule's restore test: verification.decryption.secretRef)")
    resolved = {
        "storage": dict(source.storage),
        "manifestKey": source.manifest_key,
        "backupId": source.backup_id,
        "components": components,
        "database": target_db if "database" in components else None,
        "uploads": target_uploads if "uploads" in components else None,
        "encrypted": encrypted,
    }
    # The choice, recorded so that later steps (and an operator restart) never search again.
    if source.backup_name:
        resolved["backupName"] = source.backup_name
    if source.completion_time:
        resolved["completionTime"] = source.completion_time
    return resolved


def check_secrets(problems: Sequence[str]) -> None:
    """`problems`: what is wrong with each Secret key the restore Job needs (missing Secret or
    key), as observed."""
    if problems:
        raise RestoreFailed("SecretMissing", "; ".join(problems))


def restored_from(spec: models.RestoreSpec, resolved: Mapping[str, Any]) -> models.RestoredFrom:
    return models.RestoredFrom(backup_name=resolved.get("backupName") or spec.backup_name,
                               manifest_key=resolved["manifestKey"],
                               backup_id=resolved.get("backupId"),
                               completion_time=resolved.get("completionTime"))


# --- steps ------------------------------------------------------------------------------


def deployments_of(spec: models.RestoreSpec) -> list[str]:
    """The Deployments to quiesce."""
    return list(spec.quiesce.deployments) if spec.quiesce else []


def following(step: str, spec: models.RestoreSpec, failed: bool = False,
              safety: Sequence[str] = ()) -> tuple[str, str] | None:
    """The step after `step` (which succeeded) and the message it starts with; None: the
    Restore ends. `failed`: an earlier step failed (its `unquiesce` ends the Restore).
    `safety`: the components to back up before restoring (safety_components)."""
    deployments = deployments_of(spec)
    hooks = spec.hooks.post_restore if spec.hooks else None
    check = spec.verify.http_get if spec.verify else None
    if step == "resolve":
        return "wait", "checking that no backup of the target is running"
    if step == "wait" and deployments:
        return "quiesce", f"scaling {', '.join(deployments)} to 0"
    if step in ("wait", "quiesce") and safety:
        return "safety", f"backing up the current {' and '.join(safety)} first"
    if step in ("wait", "quiesce", "safety"):
        return "restore", "restoring"
    if step == "restore" and hooks:
        return "hooks", f"running hook {hooks[0].name}"
    if step in ("restore", "hooks") and deployments:
        return "unquiesce", "scaling Deployments back up"
    if step in ("restore", "hooks", "unquiesce") and check and not failed:
        return "verify", f"checking {check.url}"
    return None


# --- safety backup ----------------------------------------------------------------------

def safety_components(spec: models.RestoreSpec, resolved: Mapping[str, Any]
                      ) -> list[models.Component]:
    """What an in-place restore would drop or overwrite, and so is backed up first: the
    database when pg_restore cleans an existing database (not one createDatabase makes, not a
    scratch one dropAfter removes, not rows added by dataOnly), the uploads when `replace`
    empties the target directory (merge only adds). Empty: no safety backup (also when
    spec.safetyBackup.enabled is false)."""
    if spec.safety_backup is not None and not spec.safety_backup.enabled:
        return []
    components = resolved.get("components") or []
    chosen: list[models.Component] = []
    db = spec.database or models.RestoreDatabaseTarget()
    if c.COMPONENT_DATABASE in components and db.clean and not (
            db.create_database or db.drop_after or db.data_only):
        chosen.append(c.COMPONENT_DATABASE)
    uploads = spec.uploads or models.RestoreUploadsTarget()
    if (c.COMPONENT_UPLOADS in components and uploads.mode == "replace"
            and uploads.scratch is None):  # a scratch emptyDir holds nothing to lose
        chosen.append(c.COMPONENT_UPLOADS)
    return chosen


def safety_backup_name(restore: str, uid: str) -> str:
    """Deterministic, so a retry or a restarted operator finds the one it created (409); with
    the Restore's uid, so a Restore deleted and created again under the same name (the usual
    retry) takes its own, not the one its predecessor left (safety Backups outlive them)."""
    return child_name(restore, f"safety-{uid[:8]}")


def safety_backup_body(namespace: str, restore: str, uid: str, spec: models.RestoreSpec,
                       resolved: Mapping[str, Any], components: Sequence[str]
                       ) -> dict[str, Any]:
    """The safety Backup: the restore's targets (its database connection, its claim) into the
    source backup's storage. No ownerReference: it must outlive the Restore (its own
    retention, prune_safety_backups, removes it). Compression and encryption are the
    operator's defaults, as for any Backup that does not set them."""
    backup_spec: dict[str, Any] = {"components": list(components),
                                   "storage": dict(resolved.get("storage") or {})}
    if c.COMPONENT_DATABASE in components:
        backup_spec["database"] = {k: v for k, v in (resolved.get("database") or {}).items()
                                   if k in CONNECTION_FIELDS}
    if c.COMPONENT_UPLOADS in components:
        backup_spec["uploads"] = {k: v for k, v in (resolved.get("uploads") or {}).items()
                                  if k in ("claimName", "subPath")}
    if spec.job is not None:
        backup_spec["job"] = dump(spec.job)  # where the restore's Jobs run, the backup's do
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND_BACKUP,
        "metadata": {
            "name": safety_backup_name(restore, uid),
            "namespace": namespace,
            "labels": {c.LABEL_MANAGED_BY: c.MANAGED_BY, c.LABEL_SAFETY_FOR: restore},
        },
        "spec": backup_spec,
    }


@dataclass(frozen=True)
class SafetyStep:
    """What to do about the safety Backup this tick; `manifest_key` once it Succeeded."""

    action: Literal["create", "wait", "done", "fail"]
    message: str = ""
    manifest_key: str | None = None


SAFETY_FAILED = "SafetyBackupFailed"


def safety_step(name: str, recorded: str | None, backup: Mapping[str, Any] | None
                ) -> SafetyStep:
    """`recorded`: status.safetyBackup.backupName (the Backup this Restore created);
    `backup`: the Backup `name` as read. One that was created and is gone, deleted or
    Failed fails the Restore before anything was restored."""
    if backup is None:
        if recorded != name:
            return SafetyStep("create", f"Backup {name} created")
        return SafetyStep("fail", f"safety Backup {name} disappeared before it ended; the "
                                  "restore did not start")
    st = backup.get("status") or {}
    phase = st.get("phase")
    if (backup.get("metadata") or {}).get("deletionTimestamp") or phase == "Deleting":
        return SafetyStep("fail", f"safety Backup {name} is being deleted; the restore did "
                                  "not start")
    if phase == "Failed":
        detail = st.get("message") or "no message"
        return SafetyStep("fail", f"safety Backup {name} failed: {detail}; the restore did "
                                  "not start (nothing was changed)")
    if phase == "Succeeded":
        return SafetyStep("done", f"the state before the restore is in Backup {name} "
                                  f"({st.get('manifestKey')})", st.get("manifestKey"))
    return SafetyStep("wait", f"waiting for safety Backup {name} ({phase or 'Pending'})")


def prune_safety_backups(backups: Sequence[Mapping[str, Any]], keep: int) -> list[str]:
    """The safety Backups (those labelled safety-for, as listed) to delete: Succeeded ones
    beyond the newest `keep` (by creation time, then name), and Failed ones (they hold
    nothing to go back to; their Restore's message says why). Running ones belong to a
    Restore at work and are left alone."""
    succeeded: list[tuple[str, str]] = []
    delete = []
    for backup in backups:
        meta, st = backup.get("metadata") or {}, backup.get("status") or {}
        if not (meta.get("labels") or {}).get(c.LABEL_SAFETY_FOR) or \
                meta.get("deletionTimestamp"):
            continue  # listed by label; checked again so a wrong list cannot delete a stranger
        if st.get("phase") == "Succeeded":
            succeeded.append((str(meta.get("creationTimestamp") or ""), str(meta["name"])))
        elif st.get("phase") == "Failed":
            delete.append(str(meta["name"]))
    succeeded.sort(reverse=True)
    return sorted(delete + [name for _, name in succeeded[keep:]])


def waiting_for(blocker: str) -> tuple[str, str]:
    """The reason and message of the `wait` step while `blocker` ("Backup x", "Restore y")
    works on the same database."""
    reason = "WaitingForBackup" if blocker.startswith(c.KIND_BACKUP) else "WaitingForRestore"
    return reason, f"waiting for {blocker} of the same database to finish"


def record_step(steps: Sequence[Mapping[str, Any]] | None, name: str, phase: str,
                now: datetime, message: str | None = None) -> list[models.RestoreStep]:
    """status.steps with step `name` now at `phase` (added when it is not there yet); a step
    that is no longer Running gets its completion time."""
    records = typed_steps(steps) or []
    stamp = timestamp(now)
    for s in records:
        if s.name == name:
            s.phase = phase  # type: ignore[assignment]  # a phase of models.RestoreStep
            if phase != "Running":
                s.completion_time = stamp
            if message:
                s.message = message
            return records
    entry = models.RestoreStep(name=name, phase=phase,  # type: ignore[arg-type]
                               start_time=stamp)
    if phase != "Running":
        entry.completion_time = stamp
    if message:
        entry.message = message
    records.append(entry)
    return records


def typed_steps(steps: Sequence[Mapping[str, Any]] | None) -> list[models.RestoreStep] | None:
    """status.steps as read, typed for the status writer."""
    if steps is None:
        return None
    return [parse(models.RestoreStep, s, f"status.steps[{i}]") for i, s in enumerate(steps)]


@dataclass(frozen=True)
class Ending:
    """How a Restore ends: its phase, the condition reason, message and Event type."""

    phase: Literal["Succeeded", "Failed"]
    reason: str
    message: str
    event: Literal["Normal", "Warning"]


def ending(status: Mapping[str, Any]) -> Ending:
    """A Restore with a failed step ends Failed (failure_message), any other Succeeded."""
    if status.get("failedStep"):
        return Ending("Failed", str(status.get("failureReason")), failure_message(status),
                      "Warning")
    source_key = (status.get("resolved") or {}).get("manifestKey")
    message = f"restored from {source_key}"
    note = _content_step_note(status.get("steps"))
    if note:
        message += f"; {note}"
    safety = (status.get("safetyBackup") or {}).get("backupName")
    if safety:
        message += f"; the state before it is in Backup {safety} (restore it to undo)"
    return Ending("Succeeded", "Completed", message, "Normal")


def content_notes(summary: Mapping[str, Any]) -> str | None:
    """What the restore Job recreated and compared, from its JSON summary: the roles
    (database.roles, e.g. "roles: 3 role(s) created (...); ..."), the row counts
    (database.rowCounts, e.g. "compared 4 tables' row counts with the backup's: all equal")
    and the uploads (uploads.compared, e.g. "uploads: 12 files, 3.4 MiB as the manifest
    records, archive sha256 checked"), joined by "; "; None if there is nothing to say."""
    if not summary:
        return None
    notes = [(summary.get(part) or {}).get(key)
             for part, key in (("database", "roles"), ("database", "rowCounts"),
                               ("uploads", "compared"))]
    found = [n for n in notes if isinstance(n, str) and n]
    return "; ".join(found) or None


def _content_step_note(steps: Any) -> str | None:
    # The restore step's message is the content note when one was made (job_step).
    for step in steps or []:
        if isinstance(step, Mapping) and step.get("name") == "restore" and \
                step.get("phase") == "Succeeded":
            message = step.get("message") or ""
            if message.startswith(CONTENT_NOTES):
                return str(message)
    return None


# How the agent's content notes begin (agent/restore.py, decisions/content.py,
# storage/manifest.uploads_comparison).
CONTENT_NOTES = ("roles: ", "compared ", "the backup has no row counts", "uploads: ")


def unknown_step(step: str) -> RestoreFailed | None:
    """A currentStep this operator does not know (written by another version, or by hand):
    end the Restore instead of failing the same way on every tick."""
    if step in STEPS:
        return None
    return RestoreFailed("UnknownStep",
                         f"status.currentStep {step!r} is not a step of this operator "
                         f"({', '.join(STEPS)}): the Restore cannot resume; create a new one")


def step_started(steps: Sequence[Mapping[str, Any]] | None, name: str) -> datetime | None:
    """When step `name` started (status.steps), if it did."""
    for s in steps or []:
        if s["name"] == name:
            return parse_time(s.get("startTime"))
    return None


def unquiesce_after_failure(failed_step: str, deployments: Sequence[str]) -> bool:
    """Whether a failure must go through `unquiesce` (a step that may have scaled Deployments
    down; an unknown one too: unquiesce only touches what this Restore's annotation claims)."""
    return bool(deployments) and failed_step not in BEFORE_QUIESCE


# What status.message adds to a failure while the Restore gives the Deployments back.
UNQUIESCING_AFTER_FAILURE = "; scaling Deployments back up"


def unquiescing_message(failure: str) -> str:
    """status.message while a failed Restore scales its Deployments back up."""
    return failure + UNQUIESCING_AFTER_FAILURE


def failure_message(status: Mapping[str, Any]) -> str:
    """The message a failed Restore ends with: the failure itself, as the failed step
    recorded it in status.steps. Not status.message: a failure that went through `unquiesce`
    left it saying the Deployments are being scaled back up, which is done by the time the
    Restore ends (and status is all a later tick, or a restarted operator, knows). Without a
    recorded step message: status.message without that suffix, else a generic one."""
    failed = status.get("failedStep")
    for step in status.get("steps") or []:
        if step.get("name") == failed and step.get("phase") == "Failed" and step.get("message"):
            return str(step["message"])
    message = str(status.get("message") or "").removesuffix(UNQUIESCING_AFTER_FAILURE)
    return message or "restore failed"


@dataclass(frozen=True)
class Progress:
    """The outcome of one tick of a step that waits: keep waiting (with what to say), move on,
    or fail."""

    action: Literal["wait", "done", "fail"]
    reason: str = ""
    message: str = ""


def quiesce_progress(started: datetime, now: datetime, timeout: int, busy: str | None,
                     pods_left: Sequence[str]) -> Progress:
    """`busy`: why a Deployment cannot be taken yet (another Restore still holds it scaled
    down); `pods_left`: pods of the quiesced Deployments still there. Both are waited for up
    to quiesce.timeoutSeconds from the step's start, then the Restore fails (and gives back
    what it scaled down)."""
    late = (now - started).total_seconds() > timeout
    if busy:
        if late:
            return Progress("fail", "QuiesceBusy",
                            f"{busy}; gave up after {timeout}s (quiesce.timeoutSeconds)")
        return Progress("wait", message=busy)
    if pods_left:
        if late:
            return Progress("fail", "QuiesceTimeout",
                            f"pods still running after {timeout}s: {', '.join(pods_left)}")
        return Progress("wait", message=f"waiting for pods to stop: {', '.join(pods_left)}")
    return Progress("done")


def holder(restore: str, deployment: Mapping[str, Any] | None) -> str | None:
    """Another Restore that scaled the Deployment down (its annotation says so): whether it is
    still at work must be observed before the Deployment is taken (quiesce_deployment)."""
    owner = _annotations(deployment).get(ANNOTATION_QUIESCED_BY)
    return owner if owner and owner != restore else None


def at_work(restore: Mapping[str, Any] | None) -> bool:
    """Whether a Restore (as read; None: gone) may still hold Deployments scaled down."""
    if restore is None or restore.get("metadata", {}).get("deletionTimestamp"):
        return False
    return (restore.get("status") or {}).get("phase") not in TERMINAL_PHASES


@dataclass(frozen=True)
class Quiesce:
    """One Deployment to quiesce: the replicas it gets back, and the patch that scales it
    down (None: this Restore holds it already)."""

    replicas: int
    patch: dict[str, Any] | None


def quiesce_deployment(restore: str, name: str, deployment: Mapping[str, Any] | None,
                       holder_at_work: bool) -> Quiesce:
    """Scale Deployment `name` to 0, recording its replicas in the same patch (so the count
    survives an operator crash at any point). `holder_at_work`: the Restore named by holder()
    is still at work (QuiesceBusy: wait for it to give the Deployment back)."""
    if deployment is None:
        raise RestoreFailed("DeploymentNotFound", f"Deployment {name} to quiesce not found")
    annotations = _annotations(deployment)
    owner = annotations.get(ANNOTATION_QUIESCED_BY)
    if owner and owner != restore and holder_at_work:
        raise QuiesceBusy(f"waiting for Restore {owner}, which scaled Deployment {name} "
                          "down, to give it back")
    if owner == restore:
        return Quiesce(int(annotations.get(ANNOTATION_REPLICAS, "1")), None)
    if owner:
        # Left by a Restore that is gone: its record of the replicas is the true one
        # (the Deployment is at 0 because of it), so keep the count and take it over.
        return Quiesce(int(annotations.get(ANNOTATION_REPLICAS, "1")), {
            "metadata": {"annotations": {ANNOTATION_QUIESCED_BY: restore}},
            "spec": {"replicas": 0},
        })
    replicas = int(deployment["spec"].get("replicas", 1))
    return Quiesce(replicas, {
        "metadata": {"annotations": {ANNOTATION_REPLICAS: str(replicas),
                                     ANNOTATION_QUIESCED_BY: restore}},
        "spec": {"replicas": 0},
    })


def unquiesce_patch(restore: str, deployment: Mapping[str, Any] | None
                    ) -> dict[str, Any] | None:
    """The patch that gives a Deployment this Restore scaled down its replicas back (and
    removes the annotations); None for one that is gone or not held by this Restore."""
    if deployment is None:
        return None
    annotations = _annotations(deployment)
    if annotations.get(ANNOTATION_QUIESCED_BY) != restore:
        return None
    return {
        "metadata": {"annotations": {ANNOTATION_REPLICAS: None,
                                     ANNOTATION_QUIESCED_BY: None}},
        "spec": {"replicas": int(annotations.get(ANNOTATION_REPLICAS, "1"))},
    }


def _annotations(deployment: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return ((deployment or {}).get("metadata") or {}).get("annotations") or {}


@dataclass(frozen=True)
class JobStep:
    """What to do about the Job of a step this tick."""

    action: Literal["create", "wait", "done", "fail"]
    reason: str = ""
    message: str = ""


def job_step(step: str, name: str, recorded: str | None, job: Mapping[str, Any] | None,
             pods: Sequence[Mapping[str, Any]], now: datetime) -> JobStep:
    """`recorded` is status.jobName, the Job this Restore created last. A Job not created yet
    is created; one that was created and is gone fails the step (JobMissing, like a Backup's):
    recreating it would run the restore or a hook again without anyone asking."""
    if job is None and recorded != name:
        return JobStep("create", "JobCreated", f"Job {name} started")
    outcome = job_outcome(job, pods, now)
    if outcome.state == "running":
        return JobStep("wait")
    if outcome.state == "succeeded":
        return JobStep("done", outcome.reason,
                       content_notes(outcome.summary) or outcome.message)
    if outcome.reason == "JobMissing":
        return JobStep("fail", "JobMissing", f"Job {name}: {outcome.message}")
    return JobStep("fail", JOB_FAILURE[step], outcome.message)


def current_hook(job_names: Sequence[str], recorded: str | None) -> int:
    """Which post-restore hook is at work: the one whose Job is status.jobName, else the
    first (the restore Job was the last one)."""
    return job_names.index(recorded) if recorded in job_names else 0


# --- deletion ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Deletion:
    """A Restore being deleted: stop its Jobs, and give the Deployments back only once no pod
    of them runs (a restore Job may still be running pg_restore or swapping the uploads)."""

    delete_jobs: list[str]
    waiting_for: list[str]  # pods still running or about to

    @property
    def unquiesce(self) -> bool:
        return not self.waiting_for


def deletion(jobs: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]]) -> Deletion:
    """`jobs` and `pods`: those labelled with the Restore's name. Every Job is deleted (its
    pods get SIGTERM: the agent rolls back); the Deployments wait for every pod that has not
    ended, and for one more look when a Job had not finished (it may have been starting a
    pod as it was deleted)."""
    delete = sorted(str(j["metadata"]["name"]) for j in jobs
                    if not (j.get("metadata") or {}).get("deletionTimestamp"))
    unfinished = sorted(f"Job {j['metadata']['name']}" for j in jobs if not _finished(j))
    running = sorted(str(p["metadata"]["name"]) for p in pods
                     if (p.get("status") or {}).get("phase") not in TERMINAL_POD_PHASES)
    return Deletion(delete, running + unfinished)


def _finished(job: Mapping[str, Any]) -> bool:
    """A Job that will start no pod any more."""
    return any(cond.get("type") in FINISHED_JOB_CONDITIONS and cond.get("status") == "True"
               for cond in (job.get("status") or {}).get("conditions") or [])
