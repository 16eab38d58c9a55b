"""Run a command and measure it: wall time, CPU of the whole process tree, peak RSS.

Peak memory is the maximum, over samples taken every 50 ms, of the summed RSS of the process
and all its descendants (the agent plus its pg_dump/pg_restore children; a shell pipeline
and its members). CPU time comes from the kernel's accounting of waited-for children, so it
covers every process of the tree that exited, however short-lived. Servers (PostgreSQL,
versitygw) are measured separately through /proc, by `ServerCpu`.
"""

from __future__ import annotations

import os
import resource
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return 0


def children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except (FileNotFoundError, ProcessLookupError):
        return found
    for task in tasks:
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return found


def tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += children(p)
    return pids


def comm_and_cpu(pid: int) -> tuple[str, float] | None:
    """(command name, utime+stime seconds) of a live process."""
    try:
        head, tail = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    fields = tail.split()
    return head.split("(", 1)[1], (int(fields[11]) + int(fields[12])) / TICKS


def cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """utime+stime of a live process (plus, optionally, of the children it has reaped)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # After the ")": state is fields[0]; utime, stime, cutime, cstime are fields 11-14.
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICKS


@dataclass
class Measured:
    seconds: float
    cpu_seconds: float
    peak_rss_bytes: int
    peak_main_rss_bytes: int
    returncode: int
    stdout: str = ""
    stderr: str = ""
    servers_cpu: dict[str, float] = field(default_factory=dict)
    # CPU seconds by command name (python3, pg_dump, gzip, ...), from the samples: a process's
    # last sample, so up to 50 ms of each process's end is missing.
    cpu_by_command: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("stdout")
        data.pop("stderr")
        return data


class ServerCpu:
    """CPU used by long-running servers between start() and stop(): a postmaster's reaped
    backends (cutime/cstime) plus itself, versitygw's own threads."""

    def __init__(self, servers: Mapping[str, tuple[int, bool]]) -> None:
        self.servers = dict(servers)
        self.before: dict[str, float] = {}

    @staticmethod
    def _total(pid: int, reaped: bool) -> float:
        total = cpu_seconds(pid, reaped_children=reaped)
        if reaped:
            # Backends still alive (the background writer, a session not yet reaped).
            total += sum(cpu_seconds(child) for child in children(pid))
        return total

    def start(self) -> None:
        self.before = {name: self._total(pid, reaped)
                       for name, (pid, reaped) in self.servers.items()}

    def stop(self) -> dict[str, float]:
        # A backend exits after its client; give the postmaster a moment to reap it.
        time.sleep(0.3)
        return {name: round(self._total(pid, reaped) - self.before[name], 2)
                for name, (pid, reaped) in self.servers.items()}


def run(argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None,
        servers: ServerCpu | None = None, timeout: float = 3600) -> Measured:
    """Run argv to completion while sampling its process tree's memory."""
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    if servers:
        servers.start()
    start = time.monotonic()
    proc = subprocess.Popen(list(argv), env=dict(env) if env is not None else None, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0, 0]
    done = threading.Event()
    last_cpu: dict[int, tuple[str, float]] = {}

    def sample() -> None:
        while not done.is_set():
            pids = tree(proc.pid)
            for p in pids:
                seen = comm_and_cpu(p)
                if seen is not None:
                    last_cpu[p] = seen
            total = sum(rss_bytes(p) for p in pids)
            peak[0] = max(peak[0], total)
            peak[1] = max(peak[1], rss_bytes(proc.pid))
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        done.set()
        sampler.join()
    seconds = time.monotonic() - start
    server_cpu = servers.stop() if servers else {}
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (usage.ru_utime - usage_before.ru_utime) + (usage.ru_stime - usage_before.ru_stime)
    by_command: dict[str, float] = {}
    for comm, used in last_cpu.values():
        by_command[comm] = round(by_command.get(comm, 0.0) + used, 2)
    return Measured(round(seconds, 2), round(cpu, 2), peak[0], peak[1], proc.returncode,
                    stdout, stderr, server_cpu, by_command)


def shell(script: str, **kwargs: Any) -> Measured:
    """A pipeline exactly as the guide writes it (bash, pipefail)."""
    return run(["bash", "-o", "pipefail", "-c", script], **kwargs)
