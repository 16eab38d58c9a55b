"""Fixtures for the integration tier: real PostgreSQL, real S3 (versitygw), toxiproxy.

Servers are started once per session, on loopback, on free ports, and always stopped at
the end (pytest runs fixture teardown after failures too; an ``atexit`` hook is the last
resort). Servers a test broke on purpose (``pg.kill()``) are started again before the next
test, and every toxiproxy proxy is cleared between tests, so a test never inherits
another's fault.

Fixtures
    pg                 session  PostgresServer; roles timesheet/timesheet_reporting/
                                timesheet_readonly exist, ``pg.role_passwords["timesheet"]``.
                                ``pg.user`` is the superuser: for set-up only. The agent
                                connects as ``timesheet`` (NOSUPERUSER, NOCREATEDB, owner
                                of the sample databases), as in production
    app_role_createdb  function ``timesheet`` has CREATEDB during the test (the agent's
                                ``--create-database``), NOCREATEDB again afterwards
    s3                 session  S3Server (versitygw), ``s3.client()``, ``s3.env()``
    toxiproxy          session  ToxiProxy server
    bucket             function a fresh, empty bucket name (deleted afterwards)
    sample_db          function a fresh database with the Northstar schema and sample data
                                (scale 1), copied from a session template; dropped afterwards
    sample_db_factory  function ``make(scale=1, name=None) -> name`` for more or bigger ones
    scratch_db_name    function an unused database name, dropped afterwards if created;
                                uses ``app_role_createdb`` (the agent may create it)
    uploads_tree       function a directory with the edge-case uploads tree (trees.py)
    pg_proxy           function toxiproxy Proxy in front of ``pg`` (``.host``, ``.port``)
    s3_proxy           function toxiproxy Proxy in front of ``s3`` (``.url`` is an endpoint)

Every test collected under tests/integration gets the ``integration`` marker
(tests/conftest.py).
"""

from __future__ import annotations

import atexit
import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.dbsnapshot import APP_ROLE, create_sample_database, ensure_roles
from tests.support.pgserver import PostgresServer
from tests.support.s3server import Proxy, S3Server, ToxiProxy
from tests.support.trees import make_uploads_tree

SAMPLE_TEMPLATE = "tsb_sample_template"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[object]:
    """On failure, attach the tail of each running server's log to the report."""
    report = yield
    if getattr(report, "failed", False):
        for name, server in _started.items():
            tail = server.log_tail() if hasattr(server, "log_tail") else ""
            if tail:
                report.sections.append((f"{name} log (tail)", tail))  # type: ignore[attr-defined]
    return report


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def _drop_database(pg: PostgresServer, name: str) -> None:
    """Teardown helper: runs before the server is healed, so start it if a test stopped it."""
    if not pg.running:
        pg.start()
    pg.drop_database(name)


# ------------------------------------------------------------------------------ servers

_started: dict[str, PostgresServer | S3Server | ToxiProxy] = {}


def _cleanup_all() -> None:
    """Last resort (interpreter exit): nothing started here may outlive the session."""
    for server in list(_started.values()):
        with contextlib.suppress(Exception):
            server.cleanup()
    _started.clear()


atexit.register(_cleanup_all)


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    server = PostgresServer()
    _started["pg"] = server
    try:
        server.start()
        ensure_roles(server)
        yield server
    finally:
        server.cleanup()
        _started.pop("pg", None)


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    server = S3Server()
    _started["s3"] = server
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
        _started.pop("s3", None)


@pytest.fixture(scope="session")
def toxiproxy() -> Iterator[ToxiProxy]:
    server = ToxiProxy()
    _started["toxiproxy"] = server
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
        _started.pop("toxiproxy", None)


@pytest.fixture(autouse=True)
def _heal_servers() -> Iterator[None]:
    """After each test: restart servers a test stopped, drop faults it injected."""
    yield
    pg_server = _started.get("pg")
    if isinstance(pg_server, PostgresServer) and not pg_server.running:
        pg_server.start()
    s3_server = _started.get("s3")
    if isinstance(s3_server, S3Server) and not s3_server.running:
        s3_server.start()
    proxy_server = _started.get("toxiproxy")
    if isinstance(proxy_server, ToxiProxy):
        proxy_server.reset()


# ------------------------------------------------------------------------------ S3


@pytest.fixture
def bucket(s3: S3Server) -> Iterator[str]:
    name = s3.make_bucket()
    yield name
    with contextlib.suppress(Exception):
        s3.delete_bucket(name)


# ------------------------------------------------------------------------------ databases


@pytest.fixture(scope="session")
def sample_template(pg: PostgresServer) -> str:
    """The sample database, built once; tests get copies (CREATE DATABASE ... TEMPLATE)."""
    create_sample_database(pg, SAMPLE_TEMPLATE, scale=1)
    return SAMPLE_TEMPLATE


@pytest.fixture
def sample_db(pg: PostgresServer, sample_template: str) -> Iterator[str]:
    """A fresh copy of the sample database (owner ``timesheet``); returns its name."""
    name = _unique("ts_sample")
    pg.terminate_connections(sample_template)  # a template must have no sessions
    pg.create_database(name, owner=APP_ROLE, template=sample_template)
    yield name
    _drop_database(pg, name)


@pytest.fixture
def sample_db_factory(pg: PostgresServer) -> Iterator[Callable[..., str]]:
    """``make(scale=1, name=None, seed=...)`` builds another sample database from scratch."""
    made: list[str] = []

    def make(scale: int = 1, name: str | None = None, **kwargs: int) -> str:
        db = name or _unique("ts_sample")
        made.append(db)
        return create_sample_database(pg, db, scale=scale, **kwargs)

    yield make
    for db in made:
        _drop_database(pg, db)


@pytest.fixture
def app_role_createdb(pg: PostgresServer) -> Iterator[str]:
    """The owner role may create databases for this test: what ``createDatabase`` (the
    agent's ``--create-database``) and a schedule's restore tests need in production.
    The documented set-up (``CREATE DATABASE timesheet_db OWNER timesheet``) does not give
    it, so the role goes back to NOCREATEDB afterwards. Returns the role's name."""
    pg.set_createdb(APP_ROLE, True)
    yield APP_ROLE
    if not pg.running:
        pg.start()
    pg.set_createdb(APP_ROLE, False)


@pytest.fixture
def scratch_db_name(pg: PostgresServer, app_role_createdb: str) -> Iterator[str]:
    """A database name nobody uses yet (a restore target the agent, connected as the owner
    role, may create with ``--create-database``); dropped afterwards if created."""
    name = _unique("ts_restore")
    yield name
    _drop_database(pg, name)


# ------------------------------------------------------------------------------ files


@pytest.fixture
def uploads_tree(tmp_path: Path) -> Path:
    return make_uploads_tree(tmp_path / "uploads", seed=0)


# ------------------------------------------------------------------------------ faults


@pytest.fixture
def pg_proxy(toxiproxy: ToxiProxy, pg: PostgresServer) -> Iterator[Proxy]:
    proxy = toxiproxy.create_proxy(f"{pg.host}:{pg.port}", name=_unique("pg"))
    yield proxy
    proxy.delete()


@pytest.fixture
def s3_proxy(toxiproxy: ToxiProxy, s3: S3Server) -> Iterator[Proxy]:
    proxy = toxiproxy.create_proxy(f"{s3.host}:{s3.port}", name=_unique("s3"))
    yield proxy
    proxy.delete()
