"""What `kubectl timesheet-backup` shows and creates (pure): table rows from Backups and
schedules, the Backup and Restore bodies its flags ask for, and how a Restore's or Backup's
progress reads. plugin_cli.py reads the cluster, calls these, and prints or creates the
result; it holds no rule of its own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from timesheet_backup import constants as c
from timesheet_backup.api import models
from timesheet_backup.api.fields import parse
from timesheet_backup.decisions.schedules import backup_body, is_verified
from timesheet_backup.schedule import planner
from timesheet_backup.status import TERMINAL_PHASES, human_size, parse_time

NONE = "-"
# Backup and Restore names become label values on their Jobs (jobs/manifests.py): at most 63
# characters; planner.backup_name adds 15 ("-YYYYmmddHHMMSS").
LABEL_VALUE_MAX = 63
_PREFIX_MAX = LABEL_VALUE_MAX - 15


class UsageError(ValueError):
    """Flags that do not fit together: exit code 2, like argparse's own errors."""


# --- formatting -----------------------------------------------------------------------------


def human_duration(seconds: float) -> str:
    """kubectl's AGE format (apimachinery's duration.HumanDuration): `45s`, `5m10s`, `3h`,
    `2d5h`, `40d`, `3y2d`."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def age(value: str | None, now: datetime) -> str:
    """How long ago an RFC 3339 time was, as kubectl's AGE column says it."""
    moment = parse_time(value)
    return NONE if moment is None else human_duration((now - moment).total_seconds())


def ago(value: str | None, now: datetime) -> str:
    return NONE if not value else f"{age(value, now)} ago"


def until(value: str | None, now: datetime) -> str:
    moment = parse_time(value)
    return NONE if moment is None else f"in {human_duration((moment - now).total_seconds())}"


def table(rows: Sequence[Sequence[str]], sep: str = "   ") -> str:
    """Columns padded to their widest cell (the last one not), as kubectl prints them."""
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(sep.join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)),
                               row[-1]]).rstrip() for row in rows)


# --- list: Backups --------------------------------------------------------------------------


def schedule_of(obj: Mapping[str, Any]) -> str | None:
    """The schedule a Backup belongs to: its label, which retention and `latest` go by."""
    labels = obj["metadata"].get("labels") or {}
    return labels.get(c.LABEL_SCHEDULE) or (obj.get("status") or {}).get("schedule")


def verified(backup: Mapping[str, Any]) -> str:
    """`yes` (passed a restore test), `yes,last-failed` (passed, a later test failed: still
    verified for retention and `--verified-only`), `failed` (tested, never passed), `-`."""
    record = (backup.get("status") or {}).get("verification") or {}
    if not record:
        return NONE
    if is_verified(backup):
        return "yes,last-failed" if record.get("result") == "Failed" else "yes"
    return "failed" if record.get("result") == "Failed" else NONE


