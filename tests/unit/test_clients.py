"""Client majors per server (agent/clients.py): choice, supported range, preamble filter."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from timesheet_backup.agent import clients
from timesheet_backup.agent.clients import RestorePlan, dump_client, restore_plan
from timesheet_backup.errors import ConfigError, DatabaseError

pytestmark = pytest.mark.unit

IMAGE = [15, 17, 18]  # the clients the Dockerfile ships
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("server", "client"), [(15, 15), (16, 18), (17, 17), (18, 18)])
def test_dump_uses_the_servers_major_else_the_newest(server: int, client: int) -> None:
    assert dump_client(server, IMAGE) == client


def test_dump_of_a_server_newer_than_every_client_is_refused() -> None:
    with pytest.raises(ConfigError, match="newer than the newest client here"):
        dump_client(19, IMAGE)
    with pytest.raises(ConfigError, match="no PostgreSQL client"):
        dump_client(15, [])


@pytest.mark.parametrize(("fmt", "dump", "target", "plan"), [
    # archives: the target's own client reads it
    ("custom", 15, 15, RestorePlan(15, False, False)),
    ("custom", 17, 17, RestorePlan(17, False, False)),
    ("custom", 17, 18, RestorePlan(18, False, False)),
    # an older archive into a newer server without its own client: the newest not above it
    ("custom", 15, 16, RestorePlan(15, False, False)),
    # archives of 17+ into an older server: pg_restore 17 script through psql, filtered
    ("custom", 17, 15, RestorePlan(17, True, True)),
    ("directory", 18, 16, RestorePlan(18, True, True)),
    ("custom", 18, 17, RestorePlan(18, False, False)),
    # unknown writer (imported): any client reads it
    ("custom", None, 15, RestorePlan(15, False, False)),
    # plain: psql of the target's major (else the newest); the SET is in the file from 17 on
    ("plain", 17, 15, RestorePlan(15, False, True)),
    ("plain", 15, 15, RestorePlan(15, False, False)),
    ("plain", 18, 16, RestorePlan(18, False, True)),
    ("plain", None, 15, RestorePlan(15, False, True)),
    ("plain", 17, 18, RestorePlan(18, False, False)),
])
def test_restore_plans(fmt: str, dump: int | None, target: int, plan: RestorePlan) -> None:
    assert restore_plan(fmt, dump, target, IMAGE) == plan


def test_an_archive_newer_than_every_client_is_refused() -> None:
    with pytest.raises(ConfigError, match="written by pg_dump 19"):
        restore_plan("custom", 19, 18, IMAGE)


@pytest.mark.parametrize(("version", "ok"), [("15.18", True), ("18.1", True), ("17beta2", True),
                                              ("14.9", False), ("9.6.24", False),
                                              ("19.0", False)])
def test_supported_range(version: str, ok: bool) -> None:
    if ok:
        assert clients.check_server(version) == clients.major_of(version)
    else:
        with pytest.raises(DatabaseError, match="servers 15 to 18"):
            clients.check_server(version)


def test_the_docs_state_the_same_range() -> None:
    text = (REPO / "docs" / "security.md").read_text()
    low, high = clients.SUPPORTED_SERVERS
    assert re.search(rf"PostgreSQL servers? {low} to {high}\b", text), \
        "docs/security.md must state the supported range of agent/clients.py"


def test_discover_finds_complete_client_directories(tmp_path: Path) -> None:
    for major, tools in ((15, ("pg_dump", "pg_restore", "psql")), (17, ("pg_dump",)),
                         (18, ("pg_dump", "pg_restore", "psql"))):
        (tmp_path / str(major) / "bin").mkdir(parents=True)
        for tool in tools:
            (tmp_path / str(major) / "bin" / tool).write_text("")
    (tmp_path / "common").mkdir()
    assert clients.discover(str(tmp_path)) == {15: tmp_path / "15" / "bin",
                                               18: tmp_path / "18" / "bin"}
    assert clients.discover(str(tmp_path / "missing")) == {}
    assert clients.located(["pg_dump", "-V"], tmp_path) == [str(tmp_path / "pg_dump"), "-V"]
    assert clients.located(["pg_dump", "-V"], None) == ["pg_dump", "-V"]


PREAMBLE = (
    b"--\n-- PostgreSQL database dump\n--\n\n\\restrict abc\n\n"
    b"SET statement_timeout = 0;\nSET lock_timeout = 0;\n"
    b"SET idle_in_transaction_session_timeout = 0;\nSET transaction_timeout = 0;\n"
    b"SELECT pg_catalog.set_config('search_path', '', false);\n\n"
)
BODY = (b"CREATE TABLE t (x text);\nCOPY t (x) FROM stdin;\nSET transaction_timeout = 0;\n"
        b"\\.\n")


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 16])
def test_the_filter_drops_the_setting_from_the_preamble_only(chunk: int) -> None:
    out = io.BytesIO()
    filt = clients.PreambleFilter(out)
    data = PREAMBLE + BODY
    for i in range(0, len(data), chunk):
        filt.write(data[i:i + chunk])
    filt.flush()
    assert out.getvalue() == PREAMBLE.replace(b"SET transaction_timeout = 0;\n", b"") + BODY
    assert filt.dropped == 1  # the same text as a row of data stays


def test_the_filter_passes_a_script_without_the_setting_unchanged() -> None:
    out = io.BytesIO()
    filt = clients.PreambleFilter(out)
    data = PREAMBLE.replace(b"SET transaction_timeout = 0;\n", b"") + BODY
    filt.write(data)
    filt.flush()
    assert out.getvalue() == data and filt.dropped == 0
