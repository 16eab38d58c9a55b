"""Roles and memberships for disaster recovery (pure): the `pg_dumpall` arguments that dump
them and the plan that replays such a dump onto a server without breaking it.

Why `--roles-only` and not `--globals-only`: the only other globals are tablespaces, whose
`CREATE TABLESPACE ... LOCATION '/path'` names a directory on the old server's disk; on a
fresh server that directory does not exist (or is another volume's), so replaying it fails
or, worse, succeeds somewhere unintended. Tablespaces are therefore not part of the dump:
a server that needs them gets them from its owner before the database is restored (the
disaster-recovery runbook says so).

Why `--no-role-passwords` by default: without it pg_dumpall reads `pg_authid`, which only a
superuser may read; with it pg_dumpall reads `pg_roles`, so the application's own
non-superuser role can take the dump. Restored roles then have no password: the runbook sets
them (they live in the app's Secret anyway).

Why a plan and not `psql -f`: replaying pg_dumpall's output as is fails on the first role
that already exists (`CREATE ROLE` has no IF NOT EXISTS), and its `ALTER ROLE ... NOSUPERUSER`
for the role the restore connects as, or for the server's bootstrap superuser, could lock the
admin out. The plan creates missing roles, alters existing ordinary ones, and never touches
the connecting role, superusers already on the target, or built-in `pg_*` roles; it never
drops a role.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

from timesheet_backup.agent.pgtools import Connection, conninfo

# Built-in roles: predefined `pg_*` roles, which every server has and which cannot be altered.
BUILTIN_PREFIX: Final = "pg_"


def pg_dumpall_roles_args(conn: Connection, with_passwords: bool = False) -> list[str]:
    """pg_dumpall writing the roles and memberships as SQL to stdout.

    `with_passwords` keeps the password hashes, which needs a superuser (pg_authid)."""
    args = ["pg_dumpall", "--no-password", "--roles-only"]
    if not with_passwords:
        args.append("--no-role-passwords")
    args += ["--dbname", conninfo(conn)]
    return args


def passwords_need_superuser_hint(detail: str) -> str | None:
    """The human reason when pg_dumpall could not read the password hashes."""
    if "pg_authid" in detail and "permission denied" in detail:
        return ("dumping role passwords reads pg_authid, which only a superuser may read: "
                "connect as a superuser or leave the passwords out (the default)")
    return None


def split_statements(script: str) -> Iterator[str]:
    """The SQL statements of a pg_dumpall script, without comments and psql meta-commands.

    Semicolons inside '...' literals (a COMMENT ON ROLE) and "..." identifiers do not end a
    statement. Lines starting with a backslash are psql meta-commands (`\\connect`, and the
    `\\restrict` lines current minor releases add), which psycopg cannot run and which carry
    no role."""
    buf: list[str] = []
    quote: str | None = None
    i = 0
    n = len(script)
    at_line_start = True
    while i < n:
        c = script[i]
        if quote is None:
            if at_line_start and not "".join(buf).strip() and c == "\\":
                end = script.find("\n", i)
                i = n if end < 0 else end + 1
                continue
            if c == "-" and script.startswith("--", i):
                end = script.find("\n", i)
                i = n if end < 0 else end + 1
                at_line_start = True
                continue
            if c in ("'", '"'):
                quote = c
            elif c == ";":
                statement = "".join(buf).strip()
                buf = []
                i += 1
                at_line_start = False
                if statement:
                    yield statement
                continue
        elif c == quote:
            # A doubled quote is an escaped one and keeps the literal open.
            if i + 1 < n and script[i + 1] == quote:
                buf.append(c)
                i += 1
            else:
                quote = None
        buf.append(c)
        at_line_start = c == "\n"
        i += 1
    rest = "".join(buf).strip()
    if rest:
        yield rest


_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_ROLE_STMT = re.compile(
    rf"^(CREATE|ALTER|COMMENT ON|SECURITY LABEL FOR \S+ ON)\s+ROLE\s+({_IDENT})", re.IGNORECASE)
_DROP_ROLE = re.compile(r"^DROP\s+ROLE\b", re.IGNORECASE)
_GRANT = re.compile(rf"^GRANT\s+(.+?)\s+TO\s+({_IDENT})(.*)$", re.IGNORECASE | re.DOTALL)
_GRANTED_BY = re.compile(rf"\s+GRANTED\s+BY\s+{_IDENT}", re.IGNORECASE)
_SET = re.compile(r"^SET\s+", re.IGNORECASE)


def unquote(ident: str) -> str:
    if ident.startswith('"'):
        return ident[1:-1].replace('""', '"')
    return ident.lower()


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class RolesPlan:
    """What replaying a roles dump does: the statements to run, and for the report which
    roles are created, altered and left alone (with why)."""

    statements: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    altered: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    memberships: int = 0

    def describe(self) -> str:
        parts = [f"{len(self.created)} role(s) created"]
        if self.created:
            parts[0] += f" ({', '.join(self.created)})"
        parts.append(f"{len(self.altered)} existing altered")
        if self.skipped:
            parts.append(f"{len(self.skipped)} left alone ("
                         + ", ".join(f"{r}: {why}" for r, why in self.skipped.items()) + ")")
        parts.append(f"{self.memberships} membership(s) granted")
        return "; ".join(parts)


def protected_reason(role: str, connecting_role: str, target_superusers: Collection[str]
                     ) -> str | None:
    """Why a role in the dump must not be created or altered on the target, if it must not."""
    if role == connecting_role:
        return "the role the restore connects as"
    if role.startswith(BUILTIN_PREFIX):
        return "built-in"
    if role in target_superusers:
        return "a superuser on the target"
    return None


def plan_roles_restore(script: str, existing_roles: Collection[str], connecting_role: str,
                       target_superusers: Collection[str]) -> RolesPlan:
    """Turn a pg_dumpall roles script into statements that are safe to run, twice included.

    `existing_roles` and `target_superusers` are observed on the target before the plan."""
    plan = RolesPlan()
    existing = set(existing_roles)
    created: set[str] = set()
    for statement in split_statements(script):
        if _DROP_ROLE.match(statement):
            continue  # never drops a role (only `pg_dumpall --clean` writes these)
        if _SET.match(statement):
            plan.statements.append(statement)
            continue
        role_stmt = _ROLE_STMT.match(statement)
        if role_stmt:
            verb, role = role_stmt.group(1).upper(), unquote(role_stmt.group(2))
            reason = protected_reason(role, connecting_role, target_superusers)
            if reason:
                plan.skipped.setdefault(role, reason)
                continue
            if verb == "CREATE":
                if role in existing:
                    continue  # the ALTER ROLE that follows brings its attributes over
                created.add(role)
                plan.created.append(role)
            elif verb == "ALTER" and role not in created and role not in plan.altered:
                plan.altered.append(role)
            plan.statements.append(statement)
            continue
        grant = _GRANT.match(statement)
        if grant:
            grantee = unquote(grant.group(2))
            reason = protected_reason(grantee, connecting_role, target_superusers)
            if reason:
                plan.skipped.setdefault(grantee, reason)
                continue
            # GRANTED BY names the grantor on the old server, who may not exist here (or
            # lack ADMIN); the restoring superuser grants instead.
            rest = _GRANTED_BY.sub("", grant.group(3))
            plan.statements.append(f"GRANT {grant.group(1)} TO {grant.group(2)}{rest}")
            plan.memberships += 1
            continue
        # Anything else in a roles-only dump (none today) is not replayed blindly.
        plan.skipped.setdefault(" ".join(statement.split()[:3]), "unrecognised statement")
    return plan


def role_lists_query() -> str:
    """Roles on the target and which of them are superusers (pg_roles, readable by all)."""
    return "SELECT rolname, rolsuper FROM pg_catalog.pg_roles"


def observed_roles(rows: Sequence[tuple[str, bool]]) -> tuple[set[str], set[str]]:
    return {r for r, _ in rows}, {r for r, s in rows if s}
