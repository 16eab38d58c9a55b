"""Prometheus metrics, derived from the objects themselves.

The operator keeps a small fact record per Backup, BackupSchedule and Restore it sees (fed by
watch events, dropped when the object is deleted) and computes the gauges at scrape time. So
the figures survive an operator restart (they come from status, not from memory), and a
deleted schedule leaves no stale series. Only the `_total` counters live in memory: they count
transitions this process saw, which is what a Prometheus counter is (resets are fine).

Names and labels are documented in docs/metrics.md; the alert rules in the Helm chart
(templates/prometheusrule.yaml) depend on them.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from timesheet_backup import constants as c
from timesheet_backup.schedule import cron
from timesheet_backup.status import TERMINAL_PHASES as TERMINAL
from timesheet_backup.status import parse_time

# How many upcoming runs the expected interval looks at: the largest gap among them, so a
# weekday-only schedule expects the weekend gap and does not page on Monday morning.
INTERVAL_LOOKAHEAD = 16

Key = tuple[str, str]  # (namespace, name)


def _ts(value: Any) -> float | None:
    parsed = parse_time(value) if isinstance(value, str) else None
    return parsed.timestamp() if parsed else None


@dataclass(frozen=True)
class BackupFacts:
    schedule: str  # "" for a one-off Backup
    components: tuple[str, ...]
    phase: str | None
    start: float | None
    completion: float | None
    sizes: Mapping[str, int]  # component -> bytes in the bucket
    suspicious: bool = False  # condition Suspicious=True (content alarms)


@dataclass(frozen=True)
class ScheduleFacts:
    created: float | None
    components: tuple[str, ...]
    expected_interval: float | None  # None when suspended or not computable
    verification_time: float | None
    verification_ok: bool | None


@dataclass(frozen=True)
class RestoreFacts:
    phase: str | None
    verification_of: str | None  # the schedule, for restore tests it creates
    completion: float | None


def backup_facts(body: Mapping[str, Any]) -> BackupFacts:
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    st = body.get("status") or {}
    labels = meta.get("labels") or {}
    done = st.get("components")
    components = tuple(done.split(",")) if isinstance(done, str) and done else tuple(
        spec.get("components") or c.COMPONENTS)
    sizes: dict[str, int] = {}
    for artifact in st.get("artifacts") or []:
        comp, size = artifact.get("component"), artifact.get("sizeBytes")
        if isinstance(comp, str) and isinstance(size, int):
            sizes[comp] = sizes.get(comp, 0) + size
    return BackupFacts(
        schedule=str(labels.get(c.LABEL_SCHEDULE) or st.get("schedule") or ""),
        components=components,
        phase=st.get("phase"),
        start=_ts(st.get("startTime")),
        completion=_ts(st.get("completionTime")),
        sizes=sizes,
        suspicious=any(cond.get("type") == "Suspicious" and cond.get("status") == "True"
                       for cond in st.get("conditions") or []),
    )


def expected_interval(expr: str, time_zone: str | None, now: datetime) -> float | None:
    """The longest gap between the schedule's next runs (seconds), or None if invalid."""
    try:
        cron.validate(expr, time_zone)
    except cron.CronError:
        return None
    runs = [cron.next_after(expr, now, time_zone)]
    for _ in range(INTERVAL_LOOKAHEAD):
        runs.append(cron.next_after(expr, runs[-1], time_zone))
    gaps = (b - a for a, b in itertools.pairwise(runs))
    return max(gaps, default=timedelta(0)).total_seconds() or None


def schedule_facts(body: Mapping[str, Any], now: datetime) -> ScheduleFacts:
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    st = body.get("status") or {}
    template = (spec.get("template") or {}).get("spec") or {}
    verification = st.get("lastVerification") or {}
    interval = None
    if not spec.get("suspend") and isinstance(spec.get("schedule"), str):
        interval = expected_interval(spec["schedule"], spec.get("timeZone"), now)
    result = verification.get("result")
    return ScheduleFacts(
        created=_ts(meta.get("creationTimestamp")),
        components=tuple(template.get("components") or c.COMPONENTS),
        expected_interval=interval,
        verification_time=_ts(verification.get("time")),
        verification_ok=None if result is None else result == "Succeeded",
    )


def restore_facts(body: Mapping[str, Any]) -> RestoreFacts:
    labels = (body.get("metadata") or {}).get("labels") or {}
    st = body.get("status") or {}
    verification_of = (labels.get(c.LABEL_SCHEDULE) if labels.get(c.LABEL_VERIFICATION)
                       else None)
    return RestoreFacts(phase=st.get("phase"), verification_of=verification_of,
                        completion=_ts(st.get("completionTime")))


