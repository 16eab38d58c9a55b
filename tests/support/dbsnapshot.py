"""The sample Northstar Timesheet database, and a fingerprint of a database for restore tests.

A restore test's question is "is the restored database the same as the one backed up?".
:func:`snapshot` answers it with one plain dict per database, built from the server's own
catalog and data (hashed in SQL, so even large tables are cheap to compare):

``data``       per user table and populated materialized view: row count and a hash of
               its rows, independent of physical order
``sequences``  ``last_value`` and ``is_called`` of every sequence (the classic thing a
               restore forgets: the next insert then collides with an existing key)
``catalog``    schemas, relations with their columns (type, default, nullability,
               identity, generated, collation), constraints, indexes, view definitions,
               triggers, functions, types (enums, domains, ranges, composites), sequence
               definitions, comments, extensions
``owners``     the owning role of every object
``acl``        privileges (tables, columns, schemas, functions, types, default privileges)

A restore with ``--no-owner`` / ``--no-privileges`` legitimately changes the last two, so
:func:`assert_same` can exclude them: ``assert_same(a, b, exclude=("owners", "acl"))``.

Definitions are rendered with ``search_path`` set to ``pg_catalog`` so every name is
schema-qualified and snapshots of two databases compare word for word. Physical details
that a logical restore never preserves (OIDs, attribute numbers of dropped columns,
relfilenodes, statistics) are left out on purpose.

The sample data: :func:`create_sample_database` = roles + ``timesheet_schema.sql`` +
:func:`load_sample`, which fills the tables deterministically (same ``scale`` and ``seed``,
same rows, same snapshot) with realistic and awkward values: unicode names, quotes, tabs,
newlines, backslashes and a lone ``\\.`` in text; NULLs; text arrays with commas and NULL
elements; nested jsonb; incompressible and highly compressible bytea and long text
(TOASTed); inet; timestamps with microseconds.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import random
import secrets
import unicodedata
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psycopg import sql
from psycopg.types.json import Jsonb

if TYPE_CHECKING:
    import psycopg

    from tests.support.pgserver import PostgresServer

SCHEMA_SQL = Path(__file__).with_name("timesheet_schema.sql")

APP_ROLE = "timesheet"
REPORTING_ROLE = "timesheet_reporting"
READONLY_ROLE = "timesheet_readonly"
SAMPLE_ROLES = (APP_ROLE, REPORTING_ROLE, READONLY_ROLE)

# Tables the sample fills, in load order (parents before children).
SAMPLE_TABLES = (
    "public.accounts",
    "public.timesheets",
    "public.entries",
    "public.notifications",
    "public.attachments",
    "public.audit_events",
)

PARTS = ("data", "sequences", "catalog", "owners", "acl")

# ============================================================================ set-up


def ensure_roles(pg: PostgresServer, app_password: str | None = None) -> None:
    """Create the cluster-wide roles the schema refers to (idempotent).

    ``timesheet`` is the application's owner role in production's shape: LOGIN (with
    ``app_password``, remembered by ``pg`` so that ``pg.dsn(db, user="timesheet")`` and
    ``pg.env(user="timesheet")`` work), NOSUPERUSER, NOCREATEDB, NOCREATEROLE — what the
    guide's ``CREATE DATABASE timesheet_db OWNER timesheet`` gives it: the sample databases
    and their objects are its own. It is a member of ``timesheet_reporting``, so it can both
    dump everything and restore ownership of the reporting objects. Tests that let the agent
    create a database grant CREATEDB for their duration (conftest ``app_role_createdb``).
    This is the role the agent connects as in the integration tests; the superuser only sets
    up roles, servers and fixtures.
    """
    if app_password is None and APP_ROLE not in pg.role_passwords:
        app_password = secrets.token_urlsafe(18)
    pg.create_role(APP_ROLE, password=app_password, login=True, createdb=False, exist_ok=True)
    pg.create_role(REPORTING_ROLE, login=False, exist_ok=True)
    pg.create_role(READONLY_ROLE, login=False, exist_ok=True)
    pg.execute(
        sql.SQL("GRANT {} TO {}").format(sql.Identifier(REPORTING_ROLE), sql.Identifier(APP_ROLE))
    )


def load_schema(conn: psycopg.Connection[Any]) -> None:
    """Run timesheet_schema.sql (needs a superuser session; the roles must exist)."""
    with conn.transaction():
        conn.execute(SCHEMA_SQL.read_text())  # type: ignore[arg-type]


def create_sample_database(
    pg: PostgresServer, name: str, scale: int = 1, seed: int = 20240115, owner: str = APP_ROLE
) -> str:
    """A new database ``name`` owned by ``owner``, with the schema and the sample rows."""
    ensure_roles(pg)
    pg.create_database(name, owner=owner)
    with pg.connection(name) as conn:
        load_schema(conn)
        load_sample(conn, scale=scale, seed=seed)
    return name


# ============================================================================ sample data

FIRST_NAMES = (
    "Ada", "Björn", "Chloé", "Dmitri", "Eun-ji", "Fatima", "Gareth", "Hiroshi", "Ingrid",
    "José", "Kwame", "Łukasz", "Maëlle", "Nguyễn", "Olusegun", "Priya", "Quentin", "Rosalía",
    "Siobhán", "Tomasz", "Ulrike", "Valentina", "Wei", "Xóchitl", "Yusuf", "Zoë", "Ólafur",
)  # fmt: skip
LAST_NAMES = (
    "O'Brien", "Müller", "García", "Smith", "Kowalski", "Nakamura", "Okafor", "Dubois",
    "Jensen", "Rossi", "van der Berg", "Đặng", "李", "Al-Hassan", "Fernández-López",
    "Øvergaard", "Świątek", "Ivanova", "Mbeki", "Ó Súilleabháin",
)  # fmt: skip
PROJECTS = ("NS-CORE", "NS-MOBILE", "ACME-2025", "INTERNAL", "R&D", "SUPPORT", "ops/oncall")
TAGS = (
    "remote",
    "contractor",
    "part-time",
    "on-call",
    "has,comma",
    'quote"d',
    "{braces}",
    "NULL",
    "back\\slash",
    "üñí",
)
WORDS = (
    "reviewed", "customer", "invoice", "deployment", "migration", "meeting", "sprint",
    "planning", "refactor", "incident", "postmortem", "database", "backup", "restore",
    "onboarding", "workshop", "design", "estimate", "release", "hotfix", "timesheet",
    "approval", "report", "budget", "travel", "training", "documentation", "testing",
)  # fmt: skip
# Strings that break naive escaping somewhere between pg_dump, COPY, psql and tar.
AWKWARD_TEXT = (
    "", " ", "  leading and trailing  ", 'He said "ship it"', "O'Reilly's review",
    "tab\tseparated\tvalues", "multi\nline\nnote", "windows\r\nline end", "back\\slash \\N",
    "\\.", "\\.\nafter the end-of-data marker", "comma, separated; values", "NULL", "null",
    "emoji 🎉 and 中文 and עברית", "ZWJ 👩\u200d💻 combining e\u0301", "%s %(name)s {0} $1",
    "-- not a comment", "'; DROP TABLE accounts; --", "\u00a0non-breaking\u00a0space",
)  # fmt: skip
TIMEZONES = (
    "Europe/Berlin",
    "America/New_York",
    "Asia/Kolkata",
    "UTC",
    "Australia/Adelaide",
    "America/St_Johns",
)
BASE_MONDAY = date(2025, 1, 6)
EPOCH = datetime(2025, 1, 6, 8, 0, tzinfo=UTC)


def _slug(text: str) -> str:
    ascii_ = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in ascii_.lower() if ch.isalnum()) or "user"


class _Gen:
    """Deterministic value generator (one ``random.Random``, never the global one)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def sentence(self, lo: int = 3, hi: int = 12) -> str:
        words = self.rng.choices(WORDS, k=self.rng.randint(lo, hi))
        return " ".join(words).capitalize() + "."

    def text(self) -> str | None:
        """Mostly ordinary prose; sometimes NULL, awkward, long (TOAST) or random."""
        r = self.rng.random()
        if r < 0.15:
            return None
        if r < 0.27:
            return self.rng.choice(AWKWARD_TEXT)
        if r < 0.30:  # long and compressible: pglz / zstd will love it
            return "\n".join(self.sentence(8, 20) for _ in range(self.rng.randint(80, 250)))
        if r < 0.33:  # long and incompressible
            return base64.b64encode(self.rng.randbytes(self.rng.randint(2000, 9000))).decode()
        return self.sentence()

    def blob(self) -> bytes | None:
        r = self.rng.random()
        if r < 0.3:
            return None
        if r < 0.32:
            return b""
        if r < 0.65:  # random bytes: incompressible
            return self.rng.randbytes(self.rng.randint(100, 6000))
        # a "PNG" with a long run of identical bytes: compressible, includes NUL bytes
        return (
            b"\x89PNG\r\n\x1a\n"
            + bytes([self.rng.randrange(256)]) * self.rng.randint(50, 20000)
            + b"\x00\x00IEND"
        )

    def moment(self, day: date, hour_lo: int = 7, hour_hi: int = 20) -> datetime:
        return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(
            hours=self.rng.randint(hour_lo, hour_hi - 1),
            minutes=self.rng.randint(0, 59),
            seconds=self.rng.randint(0, 59),
            microseconds=self.rng.choice((0, 0, self.rng.randint(1, 999_999))),
        )

    def uuid(self) -> uuid.UUID:
        return uuid.UUID(bytes=self.rng.randbytes(16), version=4)