def newest_first(objects: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(objects, key=lambda o: (o["metadata"].get("creationTimestamp") or "",
                                          o["metadata"].get("namespace") or "",
                                          o["metadata"]["name"]), reverse=True)


def backup_rows(backups: Sequence[Mapping[str, Any]], now: datetime,
                all_namespaces: bool = False) -> list[list[str]]:
    head = ["NAME", "SCHEDULE", "PHASE", "SIZE", "AGE", "VERIFIED", "COMPONENTS"]
    rows = [["NAMESPACE", *head] if all_namespaces else head]
    for b in newest_first(backups):
        meta, st = b["metadata"], b.get("status") or {}
        components = st.get("components") or ",".join((b.get("spec") or {}).get("components")
                                                       or []) or NONE
        size = st.get("sizeBytes")
        row = [meta["name"], schedule_of(b) or NONE, st.get("phase") or NONE,
               NONE if size is None else human_size(int(size), sep=""),
               age(meta.get("creationTimestamp"), now), verified(b), components]
        rows.append([meta.get("namespace") or NONE, *row] if all_namespaces else row)
    return rows


# --- status: schedules ----------------------------------------------------------------------


def last_verified(schedule: Mapping[str, Any], now: datetime) -> str:
    """The last restore test: `Succeeded 2h ago`, `Failed 5m ago`, `-`."""
    last = (schedule.get("status") or {}).get("lastVerification") or {}
    if not last.get("time"):
        return NONE
    return f"{last.get('result', '?')} {ago(last['time'], now)}"


def schedule_rows(schedules: Sequence[Mapping[str, Any]], now: datetime,
                  all_namespaces: bool = False) -> list[list[str]]:
    head = ["NAME", "SCHEDULE", "SUSPENDED", "LAST SUCCESS", "NEXT RUN", "LAST VERIFIED"]
    rows = [["NAMESPACE", *head] if all_namespaces else head]
    for s in sorted(schedules, key=lambda o: (o["metadata"].get("namespace") or "",
                                              o["metadata"]["name"])):
        meta, spec, st = s["metadata"], s.get("spec") or {}, s.get("status") or {}
        cron = str(spec.get("schedule") or NONE)
        if spec.get("timeZone"):
            cron += f" ({spec['timeZone']})"
        row = [meta["name"], cron, "True" if spec.get("suspend") else "False",
               ago(st.get("lastSuccessfulTime"), now),
               NONE if spec.get("suspend") else until(st.get("nextScheduleTime"), now),
               last_verified(s, now)]
        rows.append([meta.get("namespace") or NONE, *row] if all_namespaces else row)
    return rows


# --- backup now -----------------------------------------------------------------------------


def generated_name(prefix: str, now: datetime) -> str:
    """`<prefix>-<UTC timestamp>`, short enough to be a label value."""
    return planner.backup_name(prefix[:_PREFIX_MAX].rstrip("-."), now)


def check_name(name: str) -> str:
    if len(name) > LABEL_VALUE_MAX:
        raise UsageError(f"name {name!r} is longer than {LABEL_VALUE_MAX} characters (it "
                         "becomes a label value on its Jobs)")
    return name


def backup_from_schedule(schedule: Mapping[str, Any], name: str | None,
                         now: datetime) -> dict[str, Any]:
    """The Backup a run of `schedule` would create (the schedule's own builder: template,
    labels, owner reference), named `<schedule>-manual-<time>` unless `name` is given. It
    carries the schedule's label, so it counts for the schedule's status, retention and
    `latest` like a scheduled run."""
    spec = parse(models.BackupScheduleSpec, schedule.get("spec"), "spec")
    chosen = name or generated_name(f"{schedule['metadata']['name']}-manual", now)
    return backup_body(schedule, spec, check_name(chosen))


def backup_from_flags(namespace: str, name: str | None, components: Sequence[str],
                      manifest: Mapping[str, Any] | None, now: datetime,
                      namespace_flag: str | None = None) -> dict[str, Any]:
    """A one-off Backup: the spec of `manifest` (a Backup from `-f`) or an empty one (every
    setting from the operator's defaults), with `components` when given. Its namespace is
    `-n`'s, else the manifest's, else `namespace` (the context's); a manifest for another
    namespace than `-n` is refused, as kubectl does."""
    meta: dict[str, Any] = {}
    spec: dict[str, Any] = {}
    if manifest is not None:
        if manifest.get("kind") not in (None, c.KIND_BACKUP):
            raise UsageError(f"-f: expected a {c.KIND_BACKUP}, got a {manifest.get('kind')}")
        meta = dict(manifest.get("metadata") or {})
        spec = dict(manifest.get("spec") or {})
        if namespace_flag and meta.get("namespace") not in (None, namespace_flag):
            raise UsageError(f"-f: the Backup is for namespace {meta['namespace']}, not "
                             f"{namespace_flag} (-n)")
    namespace = namespace_flag or meta.get("namespace") or namespace
    if components:
        spec["components"] = list(dict.fromkeys(components))
    try:  # a misspelt field is refused here, before anything is sent
        parse(models.BackupSpec, spec, "spec")
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    metadata: dict[str, Any] = {
        "name": check_name(name or meta.get("name") or generated_name("backup", now)),
        "namespace": namespace}
    for key in ("labels", "annotations"):
        if meta.get(key):
            metadata[key] = dict(meta[key])
    return {"apiVersion": c.API_VERSION, "kind": c.KIND_BACKUP, "metadata": metadata,
            "spec": spec}


# --- restore --------------------------------------------------------------------------------

LATEST = "latest"


@dataclass(frozen=True)
class RestoreRequest:
    """What `restore latest|BACKUP` was asked for."""

    source: str  # "latest" or a Backup's name
    schedule: str | None = None
    before: str | None = None
    verified_only: bool = False
    tables: Sequence[str] = ()
    schemas: Sequence[str] = ()
    into: str | None = None
    data_only: bool = False
    schema_only: bool = False
    components: Sequence[str] = ()
    quiesce: Sequence[str] = ()
    name: str | None = None
    bucket: str | None = None  # latest from the bucket alone (source.latest)
    backup_namespace: str | None = None  # with bucket: whose backups (default: the Restore's)
    # Another server (disaster recovery): where, as whom, the password's Secret (NAME[:KEY]).
    db_host: str | None = None
    db_port: int | None = None
    db_user: str | None = None
    db_secret: str | None = None
    owner: str | None = None  # of the database --into creates
    globals: bool = False  # recreate the backup's roles first


DEFAULT_PASSWORD_KEY = "password"  # noqa: S105 (a Secret key name)


def secret_key_ref(value: str) -> dict[str, str]:
    """`NAME[:KEY]` as a secretKeyRef (KEY defaults to `password`)."""
    name, _, key = value.partition(":")
    if not name:
        raise UsageError(f"--db-secret {value!r}: give NAME or NAME:KEY")
    return {"name": name, "key": key or DEFAULT_PASSWORD_KEY}


def restore_body(request: RestoreRequest, namespace: str, now: datetime) -> dict[str, Any]:
    """The Restore for `request`. A table, schema or side-database selection restores the
    database alone unless components are named: "one table into a side database" must not
    replace the uploads volume in place as well."""
    spec: dict[str, Any] = {}
    if request.backup_namespace and not request.bucket:
        raise UsageError("--backup-namespace chooses among the backups in a bucket: use it "
                         "with --from-bucket")
    if request.bucket:
        if request.source != LATEST:
            raise UsageError("--from-bucket restores `latest` (a backup known by its key: "
                             "write a Restore with source.manifestKey)")
        if request.verified_only:
            raise UsageError("--verified-only needs the Backup objects: the bucket does not "
                             "record restore tests")
        from_bucket: dict[str, Any] = {}
        if request.backup_namespace:
            from_bucket["namespace"] = request.backup_namespace
        if request.schedule:
            from_bucket["scheduleName"] = request.schedule
        if request.before:
            from_bucket["before"] = _rfc3339(request.before)
        spec["source"] = {"storage": {"bucket": request.bucket}, "latest": from_bucket}
        prefix = f"{request.schedule or 'bucket'}-latest"
    elif request.source == LATEST:
        if not request.schedule:
            raise UsageError("restore latest needs --schedule NAME")
        latest: dict[str, Any] = {"scheduleName": request.schedule}
        if request.before:
            latest["before"] = _rfc3339(request.before)
        if request.verified_only:
            latest["verifiedOnly"] = True
        spec["latest"] = latest
        prefix = f"{request.schedule}-latest"
    else:
        if request.schedule or request.before or request.verified_only:
            raise UsageError("--schedule, --before and --verified-only choose among a "
                             "schedule's Backups: use them with `restore latest`")
        spec["backupName"] = request.source
        prefix = f"{request.source}-restore"
    database: dict[str, Any] = {}
    for field_name, value in (("host", request.db_host), ("port", request.db_port),
                              ("user", request.db_user)):
        if value:
            database[field_name] = value
    if request.db_secret:
        database["passwordSecretRef"] = secret_key_ref(request.db_secret)
    if request.into:
        database.update(name=request.into, createDatabase=True)
    if request.owner:
        if not request.into:
            raise UsageError("--owner owns the database --into creates: add --into DATABASE")
        database["owner"] = request.owner
    if request.globals:
        database["globals"] = True
    if request.tables:
        database["tables"] = list(dict.fromkeys(request.tables))
    if request.schemas:
        database["schemas"] = list(dict.fromkeys(request.schemas))
    if request.data_only:
        # Rows into the existing tables: dropping them first (clean) does not apply.
        database.update(dataOnly=True, clean=False)
    if request.schema_only:
        database["schemaOnly"] = True
    components = list(dict.fromkeys(request.components))
    if database and not components:
        components = [c.COMPONENT_DATABASE]
    if database and c.COMPONENT_DATABASE not in components:
        raise UsageError("--into, --table, --schema, --data-only, --schema-only, --globals "
                         "and --db-* restore the database: add --component database")
    if components:
        spec["components"] = components
    if database:
        spec["database"] = database
    if request.quiesce:
        spec["quiesce"] = {"deployments": list(dict.fromkeys(request.quiesce))}
    # The same checks as the API server's schema and CEL rules, said before anything is sent.
    try:
        parse(models.RestoreSpec, spec, "spec")
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if request.data_only and request.schema_only:
        raise UsageError("--data-only and --schema-only exclude each other")
    return {"apiVersion": c.API_VERSION, "kind": c.KIND_RESTORE,
            "metadata": {"name": check_name(request.name or generated_name(prefix, now)),
                         "namespace": namespace},
            "spec": spec}


def _rfc3339(value: str) -> str:
    try:
        moment = parse_time(value)
    except ValueError as exc:
        raise UsageError(f"--before {value!r} is not an RFC 3339 time, e.g. "
                         "2026-03-14T09:00:00Z") from exc
    if moment is None or moment.tzinfo is None:
        raise UsageError(f"--before {value!r} needs a time zone, e.g. 2026-03-14T09:00:00Z")
    return value


# --- following a Backup or Restore ----------------------------------------------------------


def progress(kind: str, obj: Mapping[str, Any]) -> str:
    """One line on where it is: `restore/x Running: step restore`, `backup/y Succeeded`."""
    st = obj.get("status") or {}
    line = f"{kind}/{obj['metadata']['name']} {st.get('phase') or 'Pending'}"
    if st.get("currentStep") and st.get("phase") not in TERMINAL_PHASES:
        line += f": step {st['currentStep']}"
    elif st.get("message"):
        line += f": {st['message']}"
    return line


def outcome(kind: str, obj: Mapping[str, Any]) -> tuple[bool, str] | None:
    """None while it runs; then (succeeded, what to say). A Restore says what it restored."""
    st = obj.get("status") or {}
    if st.get("phase") not in TERMINAL_PHASES:
        return None
    line = progress(kind, obj)
    source = st.get("restoredFrom") or {}
    if source:
        line += f" (from {source.get('backupName') or source.get('manifestKey')})"
    return st["phase"] == "Succeeded", line


# --- logs -----------------------------------------------------------------------------------


def job_label(kind: str) -> str:
    """The label the operator puts on the Jobs of a Backup or Restore (jobs/manifests.py)."""
    return {"backup": c.LABEL_BACKUP, "restore": c.LABEL_RESTORE}[kind]


def jobs_in_order(obj: Mapping[str, Any], jobs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The Jobs to show logs of, oldest first (a Restore's restore, hook and verify Jobs):
    those labelled for it, and status.jobName even when the label list missed it."""
    names = [j["metadata"]["name"] for j in sorted(
        jobs, key=lambda j: (j["metadata"].get("creationTimestamp") or "",
                             j["metadata"]["name"]))]
    recorded = (obj.get("status") or {}).get("jobName")
    if recorded and recorded not in names:
        names.append(recorded)
    return names


def pods_in_order(pods: Sequence[Mapping[str, Any]]) -> list[str]:
    """A Job's pods, oldest first (a retried Job has one per attempt)."""
    return [p["metadata"]["name"] for p in sorted(
        pods, key=lambda p: (p["metadata"].get("creationTimestamp") or "",
                             p["metadata"]["name"]))]