@dataclass
class _Latest:
    """Per (namespace, schedule, component): the newest success and failure."""

    success: BackupFacts | None = None
    failure: float | None = None


def _newer(a: float | None, b: float | None) -> bool:
    return (a or 0.0) > (b or 0.0)


@dataclass
class Store:
    """What the operator knows of its objects, for the collector. Thread-safe: watch events
    arrive on kopf's event loop, scrapes on the HTTP server's thread."""

    backups: dict[Key, BackupFacts] = field(default_factory=dict)
    schedules: dict[Key, ScheduleFacts] = field(default_factory=dict)
    restores: dict[Key, RestoreFacts] = field(default_factory=dict)
    # (kind, namespace, schedule-or-"", result) -> count of transitions seen by this process
    counts: dict[tuple[str, str, str, str], int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _count(self, kind: str, namespace: str, schedule: str, old: str | None,
               new: str | None, seen_before: bool) -> None:
        # Only transitions this process watched happen count; objects listed at start-up
        # already finished before we looked and were counted by whoever saw them finish.
        if seen_before and new in TERMINAL and old != new:
            key = (kind, namespace, schedule, new)
            self.counts[key] = self.counts.get(key, 0) + 1

    def observe_backup(self, key: Key, body: Mapping[str, Any]) -> None:
        facts = backup_facts(body)
        with self.lock:
            old = self.backups.get(key)
            self._count("backup", key[0], facts.schedule, old.phase if old else None,
                        facts.phase, old is not None)
            self.backups[key] = facts

    def observe_restore(self, key: Key, body: Mapping[str, Any]) -> None:
        facts = restore_facts(body)
        with self.lock:
            old = self.restores.get(key)
            kind = "verification" if facts.verification_of else "restore"
            self._count(kind, key[0], facts.verification_of or "", old.phase if old else None,
                        facts.phase, old is not None)
            self.restores[key] = facts

    def observe_schedule(self, key: Key, body: Mapping[str, Any], now: datetime) -> None:
        facts = schedule_facts(body, now)
        with self.lock:
            self.schedules[key] = facts

    def observe(self, kind: str, key: Key, body: Mapping[str, Any], now: datetime) -> None:
        """Record an object's current state (a watch event that is not a deletion)."""
        if kind == c.KIND_BACKUP:
            self.observe_backup(key, body)
        elif kind == c.KIND_RESTORE:
            self.observe_restore(key, body)
        elif kind == c.KIND_SCHEDULE:
            self.observe_schedule(key, body, now)

    def forget(self, kind: str, key: Key) -> None:
        with self.lock:
            if kind == c.KIND_BACKUP:
                self.backups.pop(key, None)
            elif kind == c.KIND_RESTORE:
                self.restores.pop(key, None)
            elif kind == c.KIND_SCHEDULE and self.schedules.pop(key, None) is not None:
                # A deleted schedule leaves no series behind, counters included.
                for count_key in [k for k in self.counts if k[1:3] == key]:
                    del self.counts[count_key]

    def snapshot(self) -> Store:
        with self.lock:
            return Store(dict(self.backups), dict(self.schedules), dict(self.restores),
                         dict(self.counts))


SERIES_LABELS = ["namespace", "schedule", "component"]


def _latest_by_series(store: Store) -> dict[tuple[str, str, str], _Latest]:
    latest: dict[tuple[str, str, str], _Latest] = {}
    for (namespace, _), b in store.backups.items():
        if b.phase not in TERMINAL:
            continue
        for component in b.components:
            entry = latest.setdefault((namespace, b.schedule, component), _Latest())
            if b.phase == "Succeeded":
                if entry.success is None or _newer(b.completion, entry.success.completion):
                    entry.success = b
            elif _newer(b.completion, entry.failure):
                entry.failure = b.completion
    return latest


def collect(store: Store) -> Iterator[Metric]:
    """Every metric family, computed from a snapshot of the store."""
    last_success = GaugeMetricFamily(
        "tsb_backup_last_success_timestamp_seconds",
        "Completion time of the newest Succeeded Backup (schedule \"\" = one-off Backups).",
        labels=SERIES_LABELS)
    last_failure = GaugeMetricFamily(
        "tsb_backup_last_failure_timestamp_seconds",
        "Completion time of the newest Failed Backup still present.", labels=SERIES_LABELS)
    duration = GaugeMetricFamily(
        "tsb_backup_last_duration_seconds",
        "Run time (start to completion) of the newest Succeeded Backup.", labels=SERIES_LABELS)
    size = GaugeMetricFamily(
        "tsb_backup_last_size_bytes",
        "Bytes in the bucket for the component of the newest Succeeded Backup.",
        labels=SERIES_LABELS)
    for (namespace, schedule, component), entry in sorted(_latest_by_series(store).items()):
        labels = [namespace, schedule, component]
        if entry.success is not None:
            ok = entry.success
            if ok.completion is not None:
                last_success.add_metric(labels, ok.completion)
                if ok.start is not None:
                    duration.add_metric(labels, max(ok.completion - ok.start, 0.0))
            if component in ok.sizes:
                size.add_metric(labels, ok.sizes[component])
        if entry.failure is not None:
            last_failure.add_metric(labels, entry.failure)
    yield from (last_success, last_failure, duration, size)

    suspicious = GaugeMetricFamily(
        "tsb_backup_suspicious",
        "1 if the schedule's newest Succeeded Backup is Suspicious (its dump has no table, "
        "or its size or a table's rows shrank; content alarms), else 0.",
        labels=["namespace", "schedule"])
    newest: dict[tuple[str, str], BackupFacts] = {}
    for (namespace, _), b in store.backups.items():
        if b.phase == "Succeeded" and b.schedule:
            seen = newest.get((namespace, b.schedule))
            if seen is None or _newer(b.completion, seen.completion):
                newest[(namespace, b.schedule)] = b
    for (namespace, schedule), b in sorted(newest.items()):
        suspicious.add_metric([namespace, schedule], 1.0 if b.suspicious else 0.0)
    yield suspicious

    interval = GaugeMetricFamily(
        "tsb_backup_expected_interval_seconds",
        "Longest gap between a schedule's upcoming runs; absent while suspended.",
        labels=SERIES_LABELS)
    created = GaugeMetricFamily(
        "tsb_schedule_created_timestamp_seconds",
        "When the BackupSchedule was created (stands in for the last success before the "
        "first one).", labels=SERIES_LABELS)
    verified_at = GaugeMetricFamily(
        "tsb_verification_last_timestamp_seconds",
        "When the schedule's last restore test ended.", labels=["namespace", "schedule"])
    verified_ok = GaugeMetricFamily(
        "tsb_verification_last_succeeded",
        "1 if the schedule's last restore test succeeded, 0 if it failed.",
        labels=["namespace", "schedule"])
    for (namespace, name), s in sorted(store.schedules.items()):
        for component in s.components:
            labels = [namespace, name, component]
            if s.expected_interval is not None:
                interval.add_metric(labels, s.expected_interval)
            if s.created is not None:
                created.add_metric(labels, s.created)
        if s.verification_ok is not None:
            verified_ok.add_metric([namespace, name], 1.0 if s.verification_ok else 0.0)
            if s.verification_time is not None:
                verified_at.add_metric([namespace, name], s.verification_time)
    yield from (interval, created, verified_at, verified_ok)

    failed = GaugeMetricFamily(
        "tsb_restore_failed",
        "1 for each Restore (not a schedule's restore test) that ended Failed and still "
        "exists; delete it once handled.", labels=["namespace", "restore"])
    for (namespace, name), r in sorted(store.restores.items()):
        if r.phase == "Failed" and r.verification_of is None:
            failed.add_metric([namespace, name], 1.0)
    yield failed

    yield from _counters(store.counts)


def _counters(counts: Mapping[tuple[str, str, str, str], int]) -> Iterable[Metric]:
    families = {
        "backup": CounterMetricFamily(
            "tsb_backups", "Backups this operator saw finish, by result.",
            labels=["namespace", "schedule", "result"]),
        "restore": CounterMetricFamily(
            "tsb_restores", "Restores this operator saw finish, by result.",
            labels=["namespace", "result"]),
        "verification": CounterMetricFamily(
            "tsb_verifications", "Restore tests this operator saw finish, by result.",
            labels=["namespace", "schedule", "result"]),
    }
    for (kind, namespace, schedule, result), value in sorted(counts.items()):
        labels = [namespace, result] if kind == "restore" else [namespace, schedule, result]
        families[kind].add_metric(labels, value)
    return families.values()


class StoreCollector(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterable[Metric]:
        return list(collect(self.store.snapshot()))


STORE = Store()
