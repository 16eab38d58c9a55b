"""What a backup's contents prove (pure): the row counts a backup recorded in its dump's
snapshot, compared with a restored database's (restore tests), and the names they use.

A table's name in the manifest is `schema.table`, each part double-quoted (`""` for a
quote) only when it is not a plain lower-case identifier, as PostgreSQL prints a regclass:
so a name is unambiguous even when it contains a dot."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_PLAIN_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_$]*$")
_PART = re.compile(r'"((?:[^"]|"")*)"|([^".]+)')


def _quote_if_needed(name: str) -> str:
    if _PLAIN_IDENTIFIER.match(name):
        return name
    return '"' + name.replace('"', '""') + '"'


def qualified_name(schema: str, table: str) -> str:
    """The manifest's key for a table."""
    return f"{_quote_if_needed(schema)}.{_quote_if_needed(table)}"


def split_qualified_name(name: str) -> tuple[str, str]:
    """(schema, table) of a manifest key; ValueError if it is not one."""
    parts: list[str] = []
    pos = 0
    while True:
        match = _PART.match(name, pos)
        if match is None:
            raise ValueError(f"not a schema-qualified table name: {name!r}")
        quoted, plain = match.groups()
        parts.append(quoted.replace('""', '"') if quoted is not None else plain)
        pos = match.end()
        if pos == len(name):
            break
        if name[pos] != ".":
            raise ValueError(f"not a schema-qualified table name: {name!r}")
        pos += 1
    if len(parts) != 2:
        raise ValueError(f"not a schema-qualified table name: {name!r}")
    return parts[0], parts[1]


def restored_counts(row_counts: Mapping[str, int], tables: Sequence[str] = (),
                    schemas: Sequence[str] = (), schema_only: bool = False) -> dict[str, int]:
    """The counts a restore must reproduce: those of the tables it restored rows of.

    pg_restore's selection is by exact name, not pattern: `--table` names a table in any
    schema, `--schema` a schema, and both together must both match; `--schema-only`
    restores no rows at all."""
    if schema_only:
        return {}
    out = {}
    for key, count in row_counts.items():
        schema, table = split_qualified_name(key)
        if tables and table not in tables:
            continue
        if schemas and schema not in schemas:
            continue
        out[key] = count
    return out


@dataclass(frozen=True)
class CountComparison:
    compared: int
    # (table, rows the backup had, rows found; None: the table is missing)
    differences: tuple[tuple[str, int, int | None], ...]

    @property
    def ok(self) -> bool:
        return not self.differences

    def summary(self) -> str:
        """One line for a status or a log: what was compared and how it went."""
        tables = "table's" if self.compared == 1 else "tables'"
        if self.ok:
            return f"compared {self.compared} {tables} row counts with the backup's: all equal"
        return self.message()

    def message(self) -> str:
        parts = []
        for table, expected, found in self.differences[:5]:
            if found is None:
                parts.append(f"table {table} is missing (the backup had {expected} rows)")
            else:
                parts.append(f"table {table} has {found} rows, the backup had {expected}")
        more = len(self.differences) - len(parts)
        if more:
            parts.append(f"and {more} more")
        return (f"row counts differ from the backup's ({len(self.differences)} of "
                f"{self.compared} tables): " + "; ".join(parts))


def compare_counts(expected: Mapping[str, int],
                   found: Mapping[str, int | None]) -> CountComparison:
    """Each expected table's rows against what the restored database has (a table absent
    from `found`, or found as None, is missing)."""
    differences = tuple(
        (table, count, found.get(table))
        for table, count in sorted(expected.items())
        if found.get(table) != count
    )
    return CountComparison(len(expected), differences)


# --- content alarms: a dump that shrank -------------------------------------------------

SUSPICIOUS = "Suspicious"  # the Backup condition
DEFAULT_SHRINK_PERCENT = 50


@dataclass(frozen=True)
class ContentFacts:
    """What a Backup's status says of its contents (copied from its manifest)."""

    name: str
    size_bytes: int
    table_count: int | None  # None: no database component, or an agent that did not count
    row_counts: Mapping[str, int] | None


