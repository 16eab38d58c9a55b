"""Cron expressions in a time zone: when does a schedule fire next, and when did it last?

Times are computed as wall-clock times in the schedule's zone (so `0 2 * * *` stays at 02:00
across DST changes, like Kubernetes CronJobs with `timeZone`) and returned as aware UTC
datetimes. A wall-clock time that does not exist on a spring-forward day fires shifted by the
gap (02:30 becomes 03:30); one that exists twice on a fall-back day fires once, at its first
occurrence. The clock is always passed in; nothing here reads the current time."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from timesheet_backup.api.validation import CRON_PATTERN

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


class CronError(ValueError):
    """A schedule or time zone the operator cannot run; the message says why."""


def normalize(expr: str) -> str:
    """The five-field form of an expression (macros expanded)."""
    text = expr.strip()
    return MACROS.get(text.lower(), text)


def zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CronError(f"unknown time zone {name!r}: use an IANA name such as Europe/Berlin") \
            from exc


def validate(expr: str, time_zone: str | None = None) -> None:
    """Raise CronError unless the expression and zone are ones the operator can run."""
    if not re.fullmatch(CRON_PATTERN, expr):
        raise CronError(f"invalid cron schedule {expr!r}: expected 5 fields like '0 2 * * *'")
    zone(time_zone)
    try:
        CronSim(normalize(expr), datetime(2000, 1, 1))
    except CronSimError as exc:
        # cronsim's word for a day no month in the expression has (`0 2 30 2 *`).
        why = ("no month it names has that day, so it would never fire"
               if "day-of-month" in str(exc) else str(exc))
        raise CronError(f"invalid cron schedule {expr!r}: {why}") from exc


# How far past (backwards) or before (forwards) a time's own wall-clock time a search
# starts: more than any DST shift (1 h almost everywhere, 2 h historically). Inside a
# repeated (fall-back) hour a time's wall clock reads the second pass while the hour's
# firings belong to the first, and a spring-forward gap's firings come after the wall time
# that ends the gap: a search from the time's own wall clock would skip them.
_SEARCH_AHEAD = timedelta(hours=3)


def next_after(expr: str, after: datetime, time_zone: str | None = None) -> datetime:
    """The first firing time strictly after `after` (an aware datetime), in UTC. cronsim
    works on naive wall-clock times; the search starts `_SEARCH_AHEAD` before `after`'s wall
    time, because a firing in a spring-forward gap (02:30 on a day that skips from 02:00 to
    03:00) happens after a wall time such as 03:00 (see `_to_instant`)."""
    tz = zone(time_zone)
    local = after.astimezone(tz).replace(tzinfo=None) - _SEARCH_AHEAD
    it = CronSim(normalize(expr), local.replace(second=0, microsecond=0))
    while True:
        candidate = next(it)
        instant = _to_instant(candidate, tz)
        if instant > after:
            return instant.astimezone(UTC)


def previous_at_or_before(expr: str, at: datetime, time_zone: str | None = None) -> datetime:
    """The latest firing time at or before `at`, in UTC. Firing instants grow with wall time
    (`_to_instant`), so the first one at or before `at`, searching backwards from a wall
    time surely past it, is the latest."""
    tz = zone(time_zone)
    local = at.astimezone(tz).replace(tzinfo=None, microsecond=0) + _SEARCH_AHEAD
    it = CronSim(normalize(expr), local.replace(second=0), reverse=True)
    while True:
        candidate = next(it)
        instant = _to_instant(candidate, tz)
        if instant <= at:
            return instant.astimezone(UTC)


def _to_instant(wall: datetime, tz: ZoneInfo) -> datetime:
    """A wall-clock time in `tz` as an aware instant. PEP 495's fold=0 does what we want for
    both DST edges: a time in the spring-forward gap takes the offset from before the gap (so
    02:30 fires at 03:30 new time), an ambiguous fall-back time takes its first occurrence."""
    return wall.replace(tzinfo=tz, fold=0)
