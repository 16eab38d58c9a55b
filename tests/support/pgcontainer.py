"""A throwaway PostgreSQL server of a chosen major, in a container.

The host has the PostgreSQL major Debian ships; tests that need servers of other majors (the
agent's pg_dump/pg_restore of one major against a server of another) run one from the test-only
images ``make image`` builds: ``tsb-pgserver:15``, ``:17`` and ``:18``
(tests/cluster/pgserver/Dockerfile).

:class:`ContainerPostgres` is a :class:`~tests.support.pgserver.PostgresServer` whose processes
live in a container; the client side (``dsn()``, ``connect()``, ``create_role()``, ...) is the
same. ``docker run -d --init --network host`` starts a container that only waits; ``initdb``,
``pg_ctl start``/``stop`` and the crash of ``kill()`` run in it through ``docker exec`` as the
``postgres`` user. Like PostgresServer: the same TEST_SETTINGS, 127.0.0.1 on a free port (the
host's network), scram-sha-256 password authentication, a generated superuser password. The
data directory is on a tmpfs of the container: ``stop()`` keeps the container, so ``start()``
again finds the data (and ``kill()`` then ``start()`` runs crash recovery); ``cleanup()`` (and
leaving the ``with`` block) removes the container and its data with ``docker rm -f``.

Paths (``bin_dir``, ``data_dir``, ``log_path``) are paths inside the container. Containers carry
the label ``tsb.pgcontainer``: ``docker rm -f $(docker ps -aq --filter label=tsb.pgcontainer)``
removes any left behind by a killed test run.
"""

from __future__ import annotations

import pwd
import secrets
import subprocess
import time
from collections.abc import Mapping

from tests.support.pgserver import PostgresError, PostgresServer

IMAGE = "tsb-pgserver:{major}"
# Inside the container: a tmpfs holding the data directory, the sockets and the server log.
BASE_DIR = "/pg"
LABEL = "tsb.pgcontainer"


