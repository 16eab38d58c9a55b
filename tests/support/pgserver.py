"""A throwaway PostgreSQL server for integration tests.

The agent's job is to run ``pg_dump``/``pg_restore`` against a real server, so the tests
start one: ``initdb`` into a private temporary directory, a postmaster on 127.0.0.1 with a
free port, password (scram-sha-256) authentication over TCP exactly like a production
cluster, and a generated superuser password. Nothing is shared with a system cluster.

PostgreSQL refuses to run as root. When the tests run as root the server runs as the
``postgres`` OS user through ``runuser``; the data directory then lives outside pytest's
``tmp_path`` (which is private to root) in a directory handed to that user.

``PG_TEST_BIN`` selects another server major (its ``bin`` directory); the default is the
newest ``/usr/lib/postgresql/<major>/bin`` found, preferring 15 (the version CI installs).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tests.support.tlscerts import CertFiles

DEFAULT_BIN = "/usr/lib/postgresql/15/bin"

# Durability buys nothing in a test server and costs seconds on every CREATE DATABASE.
TEST_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "off",
    "max_connections": "100",
    "shared_buffers": "64MB",
    "log_min_messages": "warning",
    "log_line_prefix": "%m [%p] %q%u@%d ",
    "lc_messages": "C",
    "timezone": "UTC",
}


class PostgresError(RuntimeError):
    """The test server could not be set up or controlled; the message carries its log."""


def find_bin_dir() -> Path:
    """Return the PostgreSQL ``bin`` directory to use (``PG_TEST_BIN`` wins)."""
    env = os.environ.get("PG_TEST_BIN")
    candidates = [Path(env)] if env else [Path(DEFAULT_BIN)]
    if not env:
        candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for bin_dir in candidates:
        if (bin_dir / "postgres").is_file() and (bin_dir / "initdb").is_file():
            return bin_dir
    where = env or f"{DEFAULT_BIN} or /usr/lib/postgresql/*/bin"
    raise PostgresError(
        f"PostgreSQL server binaries not found in {where}; install the Debian packages "
        "postgresql and postgresql-contrib (or set PG_TEST_BIN)"
    )


def free_port() -> int:
    """Ask the kernel for a currently unused TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie (an unreaped zombie holds no resources)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state follows the parenthesised command name, which may itself contain spaces.
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _live_pids(*, ppid: int | None = None, pids: set[int] | None = None) -> list[int]:
    """Live (non-zombie) PIDs that are children of ``ppid`` or members of ``pids``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        # fields[0] is the state, fields[1] the parent PID.
        if fields[0] in ("Z", "X"):
            continue
        pid = int(entry.name)
        if (ppid is not None and int(fields[1]) == ppid) or (pids and pid in pids):
            found.append(pid)
    return found


class PostgresServer:
    """One private PostgreSQL cluster: ``start()``, ``stop()``, ``kill()``, ``start()`` again.

    Attributes: ``host``, ``port``, ``user`` (superuser), ``password``, ``bin_dir``,
    ``data_dir``, ``socket_dir``, ``log_path``, ``version`` (server major, after start).
    The port stays the same across restarts so a test's DSN keeps working.

    ``base_dir`` defaults to a new directory under the system temp dir (removed by
    ``cleanup()``); when running as root, a given one must be reachable by the ``postgres``
    user (pytest's ``tmp_path`` is not: its parents are private to root).
    """

    def __init__(
        self,
        *,
        bin_dir: str | Path | None = None,
        base_dir: str | Path | None = None,
        port: int | None = None,
        user: str = "postgres",
        settings: Mapping[str, str] | None = None,
        tls: CertFiles | None = None,
        ca_cert: Path | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        """`tls`: `ssl = on` with this server certificate; `ca_cert`: the CA whose client
        certificates `allow_cert_auth` lets in (pg_hba `cert`)."""
        self.tls = tls
        self.ca_cert = ca_cert
        self.bin_dir = Path(bin_dir) if bin_dir else find_bin_dir()
        self.host = host
        self.port = port or free_port()
        self.user = user
        self.password = secrets.token_urlsafe(18)
        self.settings = {**TEST_SETTINGS, **(settings or {})}
        self._own_base = base_dir is None
        self.base_dir = Path(base_dir) if base_dir else Path(tempfile.mkdtemp(prefix="tsb-pg-"))
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "sock"
        self.log_path = self.base_dir / "postgres.log"
        self.version: int | None = None
        # Passwords of roles made by create_role(), so dsn(user=...) can fill them in.
        self.role_passwords: dict[str, str] = {user: self.password}
        self._initialized = False
        self._run_as = self._pick_os_user()

    # ---------------------------------------------------------------- process control

    @staticmethod
    def _pick_os_user() -> pwd.struct_passwd | None:
        """The OS account to run the server as: ``postgres`` when we are root, else us."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam("postgres")
        except KeyError as exc:
            raise PostgresError(
                "running as root but there is no 'postgres' OS user to run the server as"
            ) from exc

    def _cmd(self, tool: str, *args: str) -> list[str]:
        argv = [str(self.bin_dir / tool), *args]
        if self._run_as is not None:
            argv = ["runuser", "-u", self._run_as.pw_name, "--", *argv]
        return argv

    def _run(self, tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self._cmd(tool, *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.base_dir,
            check=False,
        )
        if proc.returncode != 0:
            raise PostgresError(
                f"{tool} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
                f"\n--- server log ---\n{self.log_tail()}"
            )
        return proc

    def _chown(self, path: Path) -> None:
        if self._run_as is not None:
            os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)

    def init(self) -> None:
        """Create the cluster (``initdb``) unless it exists. Called by ``start()``."""
        if self._initialized:
            return
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(0o700)
        self._chown(self.base_dir)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        self._chown(self.socket_dir)
        pwfile = self.base_dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        self._chown(pwfile)
        try:
            self._run(
                "initdb",
                "-D", str(self.data_dir),
                "-U", self.user,
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        if self.host not in ("127.0.0.1", "localhost", "::1"):
            # initdb lets in loopback only; a server on another local address (the e2e host
            # alias, for pods) is reached by the harness from that address itself.
            with (self.data_dir / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {self.host}/32 scram-sha-256\n")
        conf = {
            **self.settings,
            **self._install_tls(),
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
        }
        with (self.data_dir / "postgresql.conf").open("a") as f:
            f.write("\n# tests/support/pgserver.py\n")
            for key, value in conf.items():
                f.write(f"{key} = '{value}'\n")
        self._initialized = True

    def _install_tls(self) -> dict[str, str]:
        """Server certificate and key in the data directory (the key 0600, the server's
        own, or PostgreSQL refuses to start) and the settings that use them."""
        if self.tls is None:
            return {}
        files = {"server.crt": (self.tls.cert, 0o644), "server.key": (self.tls.key, 0o600)}
        if self.ca_cert is not None:
            files["root.crt"] = (self.ca_cert, 0o644)
        for name, (source, mode) in files.items():
            target = self.data_dir / name
            shutil.copyfile(source, target)
            target.chmod(mode)
            self._chown(target)
        conf = {"ssl": "on", "ssl_cert_file": "server.crt", "ssl_key_file": "server.key"}
        if self.ca_cert is not None:
            conf["ssl_ca_file"] = "root.crt"
        return conf

    def _reload_hba(self) -> None:
        self._run("pg_ctl", "reload", "-D", str(self.data_dir))
        time.sleep(0.5)  # the postmaster rereads pg_hba on SIGHUP, asynchronously

    def allow_password_logins(self, cidr: str) -> None:
        """Let every role in from `cidr` with its password (scram-sha-256), and reload: for
        a server that pods reach (their addresses are the pod network's)."""
        with (self.data_dir / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {cidr} scram-sha-256\n")
        self._reload_hba()

    def allow_cert_auth(self, role: str, dbname: str = "all") -> None:
        """Let `role` in over TLS with a client certificate only (its CN must be the role),
        ahead of every other pg_hba line, and reload."""
        hba = self.data_dir / "pg_hba.conf"
        # Any address: pods reach a test server from their own; the certificate decides.
        line = f"hostssl {dbname} {role} all cert\n"
        hba.write_text(line + hba.read_text())
        self._reload_hba()

    def start(self, timeout: float = 60) -> PostgresServer:
        """Start the server (initialising it first if needed) and wait until it accepts logins."""
        self.init()
        if self.running:
            return self
        self._run(
            "pg_ctl", "start", "-w", "-t", str(int(timeout)),
            "-D", str(self.data_dir), "-l", str(self.log_path),
            timeout=timeout + 10,
        )  # fmt: skip
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with self.connect() as conn:
                    row = conn.execute("SHOW server_version_num").fetchone()
                    assert row is not None
                    self.version = int(row[0]) // 10000
                    return
            except psycopg.OperationalError as exc:
                last = exc
                time.sleep(0.1)
        raise PostgresError(f"server not ready after {timeout}s: {last}\n{self.log_tail()}")

    @property
    def postmaster_pid(self) -> int | None:
        """PID of the running postmaster, from ``postmaster.pid`` (None if not running)."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        except FileNotFoundError:
            return None
        pid = int(first.strip())
        return pid if _pid_alive(pid) else None

    @property
    def running(self) -> bool:
        return self.postmaster_pid is not None

    def stop(self, timeout: float = 60) -> None:
        """Fast shutdown (running sessions are cut, committed data kept); no process left."""
        pid = self.postmaster_pid
        if pid is None:
            return
        children = set(_live_pids(ppid=pid))
        try:
            self._run(
                "pg_ctl", "stop", "-w", "-m", "fast", "-t", str(int(timeout)),
                "-D", str(self.data_dir),
                timeout=timeout + 10,
            )  # fmt: skip
        except (PostgresError, subprocess.TimeoutExpired):
            self.kill()
            return
        self._wait_gone({pid, *children}, timeout=10)

    def kill(self) -> None:
        """Crash the server: SIGKILL the postmaster and every backend at once.

        That is what a node failure looks like to a client: connections drop without a
        goodbye. (Each backend runs in its own process group, so they are found by parent
        PID.) ``start()`` afterwards runs crash recovery, on the same port.
        """
        pid = self.postmaster_pid
        if pid is None:
            return
        victims = {pid, *_live_pids(ppid=pid)}
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        self._wait_gone(victims, timeout=10)
        # The dead postmaster may linger as a zombie until init reaps it, and PostgreSQL
        # refuses to start while the PID in its lock file still exists: the file is stale.
        # The same goes for the unix socket's lock file.
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
        for stale in self.socket_dir.glob(f".s.PGSQL.{self.port}*"):
            stale.unlink(missing_ok=True)

    def _wait_gone(self, pids: set[int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _live_pids(pids=pids):
                return
            time.sleep(0.05)
        raise PostgresError(f"postgres processes still alive: {_live_pids(pids=pids)}")

    def cleanup(self) -> None:
        """Stop the server and delete its files (only if this object created the directory)."""
        try:
            self.stop()
        finally:
            if self._own_base:
                shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no server log)"

    # ---------------------------------------------------------------- client side

    def dsn(
        self,
        dbname: str = "postgres",
        *,
        user: str | None = None,
        password: str | None = None,
        **extra: Any,
    ) -> str:
        """libpq keyword/value connection string (quoted properly by psycopg).

        Defaults to the superuser; for another ``user`` made by :meth:`create_role` the
        password it was given is filled in. ``extra`` adds or overrides parameters, e.g.
        ``host=proxy.host, port=proxy.port`` to go through a toxiproxy.
        """
        user = user or self.user
        params: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": user,
            "password": password if password is not None else self.role_passwords.get(user, ""),
            "dbname": dbname,
        }
        params.update(extra)
        return make_conninfo(**params)

    def url(self, dbname: str = "postgres") -> str:
        """``postgresql://`` URL form of :meth:`dsn` for tools that want one."""
        from urllib.parse import quote

        return (
            f"postgresql://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{self.host}:{self.port}/{quote(dbname, safe='')}"
        )

    def connect(
        self,
        dbname: str = "postgres",
        *,
        user: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> psycopg.Connection[Any]:
        """A psycopg 3 connection in autocommit mode (DDL such as CREATE DATABASE needs it)."""
        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", 10)
        return psycopg.connect(self.dsn(dbname, user=user, password=password), **kwargs)

    @contextlib.contextmanager
    def connection(
        self, dbname: str = "postgres", **kwargs: Any
    ) -> Iterator[psycopg.Connection[Any]]:
        """``with pg.connection(db) as conn:`` that always closes the connection."""
        conn = self.connect(dbname, **kwargs)
        try:
            yield conn
        finally:
            conn.close()

    def env(self, dbname: str | None = None, *, user: str | None = None) -> dict[str, str]:
        """libpq environment for child processes (``pg_dump``, ``psql``, the agent).

        Defaults to the superuser; ``user`` names a role made by :meth:`create_role` (its
        password is filled in), e.g. the application's owner role.
        """
        user = user or self.user
        env = {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": user,
            "PGPASSWORD": self.role_passwords.get(user, ""),
        }
        if dbname is not None:
            env["PGDATABASE"] = dbname
        return env

    def execute(
        self, statement: str | sql.Composable, params: Any = None, dbname: str = "postgres"
    ) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser and return its rows (empty for DDL)."""
        with self.connection(dbname) as conn:
            cur = conn.execute(statement, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def create_database(
        self, name: str, owner: str | None = None, template: str = "template0"
    ) -> str:
        stmt = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)
        )
        if owner:
            stmt = sql.SQL("{} OWNER {}").format(stmt, sql.Identifier(owner))
        self.execute(stmt)
        return name

    def drop_database(self, name: str, missing_ok: bool = True) -> None:
        """Drop a database, disconnecting its sessions first (WITH (FORCE), PostgreSQL 13+)."""
        exists = sql.SQL("IF EXISTS ") if missing_ok else sql.SQL("")
        self.execute(
            sql.SQL("DROP DATABASE {}{} WITH (FORCE)").format(exists, sql.Identifier(name))
        )

    def database_exists(self, name: str) -> bool:
        return bool(self.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)))

    def list_databases(self) -> list[str]:
        rows = self.execute(
            "SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY datname"
        )
        return [r[0] for r in rows]

    def create_role(
        self,
        name: str,
        password: str | None = None,
        superuser: bool = False,
        login: bool = True,
        createdb: bool = False,
        exist_ok: bool = False,
    ) -> str:
        """Create a role; with ``exist_ok`` an existing role gets the given password/flags.

        Every flag is written out (``NOSUPERUSER NOCREATEDB ...``), so an existing role ends
        up with exactly the flags asked for.
        """
        exists = bool(self.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)))
        if exists and not exist_ok:
            raise PostgresError(f"role {name!r} already exists")
        verb = "ALTER" if exists else "CREATE"
        flags = [
            "SUPERUSER" if superuser else "NOSUPERUSER",
            "LOGIN" if login else "NOLOGIN",
            "CREATEDB" if createdb else "NOCREATEDB",
            "NOCREATEROLE",
        ]
        stmt = sql.SQL(verb + " ROLE {} " + " ".join(flags)).format(sql.Identifier(name))
        if password is not None:
            stmt = sql.SQL("{} PASSWORD {}").format(stmt, sql.Literal(password))
        self.execute(stmt)
        if password is not None:
            self.role_passwords[name] = password
        return name

    def set_createdb(self, name: str, allowed: bool) -> None:
        """Give a role the CREATEDB attribute, or take it away (``ALTER ROLE``)."""
        flag = "CREATEDB" if allowed else "NOCREATEDB"
        self.execute(sql.SQL("ALTER ROLE {} " + flag).format(sql.Identifier(name)))

    def drop_role(self, name: str) -> None:
        self.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        self.role_passwords.pop(name, None)

    def terminate_connections(self, dbname: str) -> int:
        """Disconnect every other session on ``dbname``; returns how many were ended."""
        rows = self.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        )
        return int(rows[0][0])
