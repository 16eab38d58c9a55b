"""What a BackupSchedule decides (pure): the Backup of a run, the Restore of a restore test,
which Backups a restore test proved restorable, which Backups retention prunes and why, and
each tick's run, restore test and conditions -- all from what handlers/schedules.py observed,
with `now` passed in."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from timesheet_backup import constants as c
from timesheet_backup.api import models
from timesheet_backup.api.defaults import Defaults
from timesheet_backup.api.fields import SpecError, dump, parse
from timesheet_backup.api.resolve import ResolveError, resolve_backup
from timesheet_backup.decisions import content
from timesheet_backup.decisions.backups import database_target
from timesheet_backup.jobs.pod import owner_reference
from timesheet_backup.schedule import planner, retention
from timesheet_backup.status import (
    TERMINAL_PHASES,
    condition,
    merge_conditions,
    parse_time,
    timestamp,
)

# Argo CD's tracking label (its default `application.instanceLabelKey`) and annotations. A
# Backup created by a schedule must not carry them (e.g. copied into the template from a
# chart's common labels): Argo CD would count it as part of the app, report it as extraneous
# and, with auto-prune, delete it -- and through its deletion policy its objects in the bucket.
ARGOCD_INSTANCE_LABEL = "app.kubernetes.io/instance"
ARGOCD_ANNOTATION_PREFIX = "argocd.argoproj.io/"


def _labels(schedule: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {**(extra or {}), c.LABEL_MANAGED_BY: c.MANAGED_BY, c.LABEL_SCHEDULE: schedule}


def untracked_metadata(labels: Mapping[str, str] | None,
                       annotations: Mapping[str, str] | None
                       ) -> tuple[dict[str, str], dict[str, str]]:
    """Template labels and annotations without Argo CD's tracking keys."""
    return ({k: v for k, v in (labels or {}).items() if k != ARGOCD_INSTANCE_LABEL},
            {k: v for k, v in (annotations or {}).items()
             if not k.startswith(ARGOCD_ANNOTATION_PREFIX)})


def backup_body(schedule: Mapping[str, Any], spec: models.BackupScheduleSpec,
                name: str) -> dict[str, Any]:
    meta = schedule["metadata"]
    template = spec.template
    tmeta = template.metadata or models.TemplateMetadata()
    labels, annotations = untracked_metadata(tmeta.labels, tmeta.annotations)
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": meta["namespace"],
        "labels": _labels(meta["name"], labels),
    }
    if annotations:
        metadata["annotations"] = annotations
    if spec.backup_owner_reference == "schedule":
        ref = owner_reference(schedule)
        ref["controller"] = False
        metadata["ownerReferences"] = [ref]
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND_BACKUP,
        "metadata": metadata,
        "spec": copy.deepcopy((schedule.get("spec") or {}).get("template", {}).get("spec", {})),
    }


# A file takes whole blocks on the node's disk: a 1-byte receipt uses 4 KiB.
BLOCK_BYTES = 4096
MIB = 1 << 20


def uploads_scratch_limit(backup: Mapping[str, Any]) -> str | None:
    """The default sizeLimit of a restore test's uploads emptyDir: the backup's regular
    files (contentBytes) with a block of slack per file (fileCount), a quarter more for
    directories and metadata, at least 64 MiB; in MiB. None when the Backup's status does
    not record them (taken before agents did): then no limit, as before."""
    for artifact in (backup.get("status") or {}).get("artifacts") or []:
        if artifact.get("component") != "uploads":
            continue
        content, files = artifact.get("contentBytes"), artifact.get("fileCount")
        if not isinstance(content, int) or not isinstance(files, int):
            return None
        need = (content + files * BLOCK_BYTES) * 5 // 4
        return f"{max(64, -(-need // MIB))}Mi"  # MiB rounded up
    return None


