"""Retention (schedule/retention.py): GFS keeps exactly what it promises, ties included, and
keepVerified keeps the proof. A slow, obviously-correct oracle states each rule's promise;
the property tests hold the implementation to it on inputs full of ties (many Backups at the
same instant, the same day, week or month) and under every input order."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from timesheet_backup.api.models import RetentionSpec
from timesheet_backup.api.validation import parse_duration
from timesheet_backup.schedule import retention
from timesheet_backup.schedule.retention import BackupRecord

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)
UTC_ZONE = ZoneInfo("UTC")
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]


def newest_key(b: BackupRecord) -> tuple[datetime, str]:
    return (b.time, b.name)


# --- the oracle: each rule's promise, written the slow and obvious way ----------------------


def oracle_per_period(good: list[BackupRecord], count: int,
                      bucket: Callable[[BackupRecord], Hashable]) -> set[str]:
    """Group by period; a period's representative is its newest Backup; the `count` periods
    with the newest representatives keep theirs."""
    groups: dict[Hashable, list[BackupRecord]] = {}
    for b in good:
        groups.setdefault(bucket(b), []).append(b)
    representatives = sorted((max(g, key=newest_key) for g in groups.values()),
                             key=newest_key, reverse=True)
    return {b.name for b in representatives[:count]}


def oracle_claims(records: list[BackupRecord], policy: RetentionSpec,
                  zone: ZoneInfo) -> dict[str, set[str]]:
    """Rule -> the Backups it claims."""
    good = sorted((b for b in records if b.phase == "Succeeded"), key=newest_key,
                  reverse=True)
    failed = sorted((b for b in records if b.phase == "Failed"), key=newest_key, reverse=True)
    verified = [b for b in good if b.verified and not b.suspicious]
    claims: dict[str, set[str]] = {
        "not finished": {b.name for b in records if b.phase not in ("Succeeded", "Failed")},
        "newest successful": {b.name for b in good[:1]},
        "newest verified": {b.name for b in verified[:1]},
        "keepFailed": {b.name for b in failed[:policy.keep_failed]},
    }
    if policy.keep_last:
        claims["keepLast"] = {b.name for b in good[:policy.keep_last]}
    if policy.max_age:
        limit = NOW - timedelta(seconds=parse_duration(policy.max_age))
        claims["maxAge"] = {b.name for b in good if b.time >= limit}
    if policy.keep_verified:
        claims["keepVerified"] = {b.name for b in verified[:policy.keep_verified]}

    def local(b: BackupRecord) -> datetime:
        return b.time.astimezone(zone)

    for name, count, bucket in [
        ("keepDaily", policy.keep_daily, lambda b: local(b).date()),
        ("keepWeekly", policy.keep_weekly, lambda b: local(b).isocalendar()[:2]),
        ("keepMonthly", policy.keep_monthly, lambda b: (local(b).year, local(b).month)),
    ]:
        if count:
            claims[name] = oracle_per_period(good, count, bucket)
    return claims


# --- strategies: few distinct instants, so ties are the rule, not the exception ------------

# Instants on a coarse grid (hours before NOW, a multiple of 6 within ~100 days), drawn from
# a small pool: many Backups share a time, and most share a day, week and month.
instants = st.lists(st.integers(0, 400).map(lambda k: k * 6), min_size=1, max_size=8,
                    unique=True)


@st.composite
def backups_with_ties(draw: st.DrawFn) -> list[BackupRecord]:
    pool = draw(instants)
    count = draw(st.integers(0, 40))
    names = draw(st.permutations([f"b{i:02d}" for i in range(count)]))
    return [BackupRecord(name,
                         draw(st.sampled_from(["Succeeded", "Succeeded", "Succeeded", "Failed",
                                               "Running", None])),
                         NOW - timedelta(hours=draw(st.sampled_from(pool))),
                         verified=draw(st.booleans()), suspicious=draw(st.booleans()))
            for name in names]


policies = st.builds(
    RetentionSpec,
    max_age=st.one_of(st.none(), st.sampled_from(["1d", "7d", "30d", "12h", "2w"])),
    keep_last=st.one_of(st.none(), st.integers(1, 6)),
    keep_daily=st.one_of(st.none(), st.integers(1, 6)),
    keep_weekly=st.one_of(st.none(), st.integers(1, 4)),
    keep_monthly=st.one_of(st.none(), st.integers(1, 3)),
    keep_verified=st.one_of(st.none(), st.integers(1, 4)),
    keep_failed=st.integers(0, 4),
)

RULE_OF_REASON = {
    "keepLast": "keepLast", "younger than": "maxAge", "keepDaily": "keepDaily",
    "keepWeekly": "keepWeekly", "keepMonthly": "keepMonthly", "keepVerified": "keepVerified",
    "keepFailed": "keepFailed", "newest successful": "newest successful",
    "newest verified": "newest verified", "not finished": "not finished",
}


def rule_of(reason: str) -> str:
    return next(rule for prefix, rule in RULE_OF_REASON.items() if reason.startswith(prefix))


@settings(max_examples=300, deadline=None)
@given(records=backups_with_ties(), policy=policies, zone=st.sampled_from(ZONES))
def test_gfs_keeps_exactly_what_each_rule_claims(records: list[BackupRecord],
                                                 policy: RetentionSpec, zone: str) -> None:
    tz = ZoneInfo(zone)
    claims = oracle_claims(records, policy, tz)
    decisions = retention.decide(records, policy, NOW, tz)
    assert sorted(d.name for d in decisions) == sorted(b.name for b in records)
    for d in decisions:
        claimed_by = {rule for rule, names in claims.items() if d.name in names}
        if d.keep:
            # Kept only when a rule claims it, and the reasons name exactly those rules.
            assert {rule_of(r) for r in d.reasons} == claimed_by, (d, claimed_by)
        else:
            assert not claimed_by, (d, claimed_by)
            assert d.reasons, "a pruned Backup says why"
    # Never fewer than promised: each period rule keeps min(count, periods with a Backup).
    good = [b for b in records if b.phase == "Succeeded"]
    for rule, count, unit in [("keepDaily", policy.keep_daily, 1),
                              ("keepLast", policy.keep_last, 0)]:
        if count:
            available = len({b.time.astimezone(tz).date() for b in good}) if unit else len(good)
            kept_by_rule = [d for d in decisions
                            if d.keep and any(r.startswith(f"{rule} ") for r in d.reasons)]
            assert len(kept_by_rule) == min(count, available)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), records=backups_with_ties(), policy=policies,
       zone=st.sampled_from(ZONES))
def test_the_outcome_does_not_depend_on_input_order(data: st.DataObject,
                                                    records: list[BackupRecord],
                                                    policy: RetentionSpec, zone: str) -> None:
    shuffled = data.draw(st.permutations(records))
    first = retention.decide(records, policy, NOW, ZoneInfo(zone))
    again = retention.decide(shuffled, policy, NOW, ZoneInfo(zone))
    assert first == again
    assert retention.to_prune(records, policy, NOW, ZoneInfo(zone)) == \
        retention.to_prune(shuffled, policy, NOW, ZoneInfo(zone))


@settings(max_examples=150, deadline=None)
@given(records=backups_with_ties(), policy=policies)
def test_the_newest_verified_and_keep_verified_survive(records: list[BackupRecord],
                                                       policy: RetentionSpec) -> None:
    pruned = set(retention.to_prune(records, policy, NOW, UTC_ZONE))
    verified = sorted((b for b in records if b.phase == "Succeeded" and b.verified
                       and not b.suspicious), key=newest_key, reverse=True)
    promised = verified[:max(1, policy.keep_verified or 0)]
    assert not {b.name for b in promised} & pruned


# --- ties, spelled out ----------------------------------------------------------------------


def test_same_instant_is_told_apart_by_name() -> None:
    """Three Backups completed in the same second: keepLast 1 keeps the greatest name, in
    whatever order they were listed."""
    at = NOW - timedelta(hours=1)
    records = [BackupRecord(n, "Succeeded", at) for n in ("run-b", "run-c", "run-a")]
    for order in (records, records[::-1], records[1:] + records[:1]):
        assert retention.to_prune(order, RetentionSpec(keep_last=1), NOW, UTC_ZONE) == \
            ["run-a", "run-b"]


def test_one_per_day_when_a_day_has_many_at_the_same_time() -> None:
    day1 = NOW - timedelta(days=1)
    records = [BackupRecord(f"d0-{i}", "Succeeded", NOW - timedelta(hours=2)) for i in range(3)]
    records += [BackupRecord(f"d1-{i}", "Succeeded", day1) for i in range(3)]
    decisions = {d.name: d for d in
                 retention.decide(records, RetentionSpec(keep_daily=2), NOW, UTC_ZONE)}
    assert {n for n, d in decisions.items() if d.keep} == {"d0-2", "d1-2"}
    assert decisions["d1-0"].reasons == ["not the newest of its day (keepDaily)"]


def test_weekly_and_monthly_buckets_with_ties() -> None:
    # Two ISO weeks (Mon 2026-11-23 and Sun 2026-11-22), each with a tie.
    mon, sun = datetime(2026, 11, 23, 3, tzinfo=UTC), datetime(2026, 11, 22, 3, tzinfo=UTC)
    oct_ = datetime(2026, 10, 31, 3, tzinfo=UTC)
    records = [BackupRecord("w48-a", "Succeeded", mon), BackupRecord("w48-b", "Succeeded", mon),
               BackupRecord("w47-a", "Succeeded", sun), BackupRecord("w47-b", "Succeeded", sun),
               BackupRecord("oct-a", "Succeeded", oct_)]
    kept = {d.name for d in retention.decide(records, RetentionSpec(keep_weekly=2), NOW,
                                             UTC_ZONE) if d.keep}
    assert kept == {"w48-b", "w47-b"}
    decisions = {d.name: d for d in
                 retention.decide(records, RetentionSpec(keep_monthly=1), NOW, UTC_ZONE)}
    assert {n for n, d in decisions.items() if d.keep} == {"w48-b"}
    assert decisions["oct-a"].reasons == ["its month is not among the 1 newest (keepMonthly)"]


# --- keepVerified and the newest verified Backup --------------------------------------------


def verified_history() -> list[BackupRecord]:
    """Newest first: two unverified, one verified, one unverified, one verified."""
    return [
        BackupRecord("b5", "Succeeded", NOW - timedelta(days=1)),
        BackupRecord("b4", "Succeeded", NOW - timedelta(days=2)),
        BackupRecord("b3", "Succeeded", NOW - timedelta(days=3), verified=True),
        BackupRecord("b2", "Succeeded", NOW - timedelta(days=4)),
        BackupRecord("b1", "Succeeded", NOW - timedelta(days=5), verified=True),
    ]


def decided(records: list[BackupRecord],
            policy: RetentionSpec | None) -> dict[str, retention.Decision]:
    return {d.name: d for d in retention.decide(records, policy, NOW, UTC_ZONE)}


def test_keep_last_one_keeps_the_newest_verified_whatever_the_policy() -> None:
    decisions = decided(verified_history(), RetentionSpec(keep_last=1))
    assert {n for n, d in decisions.items() if d.keep} == {"b5", "b3"}
    assert decisions["b5"].reasons == ["newest successful", "keepLast 1"]
    assert decisions["b3"].reasons == ["newest verified"]
    assert decisions["b1"].explain() == "pruned: not among the 1 newest (keepLast)"


def test_keep_verified_keeps_the_newest_n_verified() -> None:
    decisions = decided(verified_history(), RetentionSpec(keep_last=1, keep_verified=2))
    assert {n for n, d in decisions.items() if d.keep} == {"b5", "b3", "b1"}
    assert decisions["b3"].reasons == ["newest verified", "keepVerified 2"]
    assert decisions["b1"].reasons == ["keepVerified 2"]
    assert decisions["b2"].reasons == ["not among the 1 newest (keepLast)",
                                       "not verified (keepVerified)"]
    decisions = decided(verified_history(), RetentionSpec(keep_last=1, keep_verified=1))
    assert decisions["b1"].reasons == ["not among the 1 newest (keepLast)",
                                       "not among the 1 newest verified (keepVerified)"]


def test_a_suspicious_backup_is_never_verified_proof() -> None:
    """Content alarms: a verified Backup whose dump shrank is not the proof keepVerified and
    the newest-verified rule keep."""
    records = [BackupRecord("new", "Succeeded", NOW - timedelta(days=1)),
               BackupRecord("shrunk", "Succeeded", NOW - timedelta(days=2), verified=True,
                            suspicious=True),
               BackupRecord("proof", "Succeeded", NOW - timedelta(days=3), verified=True)]
    decisions = decided(records, RetentionSpec(keep_last=1, keep_verified=1))
    assert decisions["proof"].reasons == ["newest verified", "keepVerified 1"]
    assert not decisions["shrunk"].keep
    assert decisions["shrunk"].reasons == ["not among the 1 newest (keepLast)",
                                           "Suspicious: not counted as verified (keepVerified)"]


def test_a_failed_backup_is_never_verified_proof() -> None:
    records = [BackupRecord("new", "Succeeded", NOW - timedelta(days=1)),
               BackupRecord("odd", "Failed", NOW - timedelta(days=2), verified=True)]
    decisions = decided(records, RetentionSpec(keep_last=1, keep_verified=1, keep_failed=0))
    assert not decisions["odd"].keep
    assert decisions["odd"].reasons == ["failed, beyond the 0 newest (keepFailed)"]


def test_without_verified_backups_keep_verified_keeps_nothing_extra() -> None:
    records = [BackupRecord(f"b{i}", "Succeeded", NOW - timedelta(days=i)) for i in range(3)]
    assert retention.to_prune(records, RetentionSpec(keep_last=1, keep_verified=3), NOW,
                              UTC_ZONE) == ["b2", "b1"]


def test_a_policy_without_rules_for_successes_says_so() -> None:
    records = [BackupRecord(f"b{i}", "Succeeded", NOW - timedelta(days=i)) for i in range(2)]
    decisions = decided(records, RetentionSpec(keep_failed=1))
    assert decisions["b1"].explain() == "pruned: no rule keeps older successful Backups"
    assert decisions["b0"].explain() == "kept: newest successful"


def test_no_policy_keeps_everything_and_says_why() -> None:
    decisions = decided(verified_history(), None)
    assert all(d.keep and d.reasons == ["no retention policy"] for d in decisions.values())
