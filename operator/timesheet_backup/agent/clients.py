"""Which PostgreSQL client major talks to which server.

The image carries several client majors side by side (Debian's layout,
`/usr/lib/postgresql/<major>/bin`), because one client does not fit every server:

- pg_dump refuses servers newer than itself, and an older pg_dump can miss what a newer
  server has: dump with the server's own major, else with the newest client.
- pg_dump/pg_restore 17 and later put `SET transaction_timeout = 0;` into what they write
  (the plain SQL file; the script pg_restore sends), and servers before 17 refuse that
  parameter. pg_restore reads archives of its own major and older only. So a restore runs
  the target's own major when it can read the archive; else the closest client that can,
  and when that one (or the plain file) is 17+ and the target older, the script goes through
  psql with that one line taken out of its preamble — nothing else is changed.

The supported server range is stated here once (docs/security.md repeats it, a unit test
checks that they agree); a server outside it fails before anything runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from timesheet_backup.errors import ConfigError, DatabaseError

# Oldest and newest server majors the agent supports: 15 is the oldest the version matrix
# (tests/integration/test_server_versions.py) can run here, 18 the newest client shipped.
SUPPORTED_SERVERS: Final = (15, 18)
CLIENTS_ROOT: Final = "/usr/lib/postgresql"
# Overrides CLIENTS_ROOT (a directory of <major>/bin); for machines with another layout.
CLIENTS_ROOT_ENV: Final = "TSB_PG_CLIENTS_ROOT"
TRANSACTION_TIMEOUT_SINCE: Final = 17
TIMEOUT_LINE: Final = b"SET transaction_timeout = 0;"


def major_of(version: str) -> int:
    """`15.18` -> 15, `9.6.24` -> 9, `18beta1` -> 18."""
    match = re.match(r"\s*(\d+)", version)
    if not match:
        raise ConfigError(f"cannot read a PostgreSQL version from {version!r}")
    return int(match.group(1))


def supported_range() -> str:
    low, high = SUPPORTED_SERVERS
    return f"{low} to {high}"


def check_server(server_version: str, role: str = "server") -> int:
    major = major_of(server_version)
    low, high = SUPPORTED_SERVERS
    if not low <= major <= high:
        raise DatabaseError(
            f"PostgreSQL {server_version} ({role}) is not supported: the agent works with "
            f"servers {supported_range()} (docs/security.md)"
        )
    return major


def discover(root: str | None = None) -> dict[int, Path]:
    """Client majors found under `root` (or $TSB_PG_CLIENTS_ROOT, or Debian's layout):
    {major: bin directory} for every `<major>/bin` holding pg_dump, pg_restore and psql."""
    base = Path(root or os.environ.get(CLIENTS_ROOT_ENV) or CLIENTS_ROOT)
    found: dict[int, Path] = {}
    try:
        entries = list(base.iterdir())
    except OSError:
        return found
    for entry in entries:
        bin_dir = entry / "bin"
        if entry.name.isdigit() and all(
            (bin_dir / tool).is_file() for tool in ("pg_dump", "pg_restore", "psql")
        ):
            found[int(entry.name)] = bin_dir
    return found


def dump_client(server_major: int, available: Sequence[int]) -> int:
    """The server's own major, else the newest client (pg_dump dumps older servers)."""
    if not available:
        raise ConfigError(f"no PostgreSQL client tools found under {CLIENTS_ROOT}")
    if server_major in available:
        return server_major
    newest = max(available)
    if newest < server_major:
        raise ConfigError(
            f"the server is PostgreSQL {server_major}, newer than the newest client here "
            f"({newest}): use an image with a PostgreSQL {server_major} client"
        )
    return newest


@dataclass(frozen=True)
class RestorePlan:
    client: int
    # Archives: pg_restore writes the SQL script and psql runs it (so it can be filtered).
    script: bool
    # Take `SET transaction_timeout = 0;` out of the script's preamble.
    drop_timeout: bool

    def describe(self, fmt: str) -> str:
        how = "pg_restore | psql" if self.script else ("psql" if fmt == "plain" else "pg_restore")
        extra = ", without SET transaction_timeout" if self.drop_timeout else ""
        return f"client {self.client} ({how}{extra})"


def restore_plan(fmt: str, dump_major: int | None, target_major: int,
                 available: Sequence[int]) -> RestorePlan:
    """How to restore a dump written by pg_dump `dump_major` (None: unknown, e.g. a file
    imported from the old guide's commands) into a `target_major` server."""
    if not available:
        raise ConfigError(f"no PostgreSQL client tools found under {CLIENTS_ROOT}")
    old_target = target_major < TRANSACTION_TIMEOUT_SINCE
    if fmt == "plain":
        # Any psql runs SQL; the newest knows every meta-command a newer pg_dump writes
        # (e.g. \restrict). The SET line is in the file when pg_dump was 17+.
        client = target_major if target_major in available else max(available)
        written_by_17 = dump_major is None or dump_major >= TRANSACTION_TIMEOUT_SINCE
        return RestorePlan(client, False, old_target and written_by_17)
    readers = sorted(m for m in available if dump_major is None or m >= dump_major)
    if not readers:
        raise ConfigError(
            f"the backup was written by pg_dump {dump_major}, newer than every client here "
            f"({max(available)}): restore it with an image that has a PostgreSQL "
            f"{dump_major} client"
        )
    if target_major in readers:
        return RestorePlan(target_major, False, False)
    not_newer = [m for m in readers if m <= target_major]
    if not_newer:  # an older client loads into a newer server as is
        return RestorePlan(max(not_newer), False, False)
    client = readers[0]  # the closest client above the target that reads the archive
    needs_filter = old_target and client >= TRANSACTION_TIMEOUT_SINCE
    return RestorePlan(client, needs_filter, needs_filter)


def located(args: Sequence[str], bin_dir: Path | None) -> list[str]:
    """An argument list whose tool (args[0]) runs from `bin_dir` (None: from PATH)."""
    return [str(bin_dir / args[0]) if bin_dir else args[0], *args[1:]]


class PreambleFilter:
    """A writer that drops `SET transaction_timeout = 0;` from the preamble of a SQL script
    (the block of comments, blank lines, SETs, set_config calls and \\restrict before the
    first statement) and passes everything after it through unchanged, chunk by chunk."""

    _PREAMBLE = (b"--", b"SET ", b"SELECT pg_catalog.set_config(", b"\\restrict ")
    MAX_LINE = 1 << 20

    def __init__(self, sink: object) -> None:
        self.sink = sink
        self._pending = bytearray()
        self._done = False
        self.dropped = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._done:
            self.sink.write(data)  # type: ignore[attr-defined]
            return len(data)
        self._pending += data
        out = bytearray()
        while not self._done:
            end = self._pending.find(b"\n")
            if end < 0:
                break
            line = bytes(self._pending[: end + 1])
            del self._pending[: end + 1]
            stripped = line.strip()
            if stripped == TIMEOUT_LINE:
                self.dropped += 1
                continue
            out += line
            if stripped and not stripped.startswith(self._PREAMBLE):
                self._done = True
        if len(self._pending) > self.MAX_LINE:
            self._done = True  # no preamble has such lines: pass the rest through untouched
        if self._done and self._pending:
            out += self._pending
            self._pending.clear()
        if out:
            self.sink.write(bytes(out))  # type: ignore[attr-defined]
        return len(data)

    def flush(self) -> None:
        if self._pending:
            self.sink.write(bytes(self._pending))  # type: ignore[attr-defined]
            self._pending.clear()
        flush = getattr(self.sink, "flush", None)
        if flush is not None:
            flush()

    def close(self) -> None:
        self.flush()
        self.sink.close()  # type: ignore[attr-defined]