def verification_body(schedule: Mapping[str, Any], verification: models.VerificationSpec,
                      backup: Mapping[str, Any], run_at_name: str) -> dict[str, Any]:
    """The Restore of a restore test: `backup` into a scratch database, checked, dropped.
    The decryption key goes along: an encrypted backup cannot be tested without it."""
    meta = schedule["metadata"]
    resolved_db = ((backup.get("status") or {}).get("resolved") or {}).get("database") or {}
    scratch = verification.database or f"{resolved_db.get('name', 'timesheet')}_verify"[:63]
    backed_up = ((backup.get("status") or {}).get("components") or "").split(",")
    # The uploads too when the backup has them: into a throwaway emptyDir, checked against
    # the manifest (archive sha256, file count, bytes) by the agent.
    components = ["database", *(["uploads"] if "uploads" in backed_up else [])]
    spec: dict[str, Any] = {
        "backupName": backup["metadata"]["name"],
        "components": components,
        "database": {"name": scratch, "createDatabase": True, "clean": True,
                     "dropAfter": True},
        # The restored tables' rows against the counts taken in the dump's snapshot.
        "verify": {"sqlChecks": list(verification.checks), "rowCounts": True},
        # A scratch target is not in place: nothing to fall back to, and a restore test
        # must not leave Backups behind (whatever it restores, now or later).
        "safetyBackup": {"enabled": False},
    }
    if "uploads" in components:
        limit = verification.uploads_size_limit or uploads_scratch_limit(backup)
        spec["uploads"] = {"scratch": {"sizeLimit": limit} if limit else {}}
    if verification.decryption:
        spec["decryption"] = dump(verification.decryption)
    # The restore test's Jobs run where the backups' do: the same pull secrets, proxies and
    # identity, unless the verification names its own.
    template_job = (((schedule.get("spec") or {}).get("template") or {}).get("spec")
                    or {}).get("job")
    job = dump(verification.job) if verification.job else template_job
    if job:
        spec["job"] = copy.deepcopy(job)
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND_RESTORE,
        "metadata": {
            "name": run_at_name,
            "namespace": meta["namespace"],
            "labels": {**_labels(meta["name"]), c.LABEL_VERIFICATION: "true"},
            "ownerReferences": [owner_reference(schedule)],
        },
        "spec": spec,
    }


# --- restore tests as proof ---------------------------------------------------------------


def time_of(backup: Mapping[str, Any]) -> Any:
    """What orders a schedule's Backups: completion time, else creation time."""
    st = backup.get("status") or {}
    return (parse_time(st.get("completionTime"))
            or parse_time(backup["metadata"].get("creationTimestamp")))


def is_verified(backup: Mapping[str, Any]) -> bool:
    """A Backup that passed a restore test (see `verification_marks`)."""
    st = backup.get("status") or {}
    return st.get("phase") == "Succeeded" and \
        bool((st.get("verification") or {}).get("verifiedTime"))


def verification_runs(restores: Sequence[Mapping[str, Any]],
                      schedule: str) -> list[Mapping[str, Any]]:
    """The schedule's restore-test Restores among a namespace's, oldest first."""
    def ours(restore: Mapping[str, Any]) -> bool:
        labels = restore["metadata"].get("labels") or {}
        return labels.get(c.LABEL_SCHEDULE) == schedule and \
            labels.get(c.LABEL_VERIFICATION) == "true"

    return sorted(filter(ours, restores),
                  key=lambda r: r["metadata"].get("creationTimestamp") or "")


