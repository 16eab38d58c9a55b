"""A timesheet-like database of a chosen size, generated inside the server.

Why not tests/support/timesheet_schema.sql: its triggers, deferred foreign keys and check
constraints (ISO weeks, one timesheet per person and week) make bulk generation slow and
fiddly; a benchmark needs gigabytes in minutes. This schema keeps the tables, column types
and indexes that shape a dump's cost: free text written from a vocabulary (compresses like
prose, about 3x), jsonb notification payloads, numbers and dates, and bytea attachments of
which a part is random (thumbnails: already-compressed images, incompressible).

Everything is produced by `INSERT ... SELECT generate_series(...)` in the server, in two
sessions at once (one per core), so only rows cross no wire.
"""

# SQL is built only from this module's constants; the word list reads better as one string.
# ruff: noqa: S608, SIM905
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg

WORDS = (
    "the a of to and in for on with at by from review client meeting call design build test "
    "deploy fix bug feature release sprint planning retro standup report invoice budget "
    "timesheet approval onboarding training travel workshop documentation analysis migration "
    "database backup restore server network security audit compliance support ticket customer "
    "vendor contract proposal estimate schedule roadmap milestone delivery handover research "
    "prototype refactor cleanup upgrade patch hotfix incident outage postmortem monitoring "
    "alerting dashboard metrics logging pipeline integration api endpoint frontend backend "
    "mobile web android ios payroll expenses receipts hours overtime holiday leave sick "
    "northstar project alpha beta gamma delta phoenix atlas orion hermes zeus apollo internal "
    "external weekly monthly quarterly annual prepared updated reviewed discussed implemented "
    "completed started continued blocked waiting pending approved rejected submitted draft "
    "with team lead manager director finance legal hr operations engineering product sales "
    "marketing berlin london paris madrid remote office onsite morning afternoon evening "
    "notes follow up action items next steps agreed scope change request estimate revised "
    "slides spreadsheet email chat phone video call workshop interview candidate hiring"
).split()

SCHEMA = """
CREATE TABLE accounts (
    id integer PRIMARY KEY, email text NOT NULL UNIQUE, display_name text NOT NULL,
    role text NOT NULL, preferences jsonb NOT NULL, hourly_rate numeric(8,2),
    created_at timestamptz NOT NULL);
CREATE TABLE timesheets (
    id bigint PRIMARY KEY, account_id integer NOT NULL REFERENCES accounts (id),
    week_start date NOT NULL, status text NOT NULL, total_hours numeric(6,2) NOT NULL,
    reference text NOT NULL, notes text);
CREATE TABLE entries (
    id bigint PRIMARY KEY, timesheet_id bigint NOT NULL REFERENCES timesheets (id),
    work_date date NOT NULL, kind text NOT NULL, hours numeric(5,2) NOT NULL,
    project_code varchar(32) NOT NULL, description text, billable boolean NOT NULL,
    created_at timestamptz NOT NULL);
CREATE TABLE notifications (
    id bigint PRIMARY KEY, account_id integer NOT NULL REFERENCES accounts (id),
    kind text NOT NULL, payload jsonb NOT NULL, read_at timestamptz,
    created_at timestamptz NOT NULL);
CREATE TABLE attachments (
    id bigint PRIMARY KEY, timesheet_id bigint NOT NULL REFERENCES timesheets (id),
    original_name text NOT NULL, content_type text NOT NULL, size_bytes bigint NOT NULL,
    sha256 bytea NOT NULL, thumbnail bytea, uploaded_at timestamptz NOT NULL);
"""

INDEXES = """
CREATE INDEX entries_timesheet_idx ON entries (timesheet_id, work_date);
CREATE INDEX entries_project_idx ON entries (project_code) WHERE billable;
CREATE INDEX timesheets_account_idx ON timesheets (account_id, week_start);
CREATE INDEX notifications_account_idx ON notifications (account_id, created_at);
CREATE INDEX notifications_payload_gin ON notifications USING gin (payload jsonb_path_ops);
CREATE INDEX attachments_timesheet_idx ON attachments (timesheet_id);
"""

# Rows per GiB of database (measured: pg_database_size of a generated database, indexes
# included, lands within a few percent of the requested size).
ENTRIES_PER_GIB = 2_000_000
ACCOUNTS = 5_000


def _w() -> str:
    """An expression that yields one random word of the vocabulary."""
    return "(w[1 + floor(random() * array_length(w, 1))::int])"


def _words(n: int) -> str:
    return " || ' ' || ".join([_w()] * n)


