"""Helpers shared by the agent's integration tests (test_backup_*, test_restore_*,
test_interop_*, test_failures_*). No tests here.

The agent always runs as a separate process through its console entry point, with an
environment built from scratch: connection flags as a Job builder would write them, and the
secrets (PGPASSWORD, AWS keys, the age identity) only in the environment, as Secret-injected
variables.

The agent connects as the application's owner role (``DB_USER``, ``timesheet``: LOGIN,
NOSUPERUSER, owner of the sample databases), as it does in production; never as the
test server's superuser, which only sets up roles and fixtures.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyrage

from tests.support import dbsnapshot
from tests.support.pgserver import PostgresServer
from tests.support.s3server import S3Server

AGENT = [sys.executable, "-m", "timesheet_backup"]
DB_USER = dbsnapshot.APP_ROLE  # the role the agent connects as


def db_password(pg: PostgresServer, user: str = DB_USER) -> str:
    """The password of ``user`` (made by ``pg.create_role``/``dbsnapshot.ensure_roles``)."""
    try:
        return pg.role_passwords[user]
    except KeyError:
        raise AssertionError(
            f"no role {user!r} made on this server yet: call dbsnapshot.ensure_roles(server) "
            "(or create_sample_database) before running the agent against it"
        ) from None


@dataclass
class AgentRun:
    returncode: int
    stdout: str
    stderr: str
    termination: dict[str, Any] | None

    @property
    def result(self) -> dict[str, Any]:
        return json.loads(self.stdout) if self.stdout.strip() else {}

    @property
    def error_line(self) -> str:
        lines = [ln for ln in self.stderr.splitlines() if ln.startswith("error: ")]
        return lines[-1] if lines else ""

    def describe(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def base_env(home: Path) -> dict[str, str]:
    """A clean environment: nothing from the developer's shell leaks in (no ~/.aws)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "AWS_CONFIG_FILE": str(home / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def agent_env(
    tmp_path: Path,
    pg: PostgresServer | None = None,
    s3: S3Server | None = None,
    extra: Mapping[str, str] | None = None,
    *,
    db_user: str = DB_USER,
) -> dict[str, str]:
    env = base_env(tmp_path)
    if pg is not None:
        env["PGPASSWORD"] = db_password(pg, db_user)
    if s3 is not None:
        env |= {
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "AWS_REGION": s3.region,
        }
    env |= dict(extra or {})
    return env