def verification_marks(runs: Sequence[Mapping[str, Any]],
                       backups: Sequence[Mapping[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """The durable record of restore tests on the Backups they tested: for each Backup, the
    newest finished restore-test Restore (`runs`) not yet recorded in its
    `status.verification`, as (Backup name, status patch). The Restores themselves are pruned
    to a few, so the Backup carries the proof that retention's keepVerified reads.
    `verifiedTime` is the last pass; a later failure is recorded but keeps it."""
    by_name = {b["metadata"]["name"]: b for b in backups
               if not b["metadata"].get("deletionTimestamp")}
    newest: dict[str, Mapping[str, Any]] = {}
    for run in runs:
        rst = run.get("status") or {}
        target = str((run.get("spec") or {}).get("backupName") or "")
        if rst.get("phase") not in TERMINAL_PHASES or not rst.get("completionTime") \
                or target not in by_name:
            continue
        key = (parse_time(rst["completionTime"]), run["metadata"]["name"])
        held = newest.get(target)
        if held is None or key > (parse_time(held["status"]["completionTime"]),
                                  held["metadata"]["name"]):
            newest[target] = run
    marks = []
    for target, run in sorted(newest.items()):
        rst = run["status"]
        recorded = (by_name[target].get("status") or {}).get("verification") or {}
        if recorded.get("restore") == run["metadata"]["name"] and \
                recorded.get("time") == rst["completionTime"]:
            continue  # already recorded
        recorded_at, ended = parse_time(recorded.get("time")), parse_time(rst["completionTime"])
        if recorded_at is not None and ended is not None and recorded_at > ended:
            continue  # a newer test (whose Restore is gone) is recorded already
        passed = rst["phase"] == "Succeeded"
        record = {
            "restore": run["metadata"]["name"],
            "time": rst["completionTime"],
            "result": rst["phase"],
            "message": (rst.get("message") or "")[:1024],
            "verifiedTime": rst["completionTime"] if passed else recorded.get("verifiedTime"),
        }
        marks.append((target, {"verification": record}))
    return marks


# --- retention ----------------------------------------------------------------------------


READ_BY_RESTORE = "read by a running Restore"
# Backups one retention pass deletes at most (per schedule, per tick). Each costs about two
# API writes (a PATCH releasing its finalizer, when it has one, and the DELETE) and a
# listing of its directory; the bound keeps one schedule's pass from holding the operator's
# API budget (API priority and fairness answered 429 to ~3,000 of the per-Backup requests
# of a 5,000-Backup prune, docs/benchmarks.md) and its thread for long. 1,000: the pass's
# manifests fit in one DeleteObjects request, and a 5,000 backlog goes in five ticks (the
# tick, TICK_SECONDS, then bounds the rate: the lead's benchmark tells whether to raise it).
PRUNE_BATCH = 1000
# Backups one pass releases and deletes at a time: the API server admits a few requests of a
# client at once (priority and fairness), and one after the other most of a pass was waiting
# on round trips (about 7 ms each on the benchmark's node).
PRUNE_WORKERS = 4
# How long a tick goes on with the next pass while a backlog remains (instead of leaving it
# to the next tick, TICK_SECONDS later): long enough for a 5,000 backlog on the benchmark's
# node, short enough that one schedule does not hold its worker for long.
BACKLOG_SECONDS = 30.0


def another_pass(decided: RetentionPass, clean: bool, elapsed: float) -> bool:
    """Whether the tick goes on pruning: a backlog remains (`deferred`), the last pass
    deleted everything it chose (a failure or a change waits for the next tick, not for a
    tight loop), and the tick has not spent BACKLOG_SECONDS on it."""
    return decided.deferred > 0 and clean and elapsed < BACKLOG_SECONDS


def locked_until(backup: Mapping[str, Any]) -> datetime | None:
    """Until when the Backup's objects are under Object Lock (status.lockedUntil)."""
    return parse_time((backup.get("status") or {}).get("lockedUntil"))


def lock_reason(until: datetime) -> str:
    return f"locked until {timestamp(until)}"


@dataclass
class RetentionPass:
    """What one retention pass does: delete `prune` (oldest first), post `event` (when
    anything is pruned) and write `status` as the schedule's `status.retention`."""

    prune: list[str] = field(default_factory=list)
    event: str | None = None
    status: dict[str, Any] | None = None
    deferred: int = 0  # pruned by retention but left to the next passes (PRUNE_BATCH)


def backup_records(backups: Sequence[Mapping[str, Any]]) -> list[retention.BackupRecord]:
    """Retention's view of the schedule's Backups (those being deleted are gone already)."""
    return [retention.BackupRecord(b["metadata"]["name"],
                                   (b.get("status") or {}).get("phase"), time_of(b),
                                   verified=is_verified(b),
                                   suspicious=content.is_suspicious(b))
            for b in backups if not b["metadata"].get("deletionTimestamp")]


def _entries(decisions: Sequence[retention.Decision]) -> list[dict[str, str]]:
    return [{"name": d.name, "reason": ", ".join(d.reasons)[:1024]}
            for d in decisions[:models.RETENTION_STATUS_ITEMS]]


def retention_pass(schedule: str, backups: Sequence[Mapping[str, Any]],
                   restores: Sequence[Mapping[str, Any]], policy: models.RetentionSpec | None,
                   now: datetime, zone: ZoneInfo,
                   next_run: datetime | None) -> RetentionPass:
    """Which Backups to prune now, and the explanation: every kept Backup with the rules that
    keep it, every pruned one with why no rule does, and a preview of what the pass after the
    next run (`next_run`, assumed to succeed, unverified) would prune.

    A Backup that a running Restore reads (a restore test, or a restore of the app) is kept
    whatever the policy: deleting it would delete the objects under the Restore's feet. So
    is a Backup whose objects are under Object Lock (`status.lockedUntil` after `now`): the
    store would refuse to delete them, so it is kept ("locked until ...") and pruned by the
    first pass after the date that no rule keeps it."""
    if policy is None:
        return RetentionPass()
    reading = {(r.get("spec") or {}).get("backupName") for r in restores
               if (r.get("status") or {}).get("phase") not in TERMINAL_PHASES}
    locks = {b["metadata"]["name"]: until for b in backups
             if (until := locked_until(b)) is not None}
    records = backup_records(backups)
    decisions = retention.decide(records, policy, now, zone)

    def hold(d: retention.Decision, reason: str) -> None:
        d.reasons = d.reasons if d.keep else []
        d.keep = True
        d.reasons.append(reason)

    for d in decisions:
        if d.name in reading:
            hold(d, READ_BY_RESTORE)
        if d.name in locks and locks[d.name] > now:
            hold(d, lock_reason(locks[d.name]))
    kept = [d for d in decisions if d.keep]
    pruned = [d for d in reversed(decisions) if not d.keep]  # oldest first
    # A backlog (a policy tightened over thousands of Backups) goes in bounded passes, the
    # oldest first, so one schedule's pass never holds the operator's API budget for long.
    deferred = len(pruned) - PRUNE_BATCH
    pruned = pruned[:PRUNE_BATCH]
    # Empty lists, not None: the status is written as a merge patch, where a list replaces
    # the previous one and an absent key would leave it as it was.
    status: dict[str, Any] = {"kept": _entries(kept), "nextPruned": []}
    result = RetentionPass(prune=[d.name for d in pruned], status=status)
    if pruned:
        status["lastPruneTime"] = timestamp(now)
        status["pruned"] = _entries(pruned)
        shown = "; ".join(f"{d.name} ({', '.join(d.reasons)})" for d in pruned[:10])
        result.event = (f"retention deleted {len(pruned)} Backup(s): {shown}"
                        + (" ..." if len(pruned) > 10 else ""))
        if deferred > 0:
            result.deferred = deferred
            result.event += f"; {deferred} more in the next passes"
    if next_run is not None:
        gone = set(result.prune)
        survivors = [r for r in records if r.name not in gone]
        upcoming = retention.BackupRecord(planner.backup_name(schedule, next_run),
                                          retention.SUCCEEDED, next_run)
        preview = [d for d in reversed(retention.decide([*survivors, upcoming], policy,
                                                        next_run, zone))
                   if not d.keep and d.name not in reading
                   and not (d.name in locks and locks[d.name] > next_run)]
        status["nextPruned"] = _entries(preview)
    return result


@dataclass(frozen=True)
class PruneTarget:
    """How one pruned Backup goes: `storage` and `manifest_key` of the objects the schedule
    deletes first (None: nothing in the bucket, or deletionPolicy Retain), `all_versions`
    (Object Lock, after the date: every version), `finalizer` (it carries the operator's
    finalizer, which the schedule releases itself: its objects are gone already)."""

    name: str
    storage: models.StorageSpec | None
    manifest_key: str | None
    all_versions: bool
    finalizer: bool
    resource_version: str | None


def prune_targets(backups: Sequence[Mapping[str, Any]], names: Sequence[str]
                  ) -> list[PruneTarget]:
    """What pruning `names` takes, Backup by Backup (the same choices as a Backup's own
    deletion: decisions/backups.py `cleanup`; a locked Backup is never among `names`)."""
    by_name = {b["metadata"]["name"]: b for b in backups}
    targets = []
    for name in names:
        body = by_name[name]
        st = body.get("status") or {}
        storage, key = None, None
        if st.get("resolved") and st.get("manifestKey"):
            spec = parse(models.BackupSpec, st["resolved"], "status.resolved")
            if spec.deletion_policy != "Retain" and spec.storage is not None:
                storage, key = spec.storage, st["manifestKey"]
        targets.append(PruneTarget(
            name, storage, key, all_versions=locked_until(body) is not None,
            finalizer=c.FINALIZER in (body["metadata"].get("finalizers") or []),
            resource_version=body["metadata"].get("resourceVersion")))
    return targets


def bucket_groups(targets: Sequence[PruneTarget]) -> list[list[PruneTarget]]:
    """The targets with objects, grouped by bucket and delete credentials (one client and
    batched DeleteObjects per group), in the targets' order."""
    groups: dict[str, list[PruneTarget]] = {}
    for t in targets:
        if t.storage is not None and t.manifest_key is not None:
            groups.setdefault(repr(dump(t.storage)), []).append(t)
    return list(groups.values())


def prune_report(decided: RetentionPass, failed: Mapping[str, str],
                 changed: Sequence[str] = ()) -> tuple[Literal["Normal", "Warning"], str] | None:
    """The one Event of a pass, and the status of the pass with the Backups that could not
    be pruned (`failed`: name -> why; they stay and the next pass tries again): each
    `status.retention.pruned` entry of a failed one says so (bounded like the others).
    `changed`: Backups that changed (or went) between the LIST and the release, their
    objects deleted: no failure, the next pass takes them (or finds them gone)."""
    if not decided.prune:
        return None
    if changed:
        decided = RetentionPass(prune=[n for n in decided.prune if n not in set(changed)],
                                event=decided.event, status=decided.status,
                                deferred=decided.deferred + len(changed))
        if not decided.prune:
            return None
        if not failed:
            return "Normal", (f"retention deleted {len(decided.prune)} Backup(s); "
                              f"{decided.deferred} more in the next passes")
    if decided.status is not None:
        for entry in decided.status.get("pruned") or []:
            if entry["name"] in failed:
                entry["reason"] = f"not deleted, retried next pass: {failed[entry['name']]}"[
                    :1024]
    if not failed:
        assert decided.event is not None
        return "Normal", decided.event
    done = len(decided.prune) - len(failed)
    shown = "; ".join(f"{name} ({why})" for name, why in list(failed.items())[:5])
    message = (f"retention deleted {done} of {len(decided.prune)} Backup(s); "
               f"{len(failed)} could not be deleted and stay: {shown}"
               + (" ..." if len(failed) > 5 else ""))
    if decided.deferred:
        message += f"; {decided.deferred} more in the next passes"
    return "Warning", message[:1024]


# --- the tick -----------------------------------------------------------------------------


KEEP_VERIFICATIONS = 3
CANNOT_CREATE = "cannot create a Backup"


def active(backups: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The schedule's Backups still at work (not finished, not being deleted)."""
    return [b for b in backups if (b.get("status") or {}).get("phase") not in
            ("Succeeded", "Failed") and not b["metadata"].get("deletionTimestamp")]


@dataclass
class Run:
    """The run this tick: `skipped` says why a due run is not created; else `name` is the
    Backup to create (None: none due), after deleting `replace` (concurrencyPolicy Replace),
    unless a Restore runs against `database_target`."""

    next_schedule_time: str | None = None
    last_schedule_time: str | None = None
    skipped: str | None = None
    name: str | None = None
    replace: list[str] = field(default_factory=list)
    database_target: str | None = None


def due_run(schedule: Mapping[str, Any], spec: models.BackupScheduleSpec,
            backups: Sequence[Mapping[str, Any]], defaults: Defaults, now: datetime) -> Run:
    """Plan the run (cron, catch-up, startingDeadlineSeconds, runOnCreate, suspend), then
    apply concurrencyPolicy and resolve the template to find its database."""
    meta = schedule["metadata"]
    st = schedule.get("status") or {}
    plan = planner.plan(spec.schedule, spec.time_zone, now,
                        parse_time(meta.get("creationTimestamp")) or now,
                        parse_time(st.get("lastScheduleTime")), spec.starting_deadline_seconds,
                        spec.run_on_create, spec.suspend)
    run = Run(next_schedule_time=timestamp(plan.next_time) if plan.next_time else None,
              last_schedule_time=(timestamp(plan.record_time)
                                  if plan.record_time is not None else None))
    if plan.skipped:
        run.skipped = plan.skipped
        return run
    if plan.run_at is None:
        return run
    running = active(backups)
    if running and spec.concurrency_policy == "Forbid":
        run.skipped = (f"skipped a run: Backup {running[0]['metadata']['name']} is still "
                       "running (concurrencyPolicy Forbid)")
        return run
    try:
        resolved = resolve_backup(dump(spec.template.spec) if spec.template.spec else {},
                                  defaults)
    except (ResolveError, SpecError) as exc:
        run.skipped = f"{CANNOT_CREATE}: {exc}"
        return run
    run.database_target = database_target(dump(resolved.database)) \
        if "database" in resolved.components else None
    run.name = planner.backup_name(meta["name"], plan.run_at)
    if running and spec.concurrency_policy == "Replace":
        run.replace = [b["metadata"]["name"] for b in running]
    return run


def blocked(restore: str) -> str:
    return f"skipped a run: Restore {restore} of the same database is running"


def last_run_condition(backups: Sequence[Mapping[str, Any]],
                       conditions: list[dict[str, Any]] | None, create_error: str | None,
                       clock: datetime, generation: int | None) -> dict[str, Any]:
    """The schedule's `Failed` condition: True while its last run failed -- the newest
    finished Backup failed, or no Backup could be created -- until a Backup that finished
    after the failure succeeds. (A failed Backup pruned by retention, `keepFailed: 0`, so
    does not clear it: only a later success does.)"""
    previous = next((x for x in conditions or [] if x.get("type") == "Failed"), None)
    if create_error:
        return condition("Failed", "True", "BackupNotCreated", create_error, clock, generation)
    finished = [b for b in backups
                if (b.get("status") or {}).get("phase") in TERMINAL_PHASES]
    if not finished:
        return {**previous, "observedGeneration": generation} if previous else condition(
            "Failed", "False", "NoRunYet", "no Backup has finished yet", clock, generation)
    newest = max(finished, key=lambda b: (time_of(b), b["metadata"]["name"]))
    name, st = newest["metadata"]["name"], newest["status"]
    if st["phase"] == "Failed":
        return condition("Failed", "True", "BackupFailed",
                         f"Backup {name} failed: {st.get('message') or 'no message'}",
                         clock, generation)
    failed_since = parse_time(previous.get("lastTransitionTime")) \
        if previous and previous.get("status") == "True" else None
    if previous and failed_since and time_of(newest) < failed_since:
        return {**previous, "observedGeneration": generation}
    return condition("Failed", "False", "BackupSucceeded", f"Backup {name} succeeded", clock,
                     generation)


@dataclass(frozen=True)
class Finished:
    """A restore test that finished since the last tick: the result for
    `status.lastVerification`, and the Event that says it."""

    result: models.VerificationResult
    event_type: Literal["Normal", "Warning"]
    reason: str
    message: str


def finished_verification(runs: Sequence[Mapping[str, Any]],
                          last: Mapping[str, Any] | None) -> Finished | None:
    """The newest restore test, when it finished and is not yet `last` (lastVerification)."""
    if not runs:
        return None
    newest = runs[-1]
    rst = newest.get("status") or {}
    if rst.get("phase") not in TERMINAL_PHASES or \
            (last or {}).get("time") == rst.get("completionTime"):
        return None
    result = models.VerificationResult(
        # completionTime is written with a terminal phase (status.transition)
        time=rst.get("completionTime"),  # type: ignore[arg-type]
        result=rst["phase"],
        message=rst.get("message") or "",
        backup_name=(newest.get("spec") or {}).get("backupName"))
    return Finished(result, "Normal" if rst["phase"] == "Succeeded" else "Warning",
                    f"Verification{rst['phase']}",
                    f"restore test of {result.backup_name}: {result.message}")


def old_verifications(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The restore-test Restores to delete: all but the newest KEEP_VERIFICATIONS."""
    return [r["metadata"]["name"] for r in runs[:-KEEP_VERIFICATIONS]]


@dataclass(frozen=True)
class NextTest:
    """The restore test this tick: `record_time` for lastVerificationScheduleTime; `create`
    (a Restore body) to start one, or `failed` to record that none could start."""

    record_time: str | None = None
    create: dict[str, Any] | None = None
    failed: models.VerificationResult | None = None


def next_verification(schedule: Mapping[str, Any], spec: models.BackupScheduleSpec,
                      runs: Sequence[Mapping[str, Any]], backups: Sequence[Mapping[str, Any]],
                      now: datetime) -> NextTest:
    """Start a restore test when due, one at a time, of the newest successful database
    backup."""
    verification = spec.verification
    if verification is None:
        return NextTest()
    meta = schedule["metadata"]
    plan = planner.plan(verification.schedule, spec.time_zone, now,
                        parse_time(meta.get("creationTimestamp")) or now,
                        parse_time((schedule.get("status") or {})
                                   .get("lastVerificationScheduleTime")))
    record = timestamp(plan.record_time) if plan.record_time is not None else None
    if plan.run_at is None or \
            any((r.get("status") or {}).get("phase") not in TERMINAL_PHASES for r in runs):
        return NextTest(record)
    good = [b for b in backups if (b.get("status") or {}).get("phase") == "Succeeded"
            and "database" in ((b.get("status") or {}).get("components") or "").split(",")]
    if not good:
        return NextTest(record, failed=models.VerificationResult(
            time=timestamp(now), result="Failed",
            message="no successful database backup to verify"))
    name = planner.backup_name(f"{meta['name']}-verify", plan.run_at)
    return NextTest(record, create=verification_body(schedule, verification,
                                                     max(good, key=time_of), name))


def ready_condition(spec: models.BackupScheduleSpec, next_time: str | None, now: datetime,
                    generation: int | None) -> dict[str, Any]:
    if spec.suspend:
        return condition("Ready", "True", "Suspended", "suspended: no new Backups", now,
                         generation)
    return condition("Ready", "True", "Scheduled", f"next run {next_time}", now, generation)


def summary(fields: models.BackupScheduleStatus, spec: models.BackupScheduleSpec,
            backups: Sequence[Mapping[str, Any]], previous: Mapping[str, Any],
            skipped: str | None, now: datetime) -> None:
    """Complete the tick's status (`fields`): last success, active Backups, conditions and
    the skipped run's message."""
    generation = fields.observed_generation
    succeeded = [b for b in backups if (b.get("status") or {}).get("phase") == "Succeeded"]
    if succeeded:
        fields.last_successful_time = timestamp(max(time_of(b) for b in succeeded))
    fields.active = [models.ActiveRef(name=b["metadata"]["name"]) for b in active(backups)] \
        or None
    ready = ready_condition(spec, fields.next_schedule_time, now, generation)
    create_error = skipped if skipped and skipped.startswith(CANNOT_CREATE) else None
    failed = last_run_condition(backups, previous.get("conditions"), create_error, now,
                                generation)
    fields.conditions = typed_conditions(merge_conditions(previous.get("conditions"),
                                                          [ready, failed]))
    fields.message = skipped


def invalid(fields: models.BackupScheduleStatus, previous: Mapping[str, Any], error: str,
            now: datetime) -> bool:
    """A schedule that cannot run (bad spec or cron): Ready False with the error; returns
    whether to post the Warning Event (once, when the message changes)."""
    ready = condition("Ready", "False", "InvalidSchedule", error, now,
                      fields.observed_generation)
    fields.message = error
    fields.conditions = typed_conditions(merge_conditions(previous.get("conditions"), [ready]))
    return previous.get("message") != error


def typed_conditions(items: Sequence[Mapping[str, Any]]) -> list[models.Condition]:
    """Conditions as status.condition()/merge_conditions() shape them, typed for the status."""
    return [parse(models.Condition, item, "status.conditions") for item in items]