def load_sample(
    conn: psycopg.Connection[Any], scale: int = 1, seed: int = 20240115
) -> dict[str, int]:
    """Fill the (empty) schema with deterministic sample rows; returns row counts per table.

    ``scale=1`` makes about six thousand rows in under a second; row counts grow linearly.
    Sequences end up past their tables' largest keys (one with ``is_called = false``), so a
    restore that forgets sequence values is caught.
    """
    g = _Gen(seed * 1000 + scale)
    rng = g.rng
    n_accounts = 40 * scale
    n_weeks = 26

    # ---- accounts: the first few are admins and approvers who manage the rest
    accounts = []
    managers: list[int] = []
    for i in range(1, n_accounts + 1):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        role = (
            "admin" if i <= 2 else "approver" if i <= 2 + max(3, n_accounts // 10) else "employee"
        )
        if role != "employee":
            managers.append(i)
        email = f"{_slug(first)}.{_slug(last)}{i}@northstar.example"
        if i % 7 == 0:  # citext: mixed case must survive (and stay unique case-insensitively)
            email = email.capitalize()
        tags = rng.sample(TAGS, k=rng.randint(0, 3))
        if i % 13 == 0:
            tags.append(None)  # a NULL array element
        prefs = {
            "theme": rng.choice(("light", "dark", "system")),
            "timezone": rng.choice(TIMEZONES),
            "locale": rng.choice(("en-US", "de-DE", "fr-CA", "ja-JP")),
            "notifications": {"email": rng.random() < 0.7, "push": rng.random() < 0.4},
            "shortcuts": rng.sample(PROJECTS, k=rng.randint(0, 3)),
            "beta": None
            if i % 5
            else {"features": ["ai-summary", "dark-mode"], "since": "2025-02"},
            "signature": rng.choice(("", "Grüße", "— sent from my phone", "line1\nline2")),
        }
        created = EPOCH - timedelta(days=rng.randint(30, 900), seconds=rng.randint(0, 86399))
        accounts.append(
            (
                i,
                g.uuid(),
                email,
                f"{first} {last}",
                role,
                None if role == "admin" else rng.choice([m for m in managers if m != i] or [1]),
                None
                if i % 9 == 0
                else "scrypt:32768:8:1$" + base64.b64encode(rng.randbytes(24)).decode(),
                tags,
                Jsonb(prefs),
                None if i % 6 == 0 else Decimal(rng.randint(2500, 15000)) / 100,
                i % 17 != 0,
                created,
                created + timedelta(days=rng.randint(0, 30), microseconds=rng.randint(0, 999_999)),
            )
        )
    _copy(
        conn,
        "public.accounts",
        (
            "id",
            "public_id",
            "email",
            "display_name",
            "role",
            "manager_id",
            "password_hash",
            "tags",
            "preferences",
            "hourly_rate",
            "is_active",
            "created_at",
            "updated_at",
        ),
        accounts,
    )

    # ---- timesheets: most people, most weeks; old weeks approved, recent ones open
    timesheets = []
    ts_id = 0
    for acc in accounts:
        acc_id, manager = acc[0], acc[5]
        first_week = rng.randint(0, 8)
        for w in range(first_week, n_weeks):
            if rng.random() < 0.12:
                continue  # holidays, sick weeks: no timesheet at all
            ts_id += 1
            week = BASE_MONDAY + timedelta(weeks=w)
            age = n_weeks - w
            if age <= 1:
                status = rng.choice(("draft", "draft", "submitted"))
            elif age <= 3:
                status = rng.choice(("submitted", "approved", "rejected", "draft"))
            else:
                status = "approved" if rng.random() < 0.95 else "rejected"
            submitted = None if status == "draft" else g.moment(week + timedelta(days=4), 15, 23)
            approver = manager if status == "approved" else None
            timesheets.append((ts_id, acc_id, week, status, submitted, approver, g.text()))
    _copy(
        conn,
        "public.timesheets",
        ("id", "account_id", "week_start", "status", "submitted_at", "approved_by", "notes"),
        timesheets,
    )

    # ---- entries: 3-5 days a week, 1-2 bookings a day; totals via one UPDATE afterwards
    entries = []
    entry_id = 99
    kinds = ("work",) * 12 + ("overtime", "training", "pto", "sick", "holiday")
    for ts in timesheets:
        for day in sorted(rng.sample(range(5), k=rng.randint(3, 5))):
            for _ in range(rng.choice((1, 1, 1, 2))):
                entry_id += 1
                work_date = ts[2] + timedelta(days=day)
                kind = rng.choice(kinds)
                hours = (
                    Decimal(rng.choice((8, 8, 8, 4, 2, 6)))
                    if kind != "work"
                    else (Decimal(rng.randint(25, 1000)) / 100)
                )
                entries.append(
                    (
                        entry_id,
                        ts[0],
                        work_date,
                        kind,
                        hours,
                        rng.choice(PROJECTS),
                        g.text() if rng.random() < 0.8 else g.sentence(),
                        kind in ("work", "overtime") and rng.random() < 0.85,
                        g.moment(work_date),
                    )
                )
    with conn.transaction():
        # One statement instead of a trigger-driven UPDATE per entry; the trigger itself is
        # left enabled afterwards, so the catalog is what the schema says.
        conn.execute("ALTER TABLE public.entries DISABLE TRIGGER entries_total_hours")
        _copy(
            conn,
            "public.entries",
            (
                "id",
                "timesheet_id",
                "work_date",
                "kind",
                "hours",
                "project_code",
                "description",
                "billable",
                "created_at",
            ),
            entries,
        )
        conn.execute("ALTER TABLE public.entries ENABLE TRIGGER entries_total_hours")
        conn.execute(
            "UPDATE public.timesheets t SET total_hours = s.total"
            "  FROM (SELECT timesheet_id, sum(hours) AS total FROM public.entries"
            "         GROUP BY timesheet_id) s"
            " WHERE s.timesheet_id = t.id"
        )

    # ---- notifications
    notifications = []
    for nid in range(1, 15 * n_accounts + 1):
        ts = rng.choice(timesheets)
        kind = rng.choice(
            (
                "timesheet.approved",
                "timesheet.rejected",
                "reminder.submit",
                "system.maintenance",
                "attachment.virus_scan",
            )
        )
        payload: dict[str, Any] = {"timesheet_id": ts[0], "week_start": ts[2].isoformat()}
        if kind == "reminder.submit":
            payload["deadline"] = g.moment(ts[2] + timedelta(days=4)).isoformat()
        elif kind == "system.maintenance":
            payload = {
                "window": {"from": "02:00", "to": "04:00", "tz": rng.choice(TIMEZONES)},
                "services": ["web", "db"],
                "severity": rng.randint(1, 5),
                "ratio": rng.random(),
                "big": 2**62 + nid,
                "message": rng.choice(AWKWARD_TEXT),
            }
        elif kind == "timesheet.rejected":
            payload["reason"] = g.text()
        created = g.moment(ts[2] + timedelta(days=rng.randint(4, 10)))
        read = None if rng.random() < 0.35 else created + timedelta(minutes=rng.randint(1, 5000))
        notifications.append((nid, ts[1], kind, Jsonb(payload), read, created))
    _copy(
        conn,
        "public.notifications",
        ("id", "account_id", "kind", "payload", "read_at", "created_at"),
        notifications,
    )

    # ---- attachments (metadata of files in the uploads volume)
    attachments = []
    for n in range(1, 6 * n_accounts + 1):
        ts = rng.choice(timesheets)
        ext, ctype = rng.choice(
            (
                ("pdf", "application/pdf"),
                ("png", "image/png"),
                ("jpg", "image/jpeg"),
                ("heic", "image/heic"),
                ("xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
            )
        )
        name = rng.choice(
            (
                "receipt",
                "Hotel Rechnung",
                "taxi \u2013 airport",
                "scan 2025",
                "IMG_4711",
                "reçu",
                "領収書",
                "-dash-first",
                "dots...in.name",
            )
        )
        original = f"{name}.{ext}"
        attachments.append(
            (
                g.uuid(),
                ts[0],
                None,
                f"{ts[1]}/{ts[0]}/{n:05d}.{ext}",
                original,
                ctype,
                rng.randint(0, 5_000_000),
                hashlib.sha256(f"attachment-{n}".encode()).digest(),
                g.blob(),
                g.moment(ts[2] + timedelta(days=rng.randint(0, 6))),
            )
        )
    # Link about half of the attachments to an entry of their timesheet.
    by_ts: dict[int, list[int]] = {}
    for e in entries:
        by_ts.setdefault(e[1], []).append(e[0])
    attachments = [
        (
            a[0],
            a[1],
            rng.choice(by_ts[a[1]]) if a[1] in by_ts and rng.random() < 0.5 else None,
            *a[3:],
        )
        for a in attachments
    ]
    _copy(
        conn,
        "public.attachments",
        (
            "id",
            "timesheet_id",
            "entry_id",
            "storage_path",
            "original_name",
            "content_type",
            "size_bytes",
            "sha256",
            "thumbnail",
            "uploaded_at",
        ),
        attachments,
    )

    # ---- audit events: no primary key, duplicates allowed
    audit = []
    for _ in range(12 * n_accounts):
        when = EPOCH + timedelta(seconds=rng.randint(0, n_weeks * 7 * 86400))
        addr = rng.choice(
            (
                None,
                ipaddress.IPv4Address(rng.getrandbits(32)),
                ipaddress.IPv6Address(rng.getrandbits(128)),
            )
        )
        audit.append(
            (
                when,
                rng.choice((None, rng.randint(1, n_accounts))),
                rng.choice(("login", "logout", "timesheet.submit", "export.csv")),
                None if rng.random() < 0.5 else Jsonb({"ua": rng.choice(AWKWARD_TEXT)}),
                addr,
            )
        )
    audit.append(audit[-1])  # an exact duplicate row
    _copy(
        conn,
        "public.audit_events",
        ("occurred_at", "actor_id", "action", "detail", "client_addr"),
        audit,
    )

    # ---- sequences past their tables' maxima, one not yet called; the materialized view
    conn.execute(
        "SELECT setval(pg_get_serial_sequence('public.accounts', 'id'), max(id) + 100) "
        "  FROM public.accounts"
    )
    conn.execute(
        "SELECT setval(pg_get_serial_sequence('public.timesheets', 'id'), max(id) + 1000) "
        "  FROM public.timesheets"
    )
    conn.execute(
        "SELECT setval(pg_get_serial_sequence('public.entries', 'id'), max(id) + 7) "
        "  FROM public.entries"
    )
    conn.execute(
        "SELECT setval(pg_get_serial_sequence('public.notifications', 'id'), max(id) + 50, false)"
        "  FROM public.notifications"
    )
    conn.execute("REFRESH MATERIALIZED VIEW reporting.weekly_hours")
    conn.execute("ANALYZE")
    return {
        "public.accounts": len(accounts),
        "public.timesheets": len(timesheets),
        "public.entries": len(entries),
        "public.notifications": len(notifications),
        "public.attachments": len(attachments),
        "public.audit_events": len(audit),
    }


def _copy(
    conn: psycopg.Connection[Any], table: str, columns: Iterable[str], rows: Iterable[Iterable[Any]]
) -> None:
    schema, name = table.split(".")
    stmt = sql.SQL("COPY {}.{} ({}) FROM STDIN").format(
        sql.Identifier(schema),
        sql.Identifier(name),
        sql.SQL(", ").join(sql.Identifier(c) for c in columns),
    )
    with conn.cursor() as cur, cur.copy(stmt) as copy:
        for row in rows:
            copy.write_row(tuple(row))


# ============================================================================ snapshot

_USER_NS = """
    n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
    AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%'
"""


def _not_ext_member(catalog: str, oid_expr: str) -> str:
    """SQL condition: the object is not part of an extension (CREATE EXTENSION restores those)."""
    return (
        f"NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = '{catalog}'::regclass"
        f" AND d.objid = {oid_expr} AND d.deptype = 'e')"
    )


_Q_RELATIONS = f"""
SELECT c.oid, format('%I.%I', n.nspname, c.relname), c.relkind::text, c.relpersistence::text,
       c.relrowsecurity, c.relforcerowsecurity, coalesce(c.reloptions, '{{}}')::text[],
       c.relispopulated, pg_get_userbyid(c.relowner), c.relacl::text[]
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S', 'c') AND {_USER_NS}
   AND {_not_ext_member("pg_class", "c.oid")}
 ORDER BY 2
"""

_Q_COLUMNS = """
SELECT a.attrelid, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(ad.adbin, ad.adrelid), a.attidentity::text, a.attgenerated::text,
       CASE WHEN a.attcollation <> t.typcollation THEN co.collname END,
       a.attacl::text[]
  FROM pg_attribute a
  JOIN pg_type t ON t.oid = a.atttypid
  LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
  LEFT JOIN pg_collation co ON co.oid = a.attcollation
 WHERE a.attrelid = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attrelid, a.attnum
"""

_Q_CONSTRAINTS = f"""
SELECT CASE WHEN con.conrelid <> 0 THEN format('%I.%I', n.nspname, c.relname)
            ELSE 'domain ' || format('%I.%I', tn.nspname, t.typname) END,
       con.conname, con.contype::text, pg_get_constraintdef(con.oid, true)
  FROM pg_constraint con
  LEFT JOIN pg_class c ON c.oid = con.conrelid
  LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_type t ON t.oid = con.contypid
  LEFT JOIN pg_namespace tn ON tn.oid = t.typnamespace
  JOIN pg_namespace cn ON cn.oid = con.connamespace
 WHERE {_USER_NS.replace("n.", "cn.")}
   AND (con.conrelid = 0 OR {_not_ext_member("pg_class", "con.conrelid")})
   AND (con.contypid = 0 OR {_not_ext_member("pg_type", "con.contypid")})
"""

_Q_INDEXES = f"""
SELECT format('%I.%I', n.nspname, ic.relname), pg_get_indexdef(i.indexrelid),
       i.indisclustered, i.indisreplident
  FROM pg_index i
  JOIN pg_class ic ON ic.oid = i.indexrelid
  JOIN pg_class c ON c.oid = i.indrelid
  JOIN pg_namespace n ON n.oid = ic.relnamespace
 WHERE {_USER_NS} AND {_not_ext_member("pg_class", "c.oid")}
"""

_Q_TRIGGERS = f"""
SELECT format('%I.%I', n.nspname, c.relname), t.tgname, pg_get_triggerdef(t.oid, true),
       t.tgenabled::text
  FROM pg_trigger t
  JOIN pg_class c ON c.oid = t.tgrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE NOT t.tgisinternal AND {_USER_NS}
"""

_Q_FUNCTIONS = f"""
SELECT p.oid::regprocedure::text, p.prokind::text,
       CASE WHEN p.prokind IN ('f', 'p', 'w') THEN pg_get_functiondef(p.oid) END,
       pg_get_userbyid(p.proowner), p.proacl::text[]
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE {_USER_NS} AND {_not_ext_member("pg_proc", "p.oid")}
"""

# Stand-alone types only: not the row types of tables nor the implicit array types.
_Q_TYPES = f"""
SELECT t.oid, format('%I.%I', n.nspname, t.typname), t.typtype::text,
       CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END,
       t.typnotnull, t.typdefault, pg_get_userbyid(t.typowner), t.typacl::text[],
       (SELECT array_agg(e.enumlabel ORDER BY e.enumsortorder)
          FROM pg_enum e WHERE e.enumtypid = t.oid)
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE {_USER_NS} AND {_not_ext_member("pg_type", "t.oid")}
   AND (t.typrelid = 0 OR (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c')
   AND NOT (t.typcategory = 'A' AND t.typelem <> 0)
   AND t.typtype <> 'm'
"""

_Q_SEQUENCES = f"""
SELECT format('%I.%I', n.nspname, c.relname), format_type(s.seqtypid, NULL), s.seqstart,
       s.seqincrement, s.seqmin, s.seqmax, s.seqcache, s.seqcycle,
       (SELECT format('%I.%I.%I (%s)', dn.nspname, dc.relname, a.attname, d.deptype)
          FROM pg_depend d
          JOIN pg_class dc ON dc.oid = d.refobjid
          JOIN pg_namespace dn ON dn.oid = dc.relnamespace
          JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
         WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
           AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i'))
  FROM pg_sequence s
  JOIN pg_class c ON c.oid = s.seqrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE {_USER_NS} AND {_not_ext_member("pg_class", "c.oid")}
"""

# Comments on anything created in this database (system objects have OIDs below 16384).
_Q_COMMENTS = """
SELECT pg_describe_object(d.classoid, d.objoid, d.objsubid), d.description
  FROM pg_description d
 WHERE d.objoid >= 16384
"""

_Q_SCHEMAS = f"""
SELECT n.nspname, pg_get_userbyid(n.nspowner), n.nspacl::text[]
  FROM pg_namespace n WHERE {_USER_NS}
"""

_Q_EXTENSIONS = """
SELECT e.extname, e.extversion, n.nspname
  FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
"""

_Q_DEFAULT_ACL = """
SELECT pg_get_userbyid(d.defaclrole), coalesce(n.nspname, '*'), d.defaclobjtype::text,
       d.defaclacl::text[]
  FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace
"""


def _acl(items: list[str] | None) -> list[str] | None:
    return sorted(items) if items is not None else None


def snapshot(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Everything a restore must reproduce, as a plain dict (see the module docstring).

    Runs in one read-only repeatable-read transaction when ``conn`` is in autocommit mode
    (otherwise inside the caller's transaction), so it is consistent even while others write.
    """
    data: dict[str, Any] = {}
    sequences: dict[str, Any] = {}
    catalog: dict[str, Any] = {
        "schemas": [],
        "relations": {},
        "constraints": {},
        "indexes": {},
        "views": {},
        "triggers": {},
        "functions": {},
        "types": {},
        "sequences": {},
        "comments": {},
        "extensions": {},
    }
    owners: dict[str, str] = {}
    acl: dict[str, Any] = {}

    with conn.transaction():
        if conn.autocommit:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        # Fully qualified names everywhere, whatever the session's search_path.
        conn.execute("SELECT set_config('search_path', 'pg_catalog', true)")
        cur = conn.cursor()

        for nsp, owner, nspacl in cur.execute(_Q_SCHEMAS).fetchall():
            catalog["schemas"].append(nsp)
            owners[f"schema {nsp}"] = owner
            if nspacl is not None:
                acl[f"schema {nsp}"] = _acl(nspacl)
        catalog["schemas"].sort()

        rels = cur.execute(_Q_RELATIONS).fetchall()
        names_by_oid = {r[0]: r[1] for r in rels}
        for (
            _oid,
            name,
            kind,
            persistence,
            rls,
            force_rls,
            options,
            populated,
            owner,
            relacl,
        ) in rels:
            catalog["relations"][name] = {
                "kind": kind,
                "persistence": persistence,
                "rls": [rls, force_rls],
                "options": sorted(options),
                "columns": [],
            }
            owners[f"relation {name}"] = owner
            if relacl is not None:
                acl[f"relation {name}"] = _acl(relacl)
            if kind in ("r", "m") and (kind == "r" or populated):
                data[name] = _table_fingerprint(conn, name)
            if kind == "m":
                catalog["relations"][name]["populated"] = populated
        for relid, col, typ, notnull, default, identity, generated, coll, attacl in cur.execute(
            _Q_COLUMNS, (list(names_by_oid),)
        ).fetchall():
            rel = names_by_oid[relid]
            catalog["relations"][rel]["columns"].append(
                {
                    "name": col,
                    "type": typ,
                    "not_null": notnull,
                    "default": default,
                    "identity": identity or None,
                    "generated": generated or None,
                    "collation": coll,
                }
            )
            if attacl is not None:
                acl[f"column {rel}.{col}"] = _acl(attacl)

        for rel, conname, contype, definition in cur.execute(_Q_CONSTRAINTS).fetchall():
            catalog["constraints"][f"{rel} {conname}"] = f"[{contype}] {definition}"
        for name, definition, clustered, replident in cur.execute(_Q_INDEXES).fetchall():
            flags = (" CLUSTERED" if clustered else "") + (" REPLICA IDENTITY" if replident else "")
            catalog["indexes"][name] = definition + flags
        for oid, name, kind, *_ in rels:
            if kind in ("v", "m"):
                catalog["views"][name] = cur.execute(
                    "SELECT pg_get_viewdef(%s::oid, true)", (oid,)
                ).fetchone()[0]  # type: ignore[index]
        for rel, tgname, definition, enabled in cur.execute(_Q_TRIGGERS).fetchall():
            catalog["triggers"][f"{rel} {tgname}"] = f"[{enabled}] {definition}"
        for signature, kind, definition, owner, proacl in cur.execute(_Q_FUNCTIONS).fetchall():
            catalog["functions"][signature] = f"[{kind}] {definition or ''}"
            owners[f"function {signature}"] = owner
            if proacl is not None:
                acl[f"function {signature}"] = _acl(proacl)
        for _oid, name, kind, base, notnull, default, owner, typacl, labels in cur.execute(
            _Q_TYPES
        ).fetchall():
            catalog["types"][name] = {
                "kind": kind,
                "base": base,
                "not_null": notnull,
                "default": default,
                "labels": labels,
            }
            owners[f"type {name}"] = owner
            if typacl is not None:
                acl[f"type {name}"] = _acl(typacl)
        for name, typ, start, inc, lo, hi, cache, cycle, owned_by in cur.execute(
            _Q_SEQUENCES
        ).fetchall():
            catalog["sequences"][name] = {
                "type": typ,
                "start": start,
                "increment": inc,
                "min": lo,
                "max": hi,
                "cache": cache,
                "cycle": cycle,
                "owned_by": owned_by,
            }
            row = cur.execute(
                sql.SQL("SELECT last_value, is_called FROM {}").format(
                    sql.Identifier(*_split_name(name))
                )
            ).fetchone()
            assert row is not None
            sequences[name] = {"last_value": row[0], "is_called": row[1]}
        for obj, description in cur.execute(_Q_COMMENTS).fetchall():
            catalog["comments"][obj] = description
        for extname, version, nsp in cur.execute(_Q_EXTENSIONS).fetchall():
            # No owner: pg_dump does not record it, CREATE EXTENSION makes the restoring
            # user the owner, so it never survives a restore by someone else.
            catalog["extensions"][extname] = {"version": version, "schema": nsp}
        for role, nsp, objtype, defacl in cur.execute(_Q_DEFAULT_ACL).fetchall():
            acl[f"default {role} {nsp} {objtype}"] = _acl(defacl)

    return {"data": data, "sequences": sequences, "catalog": catalog, "owners": owners, "acl": acl}


def _split_name(qualified: str) -> tuple[str, str]:
    """Split ``format('%I.%I')`` output back into its two identifiers."""
    parts: list[str] = []
    buf, quoted, i = "", False, 0
    while i < len(qualified):
        ch = qualified[i]
        if quoted:
            if ch == '"' and qualified[i + 1 : i + 2] == '"':
                buf += '"'
                i += 1
            elif ch == '"':
                quoted = False
            else:
                buf += ch
        elif ch == '"':
            quoted = True
        elif ch == ".":
            parts.append(buf)
            buf = ""
        else:
            buf += ch
        i += 1
    parts.append(buf)
    if len(parts) != 2:
        raise ValueError(f"not a schema-qualified name: {qualified!r}")
    return parts[0], parts[1]


def _table_fingerprint(conn: psycopg.Connection[Any], qualified: str) -> dict[str, Any]:
    """Row count and an order-independent hash of a table's rows, computed by the server.

    Each row's text form is hashed and the sorted row hashes are hashed again: equal for
    equal multisets of rows (duplicates count), whatever the physical order or collation.
    """
    row = conn.execute(
        sql.SQL(
            "SELECT count(*), md5(coalesce(string_agg(h, '' ORDER BY h), ''))"
            "  FROM (SELECT md5(t::text) AS h FROM ONLY {} t) rows"
        ).format(sql.Identifier(*_split_name(qualified)))
    ).fetchone()
    assert row is not None
    return {"rows": row[0], "md5": row[1]}


def user_tables(conn: psycopg.Connection[Any]) -> list[str]:
    """schema.table of every ordinary and partitioned table outside the system schemas."""
    return [r[0] for r in conn.execute(
        "SELECT nspname || '.' || relname FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE relkind IN ('r', 'p') "
        "AND nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1")]


def count_rows(conn: psycopg.Connection[Any], table: str) -> int:
    """count(*) of a table named schema.table (each part quoted as an identifier)."""
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
        sql.Identifier(*table.split(".", 1)))).fetchone()
    assert row is not None
    return int(row[0])


def row_counts(snap: Mapping[str, Any]) -> dict[str, int]:
    """``{table: rows}`` from a snapshot, handy for quick assertions and messages."""
    return {name: fp["rows"] for name, fp in snap["data"].items()}


# ============================================================================ comparison


def flatten(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Nested dicts to ``{(key, key, ...): leaf}``; lists and scalars are leaves."""
    if isinstance(tree, Mapping) and tree:
        out: dict[tuple[str, ...], Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, (*prefix, str(key))))
        return out
    return {prefix: tree}


def _excluded(path: tuple[str, ...], exclude: Iterable[str]) -> bool:
    joined = "/".join(path)
    return any(joined == e or joined.startswith(e.rstrip("/") + "/") for e in exclude)


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 20] + f"... ({len(text)} chars)"


def diff(a: Mapping[str, Any], b: Mapping[str, Any], exclude: Iterable[str] = ()) -> list[str]:
    """Readable differences between two snapshots (empty when equal).

    ``exclude`` holds paths to ignore, as ``part`` or ``part/key/...`` (e.g. ``"owners"``,
    ``"acl"``, ``"data/public.audit_events"``).
    """
    exclude = tuple(exclude)
    fa, fb = flatten(a), flatten(b)
    lines = []
    for path in sorted(set(fa) | set(fb)):
        if _excluded(path, exclude):
            continue
        where = "/".join(path)
        if path not in fb:
            lines.append(f"- {where}: only in first: {_short(fa[path])}")
        elif path not in fa:
            lines.append(f"+ {where}: only in second: {_short(fb[path])}")
        elif fa[path] != fb[path]:
            lines.append(f"~ {where}: {_short(fa[path])} != {_short(fb[path])}")
    return lines


def assert_same(
    a: Mapping[str, Any], b: Mapping[str, Any], exclude: Iterable[str] = (), max_lines: int = 60
) -> None:
    """Raise AssertionError listing every difference between snapshots ``a`` and ``b``."""
    lines = diff(a, b, exclude)
    if lines:
        shown = lines[:max_lines]
        more = f"\n... and {len(lines) - max_lines} more" if len(lines) > max_lines else ""
        raise AssertionError(
            f"database snapshots differ in {len(lines)} place(s):\n" + "\n".join(shown) + more
        )