@dataclass(frozen=True)
class RunAs:
    """An identity to run the agent as (what a pod's runAsUser/runAsGroup/fsGroup and
    supplementalGroups give its process). Needs root; tmp_path must be reachable by it."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    def prefix(self) -> list[str]:
        groups = ["--groups", ",".join(map(str, self.groups))] if self.groups else [
            "--clear-groups"]
        return ["setpriv", "--reuid", str(self.uid), "--regid", str(self.gid), *groups, "--"]


def run_agent(
    args: Sequence[str],
    env: Mapping[str, str],
    tmp_path: Path,
    timeout: float = 300,
    user: RunAs | None = None,
) -> AgentRun:
    import subprocess

    term = tmp_path / f"termination-{os.urandom(4).hex()}.json"
    env = dict(env)
    # Measured under coverage (`make test-integration`), unless it runs as another user:
    # that one could not write its data file beside the others.
    if user is None and "COVERAGE_PROCESS_CONFIG" in os.environ:
        env["COVERAGE_PROCESS_CONFIG"] = os.environ["COVERAGE_PROCESS_CONFIG"]
    proc = subprocess.run(
        [*(user.prefix() if user else []), *AGENT, *args, "--termination-message-path",
         str(term)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(tmp_path),
        check=False,
    )
    termination = json.loads(term.read_text()) if term.exists() else None
    return AgentRun(proc.returncode, proc.stdout, proc.stderr, termination)


def s3_args(
    s3: S3Server, bucket: str, prefix: str = "backups", endpoint: str | None = None
) -> list[str]:
    return [
        "--bucket",
        bucket,
        "--prefix",
        prefix,
        "--endpoint",
        endpoint or s3.endpoint,
        "--force-path-style",
        "--region",
        s3.region,
    ]


def db_args(
    pg: PostgresServer,
    flag: str = "--db-name",
    dbname: str | None = None,
    *,
    db_user: str = DB_USER,
) -> list[str]:
    args = ["--db-host", pg.host, "--db-port", str(pg.port), "--db-user", db_user]
    if dbname is not None:
        args += [flag, dbname]
    return args


def backup_args(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    dbname: str,
    uploads: Path | None,
    name: str = "nightly",
    extra: Sequence[str] = (),
    prefix: str = "backups",
    endpoint: str | None = None,
) -> list[str]:
    args = ["agent", "backup", "--namespace", "prod", "--name", name, "--backup-id", f"id-{name}"]
    args += ["--component", "database", *db_args(pg, "--db-name", dbname)]
    if uploads is not None:
        args += ["--component", "uploads", "--uploads-dir", str(uploads)]
    return args + s3_args(s3, bucket, prefix, endpoint) + list(extra)


def manifest_key(name: str = "nightly", prefix: str = "backups") -> str:
    return f"{prefix}/prod/{name}/manifest.json"


def restore_args(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    key: str,
    target_db: str | None,
    uploads: Path | None,
    extra: Sequence[str] = (),
) -> list[str]:
    args = ["agent", "restore", "--manifest-key", key]
    if target_db is not None:
        args += ["--component", "database", *db_args(pg, "--target-db-name", target_db)]
    if uploads is not None:
        args += ["--component", "uploads", "--uploads-dir", str(uploads)]
    return args + s3_args(s3, bucket) + list(extra)


def db_snapshot(pg: PostgresServer, dbname: str) -> dict[str, Any]:
    with pg.connection(dbname) as conn:
        return dbsnapshot.snapshot(conn)


def new_identity(tmp_path: Path) -> tuple[str, str, Path]:
    """(public key, private key text, identity file) for age."""
    identity = pyrage.x25519.Identity.generate()
    key_file = tmp_path / "age-key.txt"
    text = f"# test key\n{identity}\n"
    key_file.write_text(text)
    key_file.chmod(0o600)
    return str(identity.to_public()), text, key_file


def read_manifest(s3: S3Server, bucket: str, key: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(s3.get_bytes(bucket, key))
    return data


def assert_failed_cleanly(run: AgentRun, s3: S3Server, bucket: str, *, secret: str = "") -> None:
    """The failure contract: non-zero exit, one `error:` line, no traceback, a termination
    message saying why, no manifest, no leftover objects or multipart uploads."""
    assert run.returncode != 0, run.describe()
    assert run.error_line, run.describe()
    assert "Traceback" not in run.stderr, run.describe()
    assert run.termination is not None and run.termination["ok"] is False, run.describe()
    assert run.termination["error"] in run.error_line
    if secret:
        assert secret not in run.stderr and secret not in run.stdout
        assert secret not in json.dumps(run.termination)
    keys = s3.list_keys(bucket)
    assert not [k for k in keys if k.endswith("manifest.json")], keys
    assert keys == [], keys
    assert s3.list_multipart_uploads(bucket) == []


def backup(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    db: str,
    tmp_path: Path,
    uploads: Path | None = None,
    extra: tuple[str, ...] = (),
    name: str = "nightly",
) -> dict[str, Any]:
    """A backup that must succeed; returns its manifest."""
    run = run_agent(
        backup_args(pg, s3, bucket, db, uploads, name=name, extra=extra),
        agent_env(tmp_path, pg, s3),
        tmp_path,
    )
    assert run.returncode == 0, run.describe()
    return read_manifest(s3, bucket, manifest_key(name))

