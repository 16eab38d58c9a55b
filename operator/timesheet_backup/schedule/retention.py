"""Which Backups of a schedule to keep (pure).

The rules follow restic's `forget` semantics, which platform engineers know:
- `keepLast n`: the n newest successful backups;
- `keepDaily/keepWeekly/keepMonthly n`: for each of the n newest days / ISO weeks / months
  (in the schedule's time zone) that have a successful backup, the newest one of it;
- `maxAge`: every successful backup younger than this;
- `keepVerified n`: the n newest successful backups that passed a restore test and are not
  Suspicious (content alarms);
- `keepFailed n`: the n newest failed backups (for inspection);
- always the newest successful backup, whatever the rules say, so pruning can never leave a
  schedule without a restorable backup;
- always the newest verified backup, whatever the rules say, so pruning can never remove the
  last backup known to restore (a newer one may be broken in a way only a restore shows);
- backups that have not finished are never touched.
A successful backup is pruned only when no rule keeps it. Without a retention policy nothing
is pruned.

"Newest" orders by `time`, then by name: two backups with the same time are told apart by
their names (a schedule's run names sort by run time), so the outcome never depends on the
order the API server listed them in.
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

NOT_FINISHED = "not finished"
NO_POLICY = "no retention policy"
NEWEST_SUCCESSFUL = "newest successful"
NEWEST_VERIFIED = "newest verified"


@dataclass(frozen=True)
class BackupRecord:
    """What retention needs to know of a Backup. `time` orders backups: the completion time
    when there is one, else the creation time. `verified`: it passed a restore test.
    `suspicious`: its contents alarmed (decisions/content.py); it is never counted as
    verified, so a dump of an emptied table cannot be the proof that protects others."""

    name: str
    phase: str | None
    time: datetime
    verified: bool = False
    suspicious: bool = False


@dataclass
class Decision:
    """Whether a backup stays. `reasons`: the rules that keep it, or, when it is pruned, why
    each rule of the policy passed it over."""

    name: str
    keep: bool
    reasons: list[str] = field(default_factory=list)

    def explain(self) -> str:
        return f"{'kept' if self.keep else 'pruned'}: {', '.join(self.reasons)}"


def _newest_per_bucket(
    records: Sequence[BackupRecord], count: int, bucket: Callable[[BackupRecord], Hashable]
) -> tuple[set[str], set[Hashable]]:
    """The newest record of each of the `count` newest buckets (records are newest first),
    and those buckets."""
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
    return kept, seen


def decide(
    backups: Iterable[BackupRecord],
    policy: RetentionSpec | None,
    now: datetime,
    time_zone: ZoneInfo,
) -> list[Decision]:
    """A decision for every backup, newest first, with the rules that keep it (or, for a
    pruned one, why no rule does)."""
    ordered = sorted(backups, key=lambda b: (b.time, b.name), reverse=True)
    decisions = {b.name: Decision(b.name, keep=False) for b in ordered}
    passed_over: dict[str, list[str]] = {b.name: [] for b in ordered}

    def keep(names: Iterable[str], reason: str) -> None:
        for name in names:
            decisions[name].keep = True
            decisions[name].reasons.append(reason)

    def rule(kept: set[str], reason: str, candidates: Sequence[BackupRecord],
             why_not: Callable[[BackupRecord], str]) -> None:
        keep((b.name for b in candidates if b.name in kept), reason)
        for b in candidates:
            if b.name not in kept:
                passed_over[b.name].append(why_not(b))

    unfinished = [b.name for b in ordered if b.phase not in (SUCCEEDED, FAILED)]
    keep(unfinished, NOT_FINISHED)
    if policy is None:
        keep((b.name for b in ordered if b.phase in (SUCCEEDED, FAILED)), NO_POLICY)
        return [decisions[b.name] for b in ordered]

    good = [b for b in ordered if b.phase == SUCCEEDED]
    failed = [b for b in ordered if b.phase == FAILED]
    verified = [b for b in good if b.verified and not b.suspicious]
    keep((b.name for b in good[:1]), NEWEST_SUCCESSFUL)
    keep((b.name for b in verified[:1]), NEWEST_VERIFIED)
    if policy.keep_last:
        n = policy.keep_last
        rule({b.name for b in good[:n]}, f"keepLast {n}", good,
             lambda _: f"not among the {n} newest (keepLast)")
    if policy.max_age:
        limit = now - timedelta(seconds=parse_duration(policy.max_age))
        age = policy.max_age
        rule({b.name for b in good if b.time >= limit}, f"younger than {age}", good,
             lambda _: f"older than {age} (maxAge)")

    def local(b: BackupRecord) -> datetime:
        return b.time.astimezone(time_zone)

    periods: list[tuple[int | None, str, str, Callable[[BackupRecord], Hashable]]] = [
        (policy.keep_daily, "keepDaily", "day", lambda b: local(b).date()),
        (policy.keep_weekly, "keepWeekly", "week", lambda b: local(b).isocalendar()[:2]),
        (policy.keep_monthly, "keepMonthly", "month", lambda b: (local(b).year, local(b).month)),
    ]
    for count, name, unit, bucket in periods:
        if not count:
            continue
        kept, buckets = _newest_per_bucket(good, count, bucket)

        def why_not(b: BackupRecord, buckets: set[Hashable] = buckets, unit: str = unit,
                    name: str = name, count: int = count,
                    bucket: Callable[[BackupRecord], Hashable] = bucket) -> str:
            if bucket(b) in buckets:
                return f"not the newest of its {unit} ({name})"
            return f"its {unit} is not among the {count} newest ({name})"

        rule(kept, f"{name} {count}", good, why_not)
    if policy.keep_verified:
        n = policy.keep_verified
        newest_verified = {b.name for b in verified[:n]}
        rule(newest_verified, f"keepVerified {n}", good,
             lambda b: "Suspicious: not counted as verified (keepVerified)" if b.suspicious
             else f"not among the {n} newest verified (keepVerified)" if b.verified
             else "not verified (keepVerified)")
    keep((b.name for b in failed[: policy.keep_failed]), f"keepFailed {policy.keep_failed}")
    for b in failed[policy.keep_failed:]:
        passed_over[b.name].append(f"failed, beyond the {policy.keep_failed} newest "
                                   "(keepFailed)")
    for b in good:
        if not passed_over[b.name]:
            passed_over[b.name].append("no rule keeps older successful Backups")
    for d in decisions.values():
        if not d.keep:
            d.reasons = passed_over[d.name]
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
