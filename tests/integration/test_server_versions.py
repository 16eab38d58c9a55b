"""The version matrix: the shipped image's own clients against PostgreSQL servers 15, 17 and
18, in every direction docs/security.md claims.

The agent runs in the image built from the Dockerfile (`make image`), as its non-root user
with a read-only root filesystem, on the host's network; the servers are the host's own
(Debian bookworm: 15) and containers of the other majors (tests/support/pgcontainer.py). It
connects as the app's owner role. Each restore is compared with its source by the full
fingerprint (contents, sequences, owners, privileges, extensions, comments).

pg_dump/pg_restore 17+ write `SET transaction_timeout = 0;`, which servers before 17 refuse:
the 17->15, 18->15 and "old image" rows are the ones that failed before agent/clients.py.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import (
    AgentRun,
    agent_env,
    backup_args,
    db_snapshot,
    manifest_key,
    read_manifest,
    restore_args,
)
from tests.support.dbsnapshot import APP_ROLE, assert_same, create_sample_database
from tests.support.pgcontainer import ContainerPostgres
from tests.support.pgserver import PostgresServer
from tests.support.s3server import S3Server

MAJORS = (15, 17, 18)
IMAGE = os.environ.get("E2E_IMAGE", "timesheet-backup-operator:dev")


def _image_present() -> None:
    proc = subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        pytest.fail(f"the image {IMAGE} is not built: run `make image` ({proc.stderr.strip()})",
                    pytrace=False)


@pytest.fixture(scope="module")
def servers(pg: PostgresServer) -> Iterator[dict[int, PostgresServer]]:
    _image_present()
    started: list[ContainerPostgres] = []
    found: dict[int, PostgresServer] = {}
    try:
        for major in MAJORS:
            if pg.version == major:
                found[major] = pg
                continue
            server = ContainerPostgres(major)
            started.append(server)
            server.start()
            found[major] = server
        yield found
    finally:
        for server in started:
            server.cleanup()


def run_in_image(args: Sequence[str], env: Mapping[str, str],
                 clients_only: int | None = None) -> AgentRun:
    """`docker run` of the shipped image: non-root, read-only root, /scratch as a tmpfs, the
    secrets passed by name only (`-e NAME`: values never in the argument list).
    `clients_only` hides every client major but that one (what an older image carried)."""
    names = [k for k in env if k.startswith(("PG", "AWS_"))]
    extra: list[str] = []
    if clients_only is not None:
        extra = ["--tmpfs", "/clients", "-e", "TSB_PG_CLIENTS_ROOT=/clients",
                 "--entrypoint", "sh", IMAGE, "-c",
                 f'ln -s /usr/lib/postgresql/{clients_only} /clients/{clients_only} '
                 '&& exec timesheet-backup "$@"', "sh"]
    command = ["docker", "run", "--rm", "--network", "host", "--read-only",
               "--tmpfs", "/scratch", "--user", "65532:65532",
               *[a for name in names for a in ("-e", name)],
               *(extra or [IMAGE]), *args]
    proc = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=300, check=False)
    return AgentRun(proc.returncode, proc.stdout, proc.stderr, None)


# What a move across majors changes in the catalog by PostgreSQL's own design, and nothing
# else: 17 added the MAINTAIN privilege (an owner's full privileges read `arwdDxtm` there,
# `arwdDxt` before); 18 records every NOT NULL as a constraint of its own (contype `n`);
# an extension comes back at the target's default version (pg_dump writes no version).
MAINTAIN_SINCE = 17
NOT_NULL_CONSTRAINTS_SINCE = 18


def across(snap: dict[str, Any], low: int, high: int) -> dict[str, Any]:
    """`snap` without the differences between majors `low` and `high` named above."""
    snap = dict(snap)
    if low < MAINTAIN_SINCE <= high:
        def strip(item: str) -> str:
            grantee, sep, rest = item.partition("=")
            privileges, slash, grantor = rest.partition("/")
            return f"{grantee}{sep}{privileges.replace('m', '')}{slash}{grantor}"

        snap["acl"] = {name: [strip(i) for i in items] if isinstance(items, list) else items
                       for name, items in (snap.get("acl") or {}).items()}
    if low < NOT_NULL_CONSTRAINTS_SINCE <= high:
        catalog = dict(snap.get("catalog") or {})
        catalog["constraints"] = {k: v for k, v in (catalog.get("constraints") or {}).items()
                                  if not str(v).startswith("[n] NOT NULL")}
        snap["catalog"] = catalog
    if low != high:
        catalog = dict(snap.get("catalog") or {})
        catalog["extensions"] = {
            name: {k: v for k, v in entry.items() if k != "version"}
            if isinstance(entry, dict) else entry
            for name, entry in (catalog.get("extensions") or {}).items()}
        snap["catalog"] = catalog
    return snap


def sample(server: PostgresServer) -> str:
    return create_sample_database(server, f"tsb_matrix_{uuid.uuid4().hex[:8]}")


def backup(server: PostgresServer, s3: S3Server, bucket: str, db: str, work: Path,
           fmt: str = "custom", clients_only: int | None = None) -> dict[str, object]:
    name = f"m{uuid.uuid4().hex[:8]}"
    run = run_in_image(backup_args(server, s3, bucket, db, None, name=name,
                                   extra=["--db-format", fmt]),
                       agent_env(work, server, s3), clients_only)
    assert run.returncode == 0, run.describe()
    manifest = read_manifest(s3, bucket, manifest_key(name))
    manifest["_key"] = manifest_key(name)
    return manifest


def restore_and_compare(source: PostgresServer, db: str, target: PostgresServer,
                        manifest: Mapping[str, object], s3: S3Server, bucket: str,
                        work: Path) -> AgentRun:
    into = f"tsb_matrix_into_{uuid.uuid4().hex[:8]}"
    target.create_database(into, owner=APP_ROLE)
    run = run_in_image(restore_args(target, s3, bucket, str(manifest["_key"]), into, None),
                       agent_env(work, target, s3))
    assert run.returncode == 0, run.describe()
    majors = sorted((source.version or 0, target.version or 0))
    before, after = (across(db_snapshot(source, db), *majors),
                     across(db_snapshot(target, into), *majors))
    assert_same(before, after)
    target.drop_database(into)
    return run


def database_artifact(manifest: Mapping[str, object]) -> Mapping[str, str]:
    artifacts = manifest["artifacts"]
    assert isinstance(artifacts, list)
    return next(a for a in artifacts if a["component"] == "database")


@pytest.fixture(scope="module")
def samples(servers: dict[int, PostgresServer]) -> Iterator[dict[int, str]]:
    made = {major: sample(server) for major, server in servers.items()}
    yield made
    for major, db in made.items():
        servers[major].drop_database(db)


@pytest.mark.parametrize("source", MAJORS)
def test_backup_uses_the_servers_own_client_and_records_both_versions(
        servers: dict[int, PostgresServer], samples: dict[int, str], s3: S3Server,
        bucket: str, tmp_path: Path, source: int) -> None:
    manifest = backup(servers[source], s3, bucket, samples[source], tmp_path)
    artifact = database_artifact(manifest)
    assert artifact["serverVersion"].split(".")[0] == str(source)
    assert artifact["pgDumpVersion"].split(".")[0] == str(source)
    restore_and_compare(servers[source], samples[source], servers[source], manifest, s3,
                        bucket, tmp_path)


@pytest.mark.parametrize(("source", "target"), [(15, 17), (15, 18), (17, 18), (17, 15),
                                                (18, 15), (18, 17)])
def test_restore_across_majors(servers: dict[int, PostgresServer], samples: dict[int, str],
                               s3: S3Server, bucket: str, tmp_path: Path, source: int,
                               target: int) -> None:
    manifest = backup(servers[source], s3, bucket, samples[source], tmp_path)
    run = restore_and_compare(servers[source], samples[source], servers[target], manifest,
                              s3, bucket, tmp_path)
    result = run.result
    assert result["database"]["serverMajor"] == target, run.describe()
    if target < 17 <= source:
        # Only the script path can load a 17+ archive into an older server.
        assert "pg_restore | psql, without SET transaction_timeout" in \
            result["database"]["client"], run.describe()


@pytest.mark.parametrize("target", [15, 17])
def test_plain_dump_of_a_newer_client_restores_into_an_older_server(
        servers: dict[int, PostgresServer], samples: dict[int, str], s3: S3Server,
        bucket: str, tmp_path: Path, target: int) -> None:
    manifest = backup(servers[18], s3, bucket, samples[18], tmp_path, fmt="plain")
    run = restore_and_compare(servers[18], samples[18], servers[target], manifest, s3, bucket,
                              tmp_path)
    if target < 17:
        assert "without SET transaction_timeout" in run.result["database"]["client"]


@pytest.mark.parametrize("fmt", ["custom", "plain"])
def test_backups_of_the_previous_image_restore_into_their_own_server(
        servers: dict[int, PostgresServer], samples: dict[int, str], s3: S3Server,
        bucket: str, tmp_path: Path, fmt: str) -> None:
    """The previous image dumped every server with pg_dump 17: such a backup of a 15 server
    must restore into it (the reported failure)."""
    manifest = backup(servers[15], s3, bucket, samples[15], tmp_path, fmt=fmt, clients_only=17)
    assert database_artifact(manifest)["pgDumpVersion"].startswith("17.")
    restore_and_compare(servers[15], samples[15], servers[15], manifest, s3, bucket, tmp_path)


def test_a_server_newer_than_every_client_fails_before_anything_runs(
        servers: dict[int, PostgresServer], samples: dict[int, str], s3: S3Server,
        bucket: str, tmp_path: Path) -> None:
    """An image whose newest client is older than the server refuses up front, naming both,
    and uploads nothing. (A server outside the supported range cannot run here; that refusal
    is unit-tested in tests/unit/test_clients.py.)"""
    run = run_in_image(backup_args(servers[17], s3, bucket, samples[17], None, name="newer"),
                       agent_env(tmp_path, servers[17], s3), clients_only=15)
    assert run.returncode != 0, run.describe()
    assert "newer than the newest client here (15)" in run.stderr, run.describe()
    assert s3.list_keys(bucket) == []


def test_a_failing_script_restore_stops_with_psqls_error_and_changes_nothing(
        servers: dict[int, PostgresServer], samples: dict[int, str], s3: S3Server,
        bucket: str, tmp_path: Path) -> None:
    """pg_restore 18 | psql into 15, psql stopping at the first statement that fails: the
    agent reports psql's error (pg_restore, blocked on a full pipe, is stopped; no hang), and
    the one transaction leaves the target as it was."""
    manifest = backup(servers[18], s3, bucket, samples[18], tmp_path)
    target = servers[15]
    into = f"tsb_matrix_busy_{uuid.uuid4().hex[:8]}"
    target.create_database(into, owner=APP_ROLE)
    with target.connection(into, user=APP_ROLE) as conn:
        conn.execute("CREATE TABLE public.accounts (precious text)")
        conn.execute("INSERT INTO public.accounts VALUES ('keep me')")
    before = db_snapshot(target, into)
    run = run_in_image(restore_args(target, s3, bucket, str(manifest["_key"]), into, None),
                       agent_env(tmp_path, target, s3))
    assert run.returncode != 0, run.describe()
    assert "psql failed" in run.stderr and "already exists" in run.stderr, run.describe()
    assert_same(before, db_snapshot(target, into))
    target.drop_database(into)


@pytest.mark.parametrize("major", MAJORS)
def test_in_place_clean_restore_as_the_owner_role(
        servers: dict[int, PostgresServer], s3: S3Server, bucket: str, tmp_path: Path,
        major: int) -> None:
    """The day-one case on each server: back up the app's database, lose data, put the
    backup back over it (`--clean`, one transaction) as the app's own role."""
    server = servers[major]
    db = sample(server)
    try:
        before = db_snapshot(server, db)
        manifest = backup(server, s3, bucket, db, tmp_path)
        with server.connection(db, user=APP_ROLE) as conn:
            conn.execute("DELETE FROM entries")
            conn.execute("CREATE TABLE scratch_after_backup (x int)")
        run = run_in_image(restore_args(server, s3, bucket, str(manifest["_key"]), db, None,
                                        extra=["--clean"]),
                           agent_env(tmp_path, server, s3))
        assert run.returncode == 0, run.describe()
        after = db_snapshot(server, db)
        # pg_restore --clean drops what the dump has; a table made after the backup stays.
        assert "scratch_after_backup" in str(after)
        with server.connection(db, user=APP_ROLE) as conn:
            conn.execute("DROP TABLE scratch_after_backup")
        assert_same(before, db_snapshot(server, db))
    finally:
        server.drop_database(db)
