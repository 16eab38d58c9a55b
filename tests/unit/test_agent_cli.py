"""The agent's command line: parsing, environment fallbacks, the failure contract."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from timesheet_backup.agent import cli
from timesheet_backup.cli import build_parser, main
from timesheet_backup.errors import ConfigError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("16777216", 16 << 20),
        ("16MiB", 16 << 20),
        ("16M", 16 << 20),
        ("512k", 512 << 10),
        ("1GiB", 1 << 30),
        ("7b", 7),
        (" 5 MiB ", 5 << 20),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert cli.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MiB", "-5", "5 TB", "1.5MiB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_size(text)


def test_parse_label() -> None:
    assert cli.parse_label("a=b=c") == ("a", "b=c")
    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_label("novalue")


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


S3 = ("--bucket", "b")


def test_backup_arguments() -> None:
    args = parse(
        "agent",
        "backup",
        "--namespace",
        "ns",
        "--name",
        "n",
        "--component",
        "database",
        "--db-host",
        "h",
        "--db-name",
        "d",
        "--db-table",
        "a",
        "--db-table",
        "b",
        "--age-recipient",
        "age1x",
        "--age-recipient",
        "age1y",
        "--part-size",
        "32MiB",
        *S3,
    )
    assert args.run is cli.run_backup_command
    assert args.components == ["database"]
    assert args.db_table == ["a", "b"] and args.age_recipient == ["age1x", "age1y"]
    assert args.part_size == 32 << 20 and args.concurrency == 4
    assert args.compression == "zstd" and args.db_format == "custom"
    assert args.termination_message_path == "/dev/termination-log"


def test_restore_and_catalog_arguments() -> None:
    args = parse(
        "agent",
        "restore",
        "--manifest-key",
        "k",
        "--check",
        "SELECT 1",
        "--check",
        "SELECT 2",
        "--uploads-mode",
        "merge",
        *S3,
    )
    assert args.run is cli.run_restore_command and args.checks == ["SELECT 1", "SELECT 2"]
    assert args.verify == "before" and args.uploads_mode == "merge"
    assert parse("catalog", "list", *S3).run is cli.run_catalog_list
    assert parse("catalog", "import", "--namespace", "n", "--name", "x", *S3).run is (
        cli.run_catalog_import
    )


def test_invalid_choice_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse("agent", "backup", "--namespace", "n", "--name", "x", "--compression", "lz4", *S3)
    assert info.value.code == 2


def test_connection_falls_back_to_libpq_environment() -> None:
    args = parse("agent", "backup", "--namespace", "n", "--name", "x", *S3)
    env = {"PGHOST": "envhost", "PGPORT": "6543", "PGUSER": "envuser", "PGSSLMODE": "require"}
    conn = cli.connection_from_args(args, env, "db")
    assert (conn.host, conn.port, conn.user, conn.dbname, conn.sslmode) == (
        "envhost",
        6543,
        "envuser",
        "db",
        "require",
    )
    args = parse(
        "agent",
        "backup",
        "--namespace",
        "n",
        "--name",
        "x",
        "--db-host",
        "flag",
        "--db-port",
        "1234",
        *S3,
    )
    conn = cli.connection_from_args(args, env, "db")
    assert (conn.host, conn.port) == ("flag", 1234)
    with pytest.raises(ConfigError):
        cli.connection_from_args(
            parse("agent", "backup", "--namespace", "n", "--name", "x", *S3),
            {"PGPORT": "abc"},
            "db",
        )


def run_main(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, dict[str, object]]:
    term = tmp_path / "term.json"
    code = main([*argv, "--termination-message-path", str(term)])
    err = capsys.readouterr().err
    return code, err, json.loads(term.read_text())


def test_config_error_contract(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGPASSWORD", "sup3r-secret")
    code, err, term = run_main(
        [
            "agent",
            "backup",
            "--namespace",
            "ns",
            "--name",
            "n",
            "--component",
            "database",
            "--db-host",
            "h",
            "--db-user",
            "u",
            "--db-name",
            "d",
            "--db-format",
            "plain",
            "--db-jobs",
            "3",
            *S3,
        ],
        tmp_path,
        capsys,
    )
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error: a parallel dump")
    assert "Traceback" not in err
    assert term == {"ok": False, "reason": "InvalidConfiguration", "error": err.strip()[7:]}


def test_restore_needs_a_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err, term = run_main(["agent", "restore", *S3], tmp_path, capsys)
    assert code == 2 and "--manifest-key" in err and term["ok"] is False


def test_secret_in_an_error_is_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TSB_AGE_IDENTITY", "AGE-SECRET-KEY-1NOTVALIDBUTSECRET")

    def boom(args: argparse.Namespace) -> int:
        return cli._execute(
            args,
            lambda: (_ for _ in ()).throw(ConfigError("bad key AGE-SECRET-KEY-1NOTVALIDBUTSECRET")),
        )

    monkeypatch.setattr(cli, "run_restore_command", boom)
    args = parse("agent", "restore", "--manifest-key", "k", *S3)
    args.termination_message_path = str(tmp_path / "t")
    assert boom(args) == 2
    err = capsys.readouterr().err
    assert "NOTVALIDBUTSECRET" not in err and "***" in err
    assert "NOTVALIDBUTSECRET" not in (tmp_path / "t").read_text()


def test_unexpected_exception_is_reported_as_internal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = parse("agent", "restore", "--manifest-key", "k", *S3)
    args.termination_message_path = str(tmp_path / "t")

    def bug() -> dict[str, object]:
        raise KeyError("oops")

    assert cli._execute(args, bug) == cli.EXIT_INTERNAL
    term = json.loads((tmp_path / "t").read_text())
    assert term["reason"] == "InternalError" and "KeyError" in term["error"]
    assert "Traceback" in capsys.readouterr().err  # a bug keeps its traceback


def test_globals_requests_are_checked() -> None:
    from timesheet_backup.agent.backup import BackupRequest
    from timesheet_backup.agent.pgtools import Connection
    from timesheet_backup.agent.restore import RestoreRequest

    conn = Connection(host="db", user="timesheet", dbname="timesheet_db")
    BackupRequest(backup_id="b", namespace="n", name="x", components=("database",),
                  database=conn, roles=True, role_passwords=True).validate()
    with pytest.raises(ConfigError, match="--db-globals-passwords needs --db-globals"):
        BackupRequest(backup_id="b", namespace="n", name="x", components=("database",),
                      database=conn, role_passwords=True).validate()
    with pytest.raises(ConfigError, match="--db-globals needs the database component"):
        BackupRequest(backup_id="b", namespace="n", name="x", components=("uploads",),
                      uploads_dir=Path("/u"), roles=True).validate()
    RestoreRequest(manifest_key="k", roles=True).validate()  # every component of the backup
    with pytest.raises(ConfigError, match="--globals needs the database component"):
        RestoreRequest(manifest_key="k", components=("uploads",), roles=True).validate()