def facts_of(backup: Mapping[str, Any]) -> ContentFacts | None:
    st = backup.get("status") or {}
    if not isinstance(st.get("sizeBytes"), int):
        return None
    return ContentFacts(backup["metadata"]["name"], st["sizeBytes"], st.get("tableCount"),
                        st.get("rowCounts"))


def is_suspicious(backup: Mapping[str, Any]) -> bool:
    return any(cond.get("type") == SUSPICIOUS and cond.get("status") == "True"
               for cond in (backup.get("status") or {}).get("conditions") or [])


def previous_good(backups: Sequence[Mapping[str, Any]],
                  this: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The newest Backup before `this` (by completion time, then name) that Succeeded and
    is not Suspicious: what a new Backup is compared with. A Suspicious one is never the
    reference, so an emptied table keeps alarming until a Backup is normal again."""
    def key(b: Mapping[str, Any]) -> tuple[str, str]:
        st = b.get("status") or {}
        return (st.get("completionTime") or b["metadata"].get("creationTimestamp") or "",
                b["metadata"]["name"])

    this_key = key(this)
    good = [b for b in backups
            if b["metadata"]["name"] != this["metadata"]["name"]
            and (b.get("status") or {}).get("phase") == "Succeeded"
            and not is_suspicious(b) and key(b) < this_key]
    return max(good, key=key) if good else None


def _fell(old: int, new: int, percent: int) -> bool:
    """`new` is more than `percent`% below `old` (integers: no rounding at the edge)."""
    return old > 0 and new * 100 < old * (100 - percent)


def suspicion(new: ContentFacts, previous: ContentFacts | None,
              shrink_percent: int = DEFAULT_SHRINK_PERCENT) -> str | None:
    """Why this Backup looks wrong, or None: its database dump holds no table, or, against
    the previous good Backup of its schedule, its total size or a table's rows fell by more
    than `shrink_percent`% (a table no longer in the dump fell to 0)."""
    reasons: list[str] = []
    if new.table_count == 0:
        reasons.append("the database dump has no tables")
    if previous is not None:
        if _fell(previous.size_bytes, new.size_bytes, shrink_percent):
            reasons.append(
                f"its size fell by {_percent(previous.size_bytes, new.size_bytes)}% "
                f"({previous.size_bytes} to {new.size_bytes} bytes, against "
                f"{previous.name})")
        if new.row_counts is not None and previous.row_counts is not None:
            shrunk = []
            for table, old in sorted(previous.row_counts.items()):
                count = new.row_counts.get(table, 0)
                if _fell(old, count, shrink_percent):
                    gone = "" if table in new.row_counts else ", not in the dump"
                    shrunk.append(f"{table} {old} to {count} rows{gone}")
            if shrunk:
                more = f" and {len(shrunk) - 5} more" if len(shrunk) > 5 else ""
                reasons.append(f"rows fell by more than {shrink_percent}% against "
                               f"{previous.name}: " + ", ".join(shrunk[:5]) + more)
    return "; ".join(reasons) or None


def _percent(old: int, new: int) -> int:
    return (old - new) * 100 // old


@dataclass(frozen=True)
class Alarm:
    """The Suspicious condition a just-succeeded Backup gets: status "True" with `message`
    naming what shrank, or "False" (checked, nothing wrong)."""

    status: str
    reason: str
    message: str


def content_alarm(this: Mapping[str, Any], backups: Sequence[Mapping[str, Any]],
                  shrink_percent: int) -> Alarm | None:
    """`this`: the Backup with its final status (sizeBytes, tableCount, rowCounts,
    completionTime); `backups`: its schedule's Backups. None when there is nothing to say
    (no facts)."""
    facts = facts_of(this)
    if facts is None:
        return None
    reference = previous_good(backups, this)
    previous = facts_of(reference) if reference is not None else None
    why = suspicion(facts, previous, shrink_percent)
    if why:
        return Alarm("True", "ContentShrank", why)
    against = f"against {previous.name}" if previous else "no previous good Backup to compare"
    return Alarm("False", "ContentAsExpected",
                 f"no shrink beyond {shrink_percent}% ({against})")
