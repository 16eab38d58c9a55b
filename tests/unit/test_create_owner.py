"""The owner of a database a restore creates: Restore `database.owner` -> the Job's
`--create-owner` -> `CREATE DATABASE ... OWNER` with a quoted identifier."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg import sql

from timesheet_backup.agent import postgres
from timesheet_backup.agent.pgtools import Connection
from timesheet_backup.agent.restore import RestoreRequest
from timesheet_backup.api import crds, models
from timesheet_backup.api.fields import dump, parse
from timesheet_backup.cli import build_parser
from timesheet_backup.errors import ConfigError, DatabaseError
from timesheet_backup.jobs import agent_args

pytestmark = pytest.mark.unit


def resolved(**database: Any) -> dict[str, Any]:
    """A Restore's status.resolved, as actions/restores.py resolve() writes it."""
    return {
        "storage": {"bucket": "backups", "prefix": "timesheet"},
        "manifestKey": "timesheet/prod/nightly/manifest.json",
        "components": ["database"],
        "database": {
            "host": "db",
            "name": "timesheet_db",
            "user": "timesheet",
            "passwordSecretRef": {"name": "timesheet-db", "key": "password"},
            **database,
        },
    }


def test_owner_is_a_restore_target_field() -> None:
    spec = parse(
        models.RestoreSpec,
        {"backupName": "nightly", "database": {"createDatabase": True, "owner": "timesheet"}},
    )
    assert spec.database is not None and spec.database.owner == "timesheet"
    assert dump(spec.database) == {
        "createDatabase": True,
        "owner": "timesheet",
        "clean": True,
        "noOwner": False,
        "globals": False,
        "dropAfter": False,
        "dataOnly": False,
        "schemaOnly": False,
    }
    (definition,) = [d for d in crds.DEFINITIONS if d.kind == "Restore"]
    schema = crds.crd(definition)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    target = schema["properties"]["spec"]["properties"]["database"]
    assert target["properties"]["owner"]["maxLength"] == 63
    assert (
        "CREATE DATABASE timesheet_db OWNER timesheet"
        in target["properties"]["owner"]["description"]
    )
    rules = [r["rule"] for r in target["x-kubernetes-validations"]]
    assert any("self.owner" in r and "self.createDatabase" in r for r in rules)


def test_job_args_carry_the_owner() -> None:
    spec = models.RestoreSpec(backup_name="nightly")
    args = agent_args.restore_args(spec, resolved(createDatabase=True, owner="timesheet"))
    assert "--create-database" in args
    assert "--create-owner=timesheet" in args
    # one argument, whatever the name looks like: never read as a flag, never split
    args = agent_args.restore_args(spec, resolved(createDatabase=True, owner="-x y'z"))
    assert "--create-owner=-x y'z" in args
    args = agent_args.restore_args(spec, resolved(createDatabase=True))
    assert not [a for a in args if a.startswith("--create-owner")]


def test_agent_parses_the_job_args() -> None:
    spec = models.RestoreSpec(backup_name="nightly")
    args = agent_args.restore_args(spec, resolved(createDatabase=True, owner="-x y'z"))
    parsed = build_parser().parse_args(args)
    assert parsed.create_database is True
    assert parsed.create_owner == "-x y'z"
    assert build_parser().parse_args(agent_args.restore_args(spec, resolved())).create_owner is None


def test_owner_needs_create_database() -> None:
    with pytest.raises(ConfigError, match="--create-owner needs --create-database"):
        RestoreRequest(manifest_key="k", create_owner="timesheet").validate()
    with pytest.raises(ConfigError, match="must name a role"):
        RestoreRequest(manifest_key="k", create_database=True, create_owner="").validate()
    RestoreRequest(manifest_key="k", create_database=True, create_owner="timesheet").validate()


class _Recorder:
    """Stands in for a psycopg connection: records the statements it is given."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def __enter__(self) -> _Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def execute(self, statement: sql.Composable) -> None:
        assert isinstance(statement, sql.Composable)  # composed, never a formatted string
        self.statements.append(statement.as_string(None))


@pytest.mark.parametrize(
    ("owner", "expected"),
    [
        (None, 'CREATE DATABASE "new db"'),
        ("timesheet", 'CREATE DATABASE "new db" OWNER "timesheet"'),
        ('ts "owner"; DROP', 'CREATE DATABASE "new db" OWNER "ts ""owner""; DROP"'),
    ],
)
def test_create_database_quotes_the_owner(
    monkeypatch: pytest.MonkeyPatch, owner: str | None, expected: str
) -> None:
    recorder = _Recorder()
    used: list[Connection] = []

    def fake_connect(conn: Connection, autocommit: bool = True) -> _Recorder:
        used.append(conn)
        return recorder

    monkeypatch.setattr(postgres, "_connect", fake_connect)
    conn = Connection(host="db", user="timesheet", dbname="new db")
    postgres.create_database(conn, "postgres", owner=owner)
    assert recorder.statements == [expected]
    assert used[0].dbname == "postgres"  # run from the maintenance database


@pytest.mark.parametrize(
    ("error", "owner", "hint"),
    [
        ("permission denied to create database", None, "'timesheet' needs the CREATEDB"),
        ('must be member of role "payroll"', "payroll", "must be a member of that role"),
    ],
)
def test_create_database_errors_say_which_privilege(
    monkeypatch: pytest.MonkeyPatch, error: str, owner: str | None, hint: str
) -> None:
    import psycopg

    class Refusing(_Recorder):
        def execute(self, statement: sql.Composable) -> None:
            raise psycopg.errors.InsufficientPrivilege(error)

    monkeypatch.setattr(postgres, "_connect", lambda conn, autocommit=True: Refusing())
    conn = Connection(host="db", user="timesheet", dbname="new_db")
    with pytest.raises(DatabaseError) as info:
        postgres.create_database(conn, "postgres", owner=owner)
    message = str(info.value)
    assert message.startswith("cannot create database 'new_db': " + error)
    assert hint in message
