"""In-namespace init for one container (standard library only; run as a script).

The agent starts it as
``unshare --mount --propagation private --uts --pid --fork --kill-child --mount-proc
python -I -S launcher.py SPEC.json``, so it runs as PID 1 of a fresh PID namespace
inside a private mount namespace. It then

1. bind-mounts every volume at its mountPath (creating missing mount points on
   the host: empty directories, or an empty file for a single-file mount),
   remounting read-only where asked,
2. sets the pod's hostname and, for readOnlyRootFilesystem, remounts ``/``
   read-only (the bind mounts above are separate mounts and stay writable),
3. forks the container process, which drops to runAsUser/runAsGroup with the
   supplemental groups (what ``setpriv --reuid --regid --groups`` does), changes to
   workingDir and execs the command,
4. stays as init: forwards termination signals to the container's process group,
   reaps orphans and exits with the container's status (128+N for signal N).

Being PID 1 is what makes cleanup total: when this process dies the kernel kills
everything left in the namespace, and ``--kill-child`` kills it when unshare
dies, which the agent arranges to happen when the agent dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import stat
import sys
import warnings  # noqa: F401  (os.execvpe imports it lazily, maybe after setuid)
from types import FrameType
from typing import Any, NoReturn

MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                        ctypes.c_ulong, ctypes.c_void_p]


def _mount(source: str | None, target: str, flags: int) -> None:
    src = source.encode() if source else None
    if _libc.mount(src, target.encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} -> {target}: {os.strerror(err)}")


def _prepare_target(source: str, target: str) -> None:
    """Create the mount point: a directory, or an empty file for a file source."""
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    elif not os.path.exists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "a"):
            pass


def _make_reachable(paths: list[str]) -> None:
    """Let a non-root user reach ``paths`` that sit below a private directory.

    The venv's interpreter lives under /root (mode 0700) on these machines; an image
    would carry its own copy. Inside this mount namespace only, the first
    untraversable ancestor is covered with a tmpfs (0755) holding just bind mounts of
    the wanted paths, reached through O_PATH descriptors opened before covering it.
    """
    plan: dict[str, list[str]] = {}
    for path in paths:
        parts = os.path.abspath(path).split("/")[1:]
        for depth in range(1, len(parts)):
            ancestor = "/" + "/".join(parts[:depth])
            if not os.stat(ancestor).st_mode & stat.S_IXOTH:
                plan.setdefault(ancestor, []).append(path)
                break
    for ancestor, wanted in plan.items():
        fds = [(p, os.open(p, os.O_PATH)) for p in wanted]
        if _libc.mount(b"tmpfs", ancestor.encode(), b"tmpfs", 0, b"mode=0755") != 0:
            raise OSError(ctypes.get_errno(), f"tmpfs on {ancestor}")
        for path, fd in fds:
            os.makedirs(path, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", path, MS_BIND | MS_REC)
            os.close(fd)


def _setup(spec: dict[str, Any]) -> None:
    if spec.get("uid", 0) != 0:
        _make_reachable(spec.get("reachable", []))
    mounts = sorted(spec["mounts"], key=lambda m: m["target"].rstrip("/").count("/"))
    for m in mounts:
        _prepare_target(m["source"], m["target"])
        _mount(m["source"], m["target"], MS_BIND | MS_REC)
        if m.get("readOnly"):
            _mount(None, m["target"], MS_BIND | MS_REMOUNT | MS_RDONLY)
    hostname = spec.get("hostname", "").encode()[:64]
    if hostname:
        _libc.sethostname(hostname, len(hostname))
    cwd = spec.get("cwd") or "/"
    os.makedirs(cwd, exist_ok=True)  # the runtime creates a missing workingDir
    if spec.get("readOnlyRoot"):
        _mount(None, "/", MS_BIND | MS_REMOUNT | MS_RDONLY)


def _start_error(spec: dict[str, Any], message: str) -> NoReturn:
    sys.stderr.write(f"tsb-nodeagent: {message}\n")
    sys.stderr.flush()
    try:
        with open(spec["startErrorFile"], "w") as fh:
            fh.write(message)
    except OSError:
        pass
    os._exit(128)


def _exec_container(spec: dict[str, Any]) -> NoReturn:
    try:
        os.setsid()
        os.umask(0o022)
        os.setgroups(spec.get("groups", []))
        os.setresgid(spec["gid"], spec["gid"], spec["gid"])
        os.setresuid(spec["uid"], spec["uid"], spec["uid"])
        os.chdir(spec.get("cwd") or "/")
    except OSError as exc:
        _start_error(spec, f"failed to set up the process: {exc}")
    argv = spec["argv"]
    try:
        os.execvpe(argv[0], argv, spec["env"])
    except OSError as exc:
        _start_error(spec, f'exec: "{argv[0]}": {exc.strerror}')


def main() -> None:
    with open(sys.argv[1]) as fh:
        spec = json.load(fh)
    try:
        _setup(spec)
    except OSError as exc:
        _start_error(spec, f"failed to mount volumes: {exc}")
    child = os.fork()
    if child == 0:
        _exec_container(spec)

    def forward(signum: int, _frame: FrameType | None) -> None:
        try:
            os.killpg(child, signum)
        except OSError:
            with contextlib.suppress(OSError):
                os.kill(child, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
                signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, forward)
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(1)
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            os._exit(128 - code if code < 0 else code)


if __name__ == "__main__":
    main()
