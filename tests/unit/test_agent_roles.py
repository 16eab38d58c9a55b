"""Roles for disaster recovery (agent/roles.py): pg_dumpall's arguments, and the plan that
replays its output onto a server idempotently without locking the admin out."""

from __future__ import annotations

import pytest

from timesheet_backup.agent import roles
from timesheet_backup.agent.pgtools import Connection

pytestmark = pytest.mark.unit

# PostgreSQL 16+'s shape (GRANTED BY, WITH INHERIT) and the \restrict lines of current minors.
DUMP = '''\
\\restrict abc123
--
-- PostgreSQL database cluster dump
--

SET default_transaction_read_only = off;
SET client_encoding = 'UTF8';

--
-- Roles
--

CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS;
CREATE ROLE timesheet;
ALTER ROLE timesheet WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION;
COMMENT ON ROLE timesheet IS 'the app; it owns timesheet_db -- not a comment';
CREATE ROLE "Reporting ""ro""";
ALTER ROLE "Reporting ""ro""" WITH NOSUPERUSER INHERIT NOLOGIN;
ALTER ROLE timesheet SET search_path TO 'app', 'public';

--
-- Role memberships
--

GRANT "Reporting ""ro""" TO timesheet WITH INHERIT TRUE GRANTED BY postgres;
GRANT pg_read_all_data TO "Reporting ""ro""" GRANTED BY postgres;
GRANT timesheet TO admin GRANTED BY postgres;

\\unrestrict abc123
'''


def conn() -> Connection:
    return Connection(host="db", user="timesheet", dbname="timesheet_db")


def test_dump_args_leave_passwords_out_by_default() -> None:
    args = roles.pg_dumpall_roles_args(conn())
    assert args[:3] == ["pg_dumpall", "--no-password", "--roles-only"]
    assert "--no-role-passwords" in args
    assert "--globals-only" not in args  # no tablespaces: their paths are the old disk's
    assert args[-2] == "--dbname" and "user='timesheet'" in args[-1]


def test_dump_args_with_passwords() -> None:
    assert "--no-role-passwords" not in roles.pg_dumpall_roles_args(conn(), with_passwords=True)


def test_passwords_hint() -> None:
    detail = "pg_dumpall: error: query failed: ERROR: permission denied for table pg_authid"
    assert "superuser" in (roles.passwords_need_superuser_hint(detail) or "")
    assert roles.passwords_need_superuser_hint("connection refused") is None


def test_split_statements_respects_quotes_comments_and_meta_commands() -> None:
    statements = list(roles.split_statements(DUMP))
    assert not any(s.startswith("\\") for s in statements)
    assert "COMMENT ON ROLE timesheet IS 'the app; it owns timesheet_db -- not a comment'" \
        in statements
    assert 'CREATE ROLE "Reporting ""ro"""' in statements
    assert len(statements) == 13


def test_split_statement_without_final_semicolon() -> None:
    assert list(roles.split_statements("SET a = 1;\nCREATE ROLE x")) == ["SET a = 1",
                                                                       "CREATE ROLE x"]


def test_fresh_server_as_superuser_creates_everything_but_protected_roles() -> None:
    plan = roles.plan_roles_restore(DUMP, existing_roles={"postgres", "admin", "pg_monitor"},
                                    connecting_role="admin", target_superusers={"postgres",
                                                                                "admin"})
    assert plan.created == ["timesheet", 'Reporting "ro"']
    assert plan.altered == []
    assert plan.skipped == {"postgres": "a superuser on the target",
                            "admin": "the role the restore connects as"}
    assert not any("postgres WITH" in s for s in plan.statements)
    assert not any("TO admin" in s for s in plan.statements)
    assert not any("GRANTED BY" in s for s in plan.statements)
    assert 'GRANT "Reporting ""ro""" TO timesheet WITH INHERIT TRUE' in plan.statements
    assert plan.memberships == 2
    assert "2 role(s) created" in plan.describe()


def test_second_run_alters_instead_of_creating() -> None:
    plan = roles.plan_roles_restore(
        DUMP, existing_roles={"postgres", "admin", "timesheet", 'Reporting "ro"'},
        connecting_role="admin", target_superusers={"postgres", "admin"})
    assert plan.created == []
    assert plan.altered == ["timesheet", 'Reporting "ro"']
    assert not any(s.startswith("CREATE ROLE") for s in plan.statements)
    assert "ALTER ROLE timesheet SET search_path TO 'app', 'public'" in plan.statements


def test_connecting_as_a_role_in_the_dump_leaves_it_alone() -> None:
    plan = roles.plan_roles_restore(DUMP, existing_roles={"timesheet"},
                                    connecting_role="timesheet", target_superusers=set())
    assert plan.skipped["timesheet"] == "the role the restore connects as"
    assert not any("ROLE timesheet" in s or s.endswith("TO timesheet") for s in plan.statements)
    # The bootstrap superuser of the source is created on a target that lacks it: DR.
    assert "postgres" in plan.created


def test_builtin_roles_are_never_created_or_altered() -> None:
    dump = "CREATE ROLE pg_monitor;\nALTER ROLE pg_monitor WITH NOLOGIN;\nGRANT x TO pg_monitor;"
    plan = roles.plan_roles_restore(dump, set(), "admin", set())
    assert plan.statements == []
    assert plan.skipped == {"pg_monitor": "built-in"}


def test_drop_role_is_never_replayed_and_unknown_statements_are_reported() -> None:
    dump = "DROP ROLE IF EXISTS timesheet;\nCREATE TABLESPACE t LOCATION '/x';"
    plan = roles.plan_roles_restore(dump, set(), "admin", set())
    assert plan.statements == []
    assert plan.skipped == {"CREATE TABLESPACE t": "unrecognised statement"}


def test_observed_roles() -> None:
    assert roles.observed_roles([("a", True), ("b", False)]) == ({"a", "b"}, {"a"})
