"""What a backup's contents prove (pure): the row counts a backup recorded in its dump's
snapshot, compared with a restored database's (restore tests), and the names they use.

A table's name in the manifest is `schema.table`, each part double-quoted (`""` for a
quote) only when it is not a plain lower-case identifier, as PostgreSQL prints a regclass:
so a name is unambiguous even when it contains a dot."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
