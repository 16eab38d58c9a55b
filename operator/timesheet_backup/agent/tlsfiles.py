"""The database client key as libpq will accept it, and kept out of every line printed.

The Job mounts the client certificate's Secret read-only (jobs/agent_args.database_tls) and
points PGSSLKEY at the key. A Secret volume's files belong to root, never to the agent's
uid, with the mode the Job builder chose (group-readable for an fsGroup, else readable in
the container, since a 0400 root file is unreadable by a non-root agent). libpq refuses a key
that its owner shares with a group or the world, so before anything connects the agent
copies the key into a 0700 directory of its scratch space as a 0600 file of its own and
points PGSSLKEY there. The key never reaches args, logs or the termination message: its
lines are masked like the password (agent/redact.py).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import MutableMapping
from pathlib import Path
from typing import Final

from timesheet_backup.errors import ConfigError

KEY_ENV: Final = "PGSSLKEY"
KEY_FILE_NAME: Final = "client.key"
_PEM_MARK: Final = "-----"
_MAX_KEY_BYTES: Final = 1 << 20


def _read_key(path: str) -> bytes:
    try:
        with open(path, "rb") as source:
            data = source.read(_MAX_KEY_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the database client key {path} ({KEY_ENV}): "
                          f"{exc.strerror}") from None
    if len(data) > _MAX_KEY_BYTES:
        raise ConfigError(f"the database client key {path} is larger than 1 MiB")
    return data


def private_key_lines(env: MutableMapping[str, str]) -> list[str]:
    """The secret lines of the client key PGSSLKEY names (the PEM body, not its BEGIN/END
    lines), for the redactor; empty when there is none or it cannot be read (prepare says
    why)."""
    path = env.get(KEY_ENV)
    if not path:
        return []
    try:
        text = _read_key(path).decode(errors="replace")
    except ConfigError:
        return []
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.strip().startswith(_PEM_MARK)]


def prepare_client_key(env: MutableMapping[str, str], work_dir: str | os.PathLike[str] | None
                       ) -> Path | None:
    """Copy the key PGSSLKEY names to a private 0600 file under `work_dir` (default $TMPDIR)
    and point PGSSLKEY at the copy, removed when the agent exits. None without PGSSLKEY."""
    source = env.get(KEY_ENV)
    if not source:
        return None
    data = _read_key(source)
    if b"PRIVATE KEY" not in data:
        raise ConfigError(f"the database client key {source} ({KEY_ENV}) holds no PEM "
                          "private key (-----BEGIN ... PRIVATE KEY-----)")
    try:
        directory = tempfile.mkdtemp(prefix="pg-tls-", dir=work_dir)  # mode 0700
        target = Path(directory) / KEY_FILE_NAME
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
    except OSError as exc:
        raise ConfigError(f"cannot write a private copy of the database client key to "
                          f"{work_dir or tempfile.gettempdir()}: {exc.strerror}") from None
    atexit.register(shutil.rmtree, directory, True)
    env[KEY_ENV] = str(target)
    return target