def _docker(
    *args: str, input: str | None = None, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            ["docker", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise PostgresError("no docker client: install Docker (make deps)") from exc
    if check and proc.returncode != 0:
        raise PostgresError(
            f"docker {' '.join(args[:2])} ... failed ({proc.returncode}): "
            f"{proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc


def ensure_image(major: int) -> str:
    """The server image of ``major``; a clear error if it has not been built."""
    image = IMAGE.format(major=major)
    proc = _docker("image", "inspect", "--format", "{{.Id}}", image, check=False)
    if proc.returncode != 0:
        if "No such image" in proc.stderr:
            why = "it has not been built"
        else:
            why = f"docker says: {proc.stderr.strip()}"
        raise PostgresError(
            f"PostgreSQL {major} server image {image} not available ({why}): run `make image`"
        )
    return image


class ContainerPostgres(PostgresServer):
    """One private PostgreSQL cluster of ``major`` in a container (see the module docstring)."""

    def __init__(
        self,
        major: int,
        *,
        port: int | None = None,
        user: str = "postgres",
        settings: Mapping[str, str] | None = None,
        image: str | None = None,
    ) -> None:
        self.major = major
        self.image = image or ensure_image(major)
        self.container = f"tsb-pg{major}-{secrets.token_hex(4)}"
        self._container_up = False
        super().__init__(
            bin_dir=f"/usr/lib/postgresql/{major}/bin",
            base_dir=BASE_DIR,
            port=port,
            user=user,
            settings=settings,
        )

    # ---------------------------------------------------------------- process control

    @staticmethod
    def _pick_os_user() -> pwd.struct_passwd | None:
        return None  # the container's postgres user runs the server (docker exec -u)

    def _exec(
        self, *argv: str, user: str = "postgres", input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        flags = ["-i"] if input is not None else []
        return _docker(
            "exec", *flags, "-u", user, self.container, *argv,
            input=input, timeout=timeout, check=False,
        )  # fmt: skip

    def _cmd(self, tool: str, *args: str) -> list[str]:
        return ["docker", "exec", "-u", "postgres", self.container, str(self.bin_dir / tool), *args]

    def _run(self, tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        # As PostgresServer's, without its host working directory.
        proc = self._exec(str(self.bin_dir / tool), *args, timeout=timeout)
        if proc.returncode != 0:
            raise PostgresError(
                f"{tool} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
                f"\n--- server log ---\n{self.log_tail()}"
            )
        return proc

    def init(self) -> None:
        """Start the container and create the cluster (``initdb``). Called by ``start()``."""
        if self._initialized:
            return
        if not self._container_up:
            _docker(
                "run", "-d", "--init", "--network", "host", "--name", self.container,
                "--label", LABEL, "--tmpfs", f"{BASE_DIR}:rw,mode=1777", "--shm-size", "256m",
                self.image,
            )  # fmt: skip
            self._container_up = True
        try:
            proc = self._exec("mkdir", "-m", "700", str(self.socket_dir), str(self.data_dir))
            if proc.returncode != 0:
                raise PostgresError(f"mkdir in the container failed: {proc.stderr}")
            # The password goes in on stdin: never on a command line or in the container's config.
            proc = self._exec(
                str(self.bin_dir / "initdb"),
                "-D", str(self.data_dir),
                "-U", self.user,
                "--pwfile=/dev/stdin",
                "--auth-host=scram-sha-256",
                "--auth-local=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
                input=self.password + "\n",
            )  # fmt: skip
            if proc.returncode != 0:
                raise PostgresError(
                    f"initdb failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
                )
            conf = {
                **self.settings,
                "listen_addresses": self.host,
                "port": str(self.port),
                "unix_socket_directories": str(self.socket_dir),
            }
            lines = "".join(f"{key} = '{value}'\n" for key, value in conf.items())
            proc = self._exec(
                "sh", "-c", 'cat >>"$1"', "sh", str(self.data_dir / "postgresql.conf"),
                input="\n# tests/support/pgcontainer.py\n" + lines,
            )  # fmt: skip
            if proc.returncode != 0:
                raise PostgresError(f"writing postgresql.conf failed: {proc.stderr}")
        except BaseException:
            self._remove_container()
            raise
        self._initialized = True

    @property
    def postmaster_pid(self) -> int | None:
        """PID (in the container) of the running postmaster; None if it is not running."""
        if not self._container_up:
            return None
        proc = self._exec(str(self.bin_dir / "pg_ctl"), "status", "-D", str(self.data_dir))
        if proc.returncode != 0:
            return None
        # "pg_ctl: server is running (PID: 123)"
        first = proc.stdout.split("PID:", 1)[-1].split(")", 1)[0].strip()
        return int(first) if first.isdigit() else None

    def stop(self, timeout: float = 60) -> None:
        """Fast shutdown; the container and the data stay for ``start()``."""
        if self.postmaster_pid is None:
            return
        try:
            self._run(
                "pg_ctl", "stop", "-w", "-m", "fast", "-t", str(int(timeout)),
                "-D", str(self.data_dir),
                timeout=timeout + 10,
            )  # fmt: skip
        except (PostgresError, subprocess.TimeoutExpired):
            self.kill()

    def kill(self) -> None:
        """Crash the server: SIGKILL the postmaster and every backend at once.

        ``kill -1`` as the postgres user signals every process of that user in the container,
        which is exactly the server's (PID 1 and its sleeper run as root). ``start()``
        afterwards runs crash recovery on the same port.
        """
        if not self._container_up:
            return
        self._exec("sh", "-c", "kill -KILL -1")
        deadline = time.monotonic() + 10
        # Until no process of the postgres user is left (zombies included: PID 1 reaps them).
        find = ["find", "/proc", "-maxdepth", "1", "-name", "[0-9]*", "-user", "postgres"]
        while self._exec(*find, user="root").stdout.strip():
            if time.monotonic() > deadline:
                raise PostgresError("postgres processes still alive in the container after SIGKILL")
            time.sleep(0.05)
        # PostgreSQL refuses to start while the PID in its lock files exists (the PID may be
        # reused in the container): they are stale now.
        self._exec(
            "sh", "-c", 'rm -f "$1/postmaster.pid" "$2"/.s.PGSQL.*', "sh",
            str(self.data_dir), str(self.socket_dir),
        )  # fmt: skip

    def _remove_container(self) -> None:
        if self._container_up:
            _docker("rm", "-f", "-v", self.container, check=False, timeout=60)
            self._container_up = False
            self._initialized = False

    def cleanup(self) -> None:
        """Remove the container, the server and its data with it."""
        self._remove_container()

    def __enter__(self) -> ContainerPostgres:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def log_tail(self, lines: int = 40) -> str:
        if not self._container_up:
            return "(no server log)"
        proc = self._exec("tail", "-n", str(lines), str(self.log_path))
        return proc.stdout.rstrip("\n") if proc.returncode == 0 else "(no server log)"
