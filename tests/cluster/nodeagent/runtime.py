"""Start and stop container processes.

Every container is ``setpriv --pdeathsig KILL unshare ... launcher.py`` (see
launcher.py). ``--pdeathsig`` ties unshare's life to the thread that forked it, so
all forks happen on one long-lived thread of the agent: if the agent dies, even by
SIGKILL, unshare gets SIGKILL, its ``--kill-child`` kills the namespace's init and
the kernel kills the rest of the namespace. Nothing outlives the agent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("nodeagent.runtime")

LAUNCHER = Path(__file__).with_name("launcher.py")


@dataclass
class LaunchSpec:
    argv: list[str]
    env: dict[str, str]
    cwd: str
    uid: int
    gid: int
    groups: list[int]
    mounts: list[dict[str, Any]]
    read_only_root: bool
    hostname: str
    reachable: list[str]


class Spawner:
    """Runs every ``Popen`` on one dedicated thread (see module docstring)."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[Future[subprocess.Popen[bytes]], list[str], Any] | None]
        self._queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="spawner", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, argv, log_file = item
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # own process group, signalled as a whole
                    close_fds=True,
                    env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                )
                future.set_result(proc)
            except Exception as exc:
                future.set_exception(exc)

    def spawn(self, argv: list[str], log_file: Any) -> subprocess.Popen[bytes]:
        future: Future[subprocess.Popen[bytes]] = Future()
        self._queue.put((future, argv, log_file))
        return future.result(timeout=30)

    def stop(self) -> None:
        self._queue.put(None)


class Process:
    """One run of one container."""

    def __init__(self, spawner: Spawner, spec: LaunchSpec, run_dir: Path, log_path: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.spec_path = run_dir / "launch.json"
        self.start_error_path = run_dir / "start-error"
        self.start_error_path.unlink(missing_ok=True)
        self.spec_path.write_text(json.dumps({
            "argv": spec.argv,
            "env": spec.env,
            "cwd": spec.cwd,
            "uid": spec.uid,
            "gid": spec.gid,
            "groups": spec.groups,
            "mounts": spec.mounts,
            "readOnlyRoot": spec.read_only_root,
            "hostname": spec.hostname,
            "reachable": spec.reachable,
            "startErrorFile": str(self.start_error_path),
        }))
        os.chmod(self.spec_path, 0o600)  # it may hold secrets from env
        self.log_path = log_path
        self.log_offset = log_path.stat().st_size if log_path.exists() else 0
        argv = [
            "setpriv", "--pdeathsig", "KILL", "--",
            "unshare", "--mount", "--propagation", "private", "--uts",
            "--pid", "--fork", "--kill-child", "--mount-proc",
            "--", sys.executable, "-I", "-S", str(LAUNCHER), str(self.spec_path),
        ]
        with open(log_path, "ab") as log_file:
            self.proc = spawner.spawn(argv, log_file)
        self.pid = self.proc.pid

    def poll(self) -> int | None:
        code = self.proc.poll()
        if code is not None and code < 0:
            code = 128 - code  # unshare re-raised the signal that killed init
        return code

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def start_error(self) -> str | None:
        try:
            return self.start_error_path.read_text() or None
        except OSError:
            return None

    def output_tail(self, max_lines: int = 80, max_bytes: int = 2048) -> str:
        """The tail of this run's output (FallbackToLogsOnError)."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self.log_offset)
                data = fh.read()
        except OSError:
            return ""
        lines = data.decode(errors="replace").splitlines()[-max_lines:]
        text = "\n".join(lines)
        return text[-max_bytes:]
