"""Which Backups of a schedule to keep (pure).

The rules follow restic's `forget` semantics, which platform engineers know:
- `keepLast n`: the n newest successful backups;
- `keepDaily/keepWeekly/keepMonthly n`: for each of the n newest days / ISO weeks / months
  (in the schedule's time zone) that have a successful backup, the newest one of it;
- `maxAge`: every successful backup younger than this;
- `keepFailed n`: the n newest failed backups (for inspection);
- always the newest successful backup, whatever the rules say, so pruning can never leave a
  schedule without a restorable backup;
- backups that have not finished are never touched.
A successful backup is pruned only when no rule keeps it. Without a retention policy nothing
is pruned.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from timesheet_backup.api.models import RetentionSpec
from timesheet_backup.api.validation import parse_duration

SUCCEEDED = "Succeeded"
FAILED = "Failed"


@dataclass(frozen=True)
class BackupRecord:
    """What retention needs to know of a Backup. `time` orders backups: the completion time
    when there is one, else the creation time."""

    name: str
    phase: str | None
    time: datetime


@dataclass
class Decision:
    name: str
    keep: bool
    reasons: list[str] = field(default_factory=list)


def _newest_per_bucket(
    records: Sequence[BackupRecord], count: int, bucket: Callable[[BackupRecord], Hashable]
) -> set[str]:
    """The newest record of each of the `count` newest buckets (records are newest first)."""
    kept: set[str] = set()
    seen: set[Hashable] = set()
    for record in records:
        key = bucket(record)
        if key in seen:
            continue
        if len(seen) == count:
            break
        seen.add(key)
        kept.add(record.name)
    return kept


def decide(
    backups: Iterable[BackupRecord],
    policy: RetentionSpec | None,
    now: datetime,
    time_zone: ZoneInfo,
) -> list[Decision]:
    """A decision for every backup, newest first, with the rules that keep it."""
    ordered = sorted(backups, key=lambda b: (b.time, b.name), reverse=True)
    decisions = {b.name: Decision(b.name, keep=False) for b in ordered}

    def keep(names: Iterable[str], reason: str) -> None:
        for name in names:
            decisions[name].keep = True
            decisions[name].reasons.append(reason)

    unfinished = [b.name for b in ordered if b.phase not in (SUCCEEDED, FAILED)]
    keep(unfinished, "not finished")
    if policy is None:
        keep((b.name for b in ordered if b.phase in (SUCCEEDED, FAILED)), "no retention policy")
        return [decisions[b.name] for b in ordered]

    good = [b for b in ordered if b.phase == SUCCEEDED]
    failed = [b for b in ordered if b.phase == FAILED]
    keep((b.name for b in good[:1]), "newest successful")
    if policy.keep_last:
        keep((b.name for b in good[: policy.keep_last]), f"keepLast {policy.keep_last}")
    if policy.max_age:
        limit = now - timedelta(seconds=parse_duration(policy.max_age))
        keep((b.name for b in good if b.time >= limit), f"younger than {policy.max_age}")

    def local(b: BackupRecord) -> datetime:
        return b.time.astimezone(time_zone)

    if policy.keep_daily:
        keep(_newest_per_bucket(good, policy.keep_daily, lambda b: local(b).date()),
             f"keepDaily {policy.keep_daily}")
    if policy.keep_weekly:
        keep(_newest_per_bucket(good, policy.keep_weekly,
                                lambda b: local(b).isocalendar()[:2]),
             f"keepWeekly {policy.keep_weekly}")
    if policy.keep_monthly:
        keep(_newest_per_bucket(good, policy.keep_monthly,
                                lambda b: (local(b).year, local(b).month)),
             f"keepMonthly {policy.keep_monthly}")
    keep((b.name for b in failed[: policy.keep_failed]), f"keepFailed {policy.keep_failed}")
    return [decisions[b.name] for b in ordered]


def to_prune(
    backups: Iterable[BackupRecord],
    policy: RetentionSpec | None,
    now: datetime,
    time_zone: ZoneInfo,
) -> list[str]:
    """Names of the backups no rule keeps, oldest first (so an interrupted prune has removed
    the least valuable ones)."""
    return [d.name for d in reversed(decide(backups, policy, now, time_zone)) if not d.keep]
