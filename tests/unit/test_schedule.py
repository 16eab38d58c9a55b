"""Cron in time zones and retention selection, with property tests across DST changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from timesheet_backup.api.models import RetentionSpec
from timesheet_backup.api.validation import parse_duration
from timesheet_backup.schedule import cron, retention
from timesheet_backup.schedule.retention import BackupRecord

pytestmark = pytest.mark.unit

BERLIN = ZoneInfo("Europe/Berlin")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# --- cron -----------------------------------------------------------------------------------


def test_guide_defaults_in_utc() -> None:
    assert cron.next_after("0 2 * * *", utc(2026, 11, 26, 3, 0)) == utc(2026, 11, 27, 2, 0)
    # 2026-11-29 is a Sunday.
    assert cron.next_after("0 3 * * 0", utc(2026, 11, 26, 3, 0)) == utc(2026, 11, 29, 3, 0)


def test_next_is_strictly_after() -> None:
    assert cron.next_after("0 2 * * *", utc(2026, 1, 1, 2, 0)) == utc(2026, 1, 2, 2, 0)


def test_wall_clock_kept_across_dst_in_zone() -> None:
    # Berlin: CET (+1) until 2026-03-29 02:00, then CEST (+2).
    before = cron.next_after("0 4 * * *", utc(2026, 3, 27, 12), "Europe/Berlin")
    after = cron.next_after("0 4 * * *", utc(2026, 3, 29, 12), "Europe/Berlin")
    assert before == utc(2026, 3, 28, 3)
    assert after == utc(2026, 3, 30, 2)


def test_skipped_time_runs_once_shifted_by_the_gap() -> None:
    # 02:30 does not exist in Berlin on 2026-03-29; it fires at 03:30 CEST = 01:30 UTC.
    fired = cron.next_after("30 2 * * *", utc(2026, 3, 28, 12), "Europe/Berlin")
    assert fired == utc(2026, 3, 29, 1, 30)
    assert cron.next_after("30 2 * * *", fired, "Europe/Berlin") == utc(2026, 3, 30, 0, 30)


def test_repeated_time_runs_once() -> None:
    # 02:30 happens twice in Berlin on 2026-10-25; the schedule fires at the first one only.
    first = cron.next_after("30 2 * * *", utc(2026, 10, 24, 12), "Europe/Berlin")
    assert first == utc(2026, 10, 25, 0, 30)
    assert cron.next_after("30 2 * * *", first, "Europe/Berlin") == utc(2026, 10, 26, 1, 30)


def test_previous_at_or_before() -> None:
    assert cron.previous_at_or_before("0 2 * * *", utc(2026, 1, 2, 2, 0)) == utc(2026, 1, 2, 2)
    assert cron.previous_at_or_before("0 2 * * *", utc(2026, 1, 2, 1, 59)) == utc(2026, 1, 1, 2)


def test_previous_inside_a_repeated_hour_is_the_latest_firing() -> None:
    """Berlin falls back on 2026-10-25 (03:00 CEST -> 02:00 CET): at 01:20Z the wall clock
    reads 02:20 for the second time; the latest */15 firing is 02:45 CEST (00:45Z), not
    02:15 CEST (00:15Z), and a catch-up must not go back before a run already made."""
    at = utc(2026, 10, 25, 1, 20)
    assert cron.previous_at_or_before("*/15 * * * *", at, "Europe/Berlin") == \
        utc(2026, 10, 25, 0, 45)
    assert cron.next_after("*/15 * * * *", utc(2026, 10, 25, 0, 45), "Europe/Berlin") == \
        utc(2026, 10, 25, 2, 0)


def test_macros() -> None:
    assert cron.next_after("@daily", utc(2026, 1, 1, 5)) == utc(2026, 1, 2)
    assert cron.next_after("@HOURLY", utc(2026, 1, 1, 5, 1)) == utc(2026, 1, 1, 6)


@pytest.mark.parametrize(
    ("expr", "zone", "message"),
    [
        ("0 2 * *", None, "expected 5 fields"),
        ("0 2 * * *", "Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
        ("0 2 31 2 *", None, "would never fire"),  # passes the pattern, never fires
    ],
)
def test_validate(expr: str, zone: str | None, message: str | None) -> None:
    if message is None:
        cron.validate(expr, zone)
        return
    with pytest.raises(cron.CronError, match=message):
        cron.validate(expr, zone)


ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
instants = st.datetimes(
    min_value=datetime(2024, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
)


@settings(max_examples=200, deadline=None)
@given(at=instants, zone=st.sampled_from(ZONES),
       expr=st.sampled_from(["0 2 * * *", "30 2 * * *", "0 3 * * 0", "*/15 * * * *",
                             "0 0 1 * *", "45 1 * * 1-5"]))
def test_next_is_after_and_previous_not(at: datetime, zone: str, expr: str) -> None:
    nxt = cron.next_after(expr, at, zone)
    prev = cron.previous_at_or_before(expr, at, zone)
    assert prev <= at < nxt
    # Nothing fires strictly between them: the next firing after `prev` is `nxt`.
    assert cron.next_after(expr, prev, zone) == nxt


@settings(max_examples=100, deadline=None)
@given(at=instants, zone=st.sampled_from(ZONES))
def test_daily_runs_once_per_local_day(at: datetime, zone: str) -> None:
    tz = ZoneInfo(zone)
    first = cron.next_after("30 2 * * *", at, zone)
    second = cron.next_after("30 2 * * *", first, zone)
    assert second.astimezone(tz).date() == first.astimezone(tz).date() + timedelta(days=1)


# --- retention ------------------------------------------------------------------------------

NOW = utc(2026, 11, 26, 12)


def daily(n: int, phase: str = "Succeeded", hour: int = 2) -> list[BackupRecord]:
    return [
        BackupRecord(f"b-{i:03d}", phase, NOW.replace(hour=hour) - timedelta(days=i))
        for i in range(n)
    ]


def test_no_policy_prunes_nothing() -> None:
    assert retention.to_prune(daily(40), None, NOW, ZoneInfo("UTC")) == []


def test_max_age_30d_like_the_guide() -> None:
    pruned = retention.to_prune(daily(40), RetentionSpec(max_age="30d"), NOW, ZoneInfo("UTC"))
    # Taken at 02:00, judged at 12:00: b-029 is 29 days 10 hours old and stays, b-030 goes.
    assert pruned == [f"b-{i:03d}" for i in range(39, 29, -1)]


def test_keep_last() -> None:
    pruned = retention.to_prune(daily(5), RetentionSpec(keep_last=2), NOW, ZoneInfo("UTC"))
    assert pruned == ["b-004", "b-003", "b-002"]


def test_newest_good_survives_even_when_old() -> None:
    records = daily(3, hour=2)
    records = [BackupRecord(r.name, r.phase, r.time - timedelta(days=100)) for r in records]
    pruned = retention.to_prune(records, RetentionSpec(max_age="30d"), NOW, ZoneInfo("UTC"))
    assert "b-000" not in pruned
    assert set(pruned) == {"b-001", "b-002"}


def test_failed_and_unfinished() -> None:
    records = [
        BackupRecord("running", "Running", NOW - timedelta(days=90)),
        BackupRecord("pending", None, NOW - timedelta(days=90)),
        *[BackupRecord(f"f-{i}", "Failed", NOW - timedelta(days=i)) for i in range(5)],
        BackupRecord("good", "Succeeded", NOW - timedelta(days=60)),
    ]
    pruned = retention.to_prune(records, RetentionSpec(max_age="30d", keep_failed=2), NOW,
                                ZoneInfo("UTC"))
    assert pruned == ["f-4", "f-3", "f-2"]


def test_gfs_daily_weekly_monthly() -> None:
    # Four backups a day for 120 days.
    records = [
        BackupRecord(f"b-{d:03d}-{h}", "Succeeded", NOW - timedelta(days=d, hours=h * 6))
        for d in range(120) for h in range(4)
    ]
    policy = RetentionSpec(keep_daily=7, keep_weekly=4, keep_monthly=3)
    kept = {d.name for d in retention.decide(records, policy, NOW, ZoneInfo("UTC")) if d.keep}
    days = {r.time.date() for r in records if r.name in kept}
    assert len(kept) <= 7 + 4 + 3
    # The newest of each of the last 7 days is kept.
    for d in range(7):
        day = (NOW - timedelta(days=d)).date()
        newest = max((r for r in records if r.time.date() == day), key=lambda r: r.time)
        assert newest.name in kept, day
    assert len({(x.year, x.month) for x in days}) >= 3


def test_daily_buckets_follow_the_time_zone() -> None:
    # 23:30 UTC is the next day in Berlin: two UTC days, but one Berlin day.
    records = [
        BackupRecord("late", "Succeeded", utc(2026, 6, 1, 23, 30)),
        BackupRecord("early", "Succeeded", utc(2026, 6, 2, 5, 0)),
        BackupRecord("before", "Succeeded", utc(2026, 5, 31, 12, 0)),
    ]
    policy = RetentionSpec(keep_daily=2)
    assert retention.to_prune(records, policy, utc(2026, 6, 3), BERLIN) == ["late"]
    assert retention.to_prune(records, policy, utc(2026, 6, 3), ZoneInfo("UTC")) == ["before"]


records_strategy = st.lists(
    st.tuples(
        st.sampled_from(["Succeeded", "Succeeded", "Failed", "Running", None]),
        st.integers(min_value=0, max_value=400 * 24),  # hours before NOW
    ),
    max_size=60,
)
policies = st.builds(
    RetentionSpec,
    max_age=st.one_of(st.none(), st.sampled_from(["1d", "7d", "30d", "12h", "2w"])),
    keep_last=st.one_of(st.none(), st.integers(1, 10)),
    keep_daily=st.one_of(st.none(), st.integers(1, 10)),
    keep_weekly=st.one_of(st.none(), st.integers(1, 6)),
    keep_monthly=st.one_of(st.none(), st.integers(1, 4)),
    keep_failed=st.integers(0, 5),
)


@settings(max_examples=300, deadline=None)
@given(raw=records_strategy, policy=policies, zone=st.sampled_from(ZONES))
def test_retention_properties(raw: list[tuple[str | None, int]], policy: RetentionSpec,
                              zone: str) -> None:
    records = [BackupRecord(f"b{i}", phase, NOW - timedelta(hours=h))
               for i, (phase, h) in enumerate(raw)]
    pruned = set(retention.to_prune(records, policy, NOW, ZoneInfo(zone)))
    good = sorted((r for r in records if r.phase == "Succeeded"), key=lambda r: (r.time, r.name))
    if good:
        assert good[-1].name not in pruned, "the newest successful backup must survive"
    for r in records:
        if r.phase not in ("Succeeded", "Failed"):
            assert r.name not in pruned, "unfinished backups are never pruned"
        young = policy.max_age and NOW - r.time <= timedelta(
            seconds=parse_duration(policy.max_age))
        if young and r.phase == "Succeeded":
            assert r.name not in pruned, "nothing younger than maxAge is pruned"
    if policy.keep_last:
        newest = {r.name for r in good[-policy.keep_last:]}
        assert not newest & pruned
    kept_good = [r for r in good if r.name not in pruned]
    if policy.keep_daily:
        tz = ZoneInfo(zone)
        days = sorted({r.time.astimezone(tz).date() for r in good}, reverse=True)
        for day in days[: policy.keep_daily]:
            newest_of_day = max((r for r in good if r.time.astimezone(tz).date() == day),
                                key=lambda r: (r.time, r.name))
            assert newest_of_day in kept_good


def _transitions(zone: str, year: int) -> list[datetime]:
    """The UTC hours of `year` at which `zone`'s UTC offset changes."""
    tz = ZoneInfo(zone)
    hour = datetime(year, 1, 1, tzinfo=UTC)
    found = []
    while hour.year == year:
        nxt = hour + timedelta(hours=1)
        if hour.astimezone(tz).utcoffset() != nxt.astimezone(tz).utcoffset():
            found.append(nxt)
        hour = nxt
    return found


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("expr", ["*/15 * * * *", "30 2 * * *", "0 * * * *"])
def test_every_dst_transition_of_2026(zone: str, expr: str) -> None:
    """Around each change of offset, minute by minute: no firing skipped or doubled (the next
    after the previous is the next), and the previous firing never goes backwards."""
    for change in _transitions(zone, 2026):
        last = None
        at = change - timedelta(hours=3)
        while at <= change + timedelta(hours=3):
            prev = cron.previous_at_or_before(expr, at, zone)
            nxt = cron.next_after(expr, at, zone)
            assert prev <= at < nxt
            assert cron.next_after(expr, prev, zone) == nxt, (zone, expr, at)
            assert last is None or prev >= last, (zone, expr, at)
            last = prev
            at += timedelta(minutes=5)