VOCAB = "(SELECT ARRAY[" + ",".join(f"'{w}'" for w in WORDS) + "]::text[] AS w) v"


def statements(gib: float) -> tuple[list[str], list[str]]:
    """Two lists of INSERT statements (one per session), in dependency-safe order."""
    entries = max(1000, int(ENTRIES_PER_GIB * gib))
    timesheets = max(100, entries // 20)
    notifications = entries // 4
    attachments = entries // 24
    accounts = f"""
INSERT INTO accounts
SELECT i, 'user' || i || '@' || {_w()} || '.example.com', initcap({_words(2)}),
       (ARRAY['employee','approver','admin'])[1 + i % 3],
       jsonb_build_object('theme', (ARRAY['dark','light'])[1 + i % 2],
                          'tz', (ARRAY['Europe/Berlin','UTC','America/New_York'])[1 + i % 3],
                          'notify', jsonb_build_object('email', i % 2 = 0, 'digest', i % 5)),
       round((random() * 150)::numeric, 2), now() - random() * interval '1500 days'
FROM generate_series(1, {ACCOUNTS}) i, {VOCAB}"""
    ts = f"""
INSERT INTO timesheets
SELECT i, 1 + i % {ACCOUNTS}, date '2020-01-06' + 7 * (i / {ACCOUNTS})::int,
       (ARRAY['draft','submitted','approved','rejected'])[1 + (random() * 3)::int],
       round((random() * 50)::numeric, 2), 'TS-' || lpad(i::text, 8, '0'),
       CASE WHEN random() < 0.4 THEN {_words(12)} END
FROM generate_series(1, {timesheets}) i, {VOCAB}"""
    en = f"""
INSERT INTO entries
SELECT i, 1 + ((i - 1) / 20) % {timesheets}, date '2020-01-06' + (random() * 2000)::int,
       (ARRAY['work','overtime','pto','sick','holiday','training'])[1 + (random() * 5)::int],
       round((random() * 10)::numeric, 2), 'PRJ-' || (1 + (random() * 400)::int),
       left({_words(16)}, 20 + (random() * 120)::int), random() < 0.8,
       timestamptz '2020-01-06' + random() * interval '2000 days'
FROM generate_series(1, {entries}) i, {VOCAB}"""
    no = f"""
INSERT INTO notifications
SELECT i, 1 + (random() * ({ACCOUNTS} - 1))::int,
       (ARRAY['submitted','approved','rejected','reminder','comment'])[1 + (random() * 4)::int],
       jsonb_build_object('title', {_words(5)}, 'body', {_words(14)},
                          'timesheet', (random() * {timesheets})::bigint,
                          'actor', jsonb_build_object('id', (random() * {ACCOUNTS})::int,
                                                      'name', initcap({_words(2)})),
                          'hours', round((random() * 45)::numeric, 1),
                          'link', '/timesheets/' || md5(random()::text)),
       CASE WHEN random() < 0.7 THEN now() - random() * interval '900 days' END,
       now() - random() * interval '1000 days'
FROM generate_series(1, {notifications}) i, {VOCAB}"""
    # Thumbnails: 60% random bytes (images are compressed already), 40% without one.
    at = f"""
INSERT INTO attachments
SELECT i, 1 + (i % {timesheets}), {_w()} || '-' || i || '.pdf', 'application/pdf',
       (random() * 5e6)::bigint, sha256(i::text::bytea),
       CASE WHEN random() < 0.6 THEN
           gen_random_bytes(1024) || gen_random_bytes(1024) || gen_random_bytes(1024)
           || gen_random_bytes(1 + (random() * 1023)::int) END,
       now() - random() * interval '1000 days'
FROM generate_series(1, {attachments}) i, {VOCAB}"""
    return [accounts, ts, at], [en, no]


def generate(connect: Callable[[], psycopg.Connection[Any]], gib: float) -> None:
    """Create the schema and fill it to about `gib` GiB (connect() opens the target db)."""
    with connect() as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto")
        conn.execute(SCHEMA)
        conn.commit()
    first, second = statements(gib)
    errors: list[BaseException] = []

    def session(stmts: list[str]) -> None:
        try:
            with connect() as conn:
                # The generator's ids are consistent by construction: replica mode skips the
                # triggers that check foreign keys row by row.
                conn.execute("SET session_replication_role = replica")
                for stmt in stmts:
                    conn.execute(stmt)
                    conn.commit()
        except BaseException as exc:  # re-raised below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=session, args=(part,)) for part in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    with connect() as conn:
        conn.autocommit = True
        conn.execute(INDEXES)
        conn.execute("VACUUM (ANALYZE)")
