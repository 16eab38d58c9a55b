"""TLS to both endpoints with a private CA made by the test (issue 17): the object store
(versitygw serving https) and PostgreSQL (`ssl = on`, a `hostssl ... cert` pg_hba line, the
agent connecting with sslmode verify-full and a client certificate instead of a password).

The agent gets what a Job gives it: the CA bundle as a file path (--ca-bundle), the libpq
certificates as PGSSLROOTCERT/PGSSLCERT/PGSSLKEY naming files, the key world-readable as a
Secret volume without an fsGroup leaves it (jobs/pod.py) -- which libpq refuses, so the
agent's private 0600 copy is what makes it work. The private key never shows in its output."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent import (
    AgentRun,
    agent_env,
    backup_args,
    db_snapshot,
    manifest_key,
    read_manifest,
    restore_args,
    run_agent,
)
from tests.support.dbsnapshot import APP_ROLE, create_sample_database, ensure_roles
from tests.support.pgserver import PostgresServer
from tests.support.s3server import S3Server
from tests.support.tlscerts import CertFiles, TestCA

pytestmark = pytest.mark.integration

HOSTS = ("127.0.0.1", "localhost")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("other-ca"), name="some other CA")


@pytest.fixture(scope="module")
def s3_tls(ca: TestCA) -> Iterator[S3Server]:
    server = S3Server(tls=ca.issue("s3", hosts=HOSTS), ca_bundle=ca.cert_path)
    try:
        yield server.start()
    finally:
        server.cleanup()


@pytest.fixture
def tls_bucket(s3_tls: S3Server) -> str:
    return s3_tls.make_bucket()


@pytest.fixture(scope="module")
def client_cert(ca: TestCA) -> CertFiles:
    # 0644: what a Secret volume gives a non-root agent without an fsGroup (readable, but
    # libpq refuses a key others may read).
    return ca.issue(APP_ROLE, client=True, key_mode=0o644)


@pytest.fixture(scope="module")
def pg_tls(ca: TestCA) -> Iterator[PostgresServer]:
    server = PostgresServer(tls=ca.issue("postgres", hosts=HOSTS), ca_cert=ca.cert_path)
    try:
        server.start()
        ensure_roles(server)
        server.allow_cert_auth(APP_ROLE)
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def tls_db(pg_tls: PostgresServer) -> str:
    return create_sample_database(pg_tls, "ts_tls", scale=1)


def key_lines(cert: CertFiles) -> list[str]:
    return [line for line in cert.key_pem.splitlines() if line and not line.startswith("-----")]


def assert_no_key(run: AgentRun, cert: CertFiles) -> None:
    text = run.stdout + run.stderr + json.dumps(run.termination)
    for line in key_lines(cert):
        assert line not in text, "the client key leaked into the agent's output"


# --- S3 over TLS ---------------------------------------------------------------------------


def test_backup_and_restore_over_tls_with_the_private_ca(
    pg: PostgresServer, s3_tls: S3Server, tls_bucket: str, sample_db: str,
    scratch_db_name: str, uploads_tree: Path, ca: TestCA, tmp_path: Path,
) -> None:
    assert s3_tls.endpoint.startswith("https://")
    trust = ["--ca-bundle", str(ca.cert_path)]
    run = run_agent(backup_args(pg, s3_tls, tls_bucket, sample_db, uploads_tree, extra=trust),
                    agent_env(tmp_path, pg, s3_tls), tmp_path)
    assert run.returncode == 0, run.describe()
    key = manifest_key()
    assert read_manifest(s3_tls, tls_bucket, key)["artifacts"]

    restored = tmp_path / "restored"
    restored.mkdir()
    run = run_agent(restore_args(pg, s3_tls, tls_bucket, key, scratch_db_name, restored,
                                 extra=[*trust, "--create-database"]),
                    agent_env(tmp_path, pg, s3_tls), tmp_path)
    assert run.returncode == 0, run.describe()
    assert db_snapshot(pg, scratch_db_name) == db_snapshot(pg, sample_db)


def test_without_the_ca_the_backup_fails_clearly(
    pg: PostgresServer, s3_tls: S3Server, tls_bucket: str, sample_db: str, tmp_path: Path,
) -> None:
    run = run_agent(backup_args(pg, s3_tls, tls_bucket, sample_db, None),
                    agent_env(tmp_path, pg, s3_tls), tmp_path)
    assert run.returncode != 0, run.describe()
    assert "certificate verify failed" in run.error_line, run.describe()
    assert "Traceback" not in run.stderr
    assert s3_tls.list_keys(tls_bucket) == []


def test_a_wrong_ca_fails_like_none(
    pg: PostgresServer, s3_tls: S3Server, tls_bucket: str, sample_db: str,
    other_ca: TestCA, tmp_path: Path,
) -> None:
    run = run_agent(backup_args(pg, s3_tls, tls_bucket, sample_db, None,
                                extra=["--ca-bundle", str(other_ca.cert_path)]),
                    agent_env(tmp_path, pg, s3_tls), tmp_path)
    assert run.returncode != 0
    assert "certificate verify failed" in run.error_line, run.describe()


def test_a_ca_bundle_without_a_certificate_is_refused_before_anything_runs(
    pg: PostgresServer, s3_tls: S3Server, tls_bucket: str, sample_db: str, tmp_path: Path,
) -> None:
    bogus = tmp_path / "ca.crt"
    bogus.write_text("not a certificate\n")
    run = run_agent(backup_args(pg, s3_tls, tls_bucket, sample_db, None,
                                extra=["--ca-bundle", str(bogus)]),
                    agent_env(tmp_path, pg, s3_tls), tmp_path)
    assert run.returncode != 0
    assert "holds no PEM certificate" in run.error_line, run.describe()


def test_insecure_skip_tls_verify_works_and_says_so(
    pg: PostgresServer, s3_tls: S3Server, tls_bucket: str, sample_db: str, tmp_path: Path,
) -> None:
    run = run_agent(backup_args(pg, s3_tls, tls_bucket, sample_db, None,
                                extra=["--insecure-skip-tls-verify"]),
                    agent_env(tmp_path, pg, s3_tls), tmp_path)
    assert run.returncode == 0, run.describe()
    assert "TLS verification of" in run.stderr and "is OFF" in run.stderr


# --- PostgreSQL over TLS with a client certificate -------------------------------------------


def tls_env(tmp_path: Path, s3: S3Server, root: Path, cert: CertFiles) -> dict[str, str]:
    # No PGPASSWORD: the pg_hba line for the role is `cert`.
    return agent_env(tmp_path, None, s3, {"PGSSLROOTCERT": str(root),
                                          "PGSSLCERT": str(cert.cert),
                                          "PGSSLKEY": str(cert.key)})


def test_dump_and_restore_with_verify_full_and_a_client_certificate(
    pg_tls: PostgresServer, s3: S3Server, bucket: str, tls_db: str, ca: TestCA,
    client_cert: CertFiles, tmp_path: Path,
) -> None:
    verify = ["--db-sslmode", "verify-full"]
    env = tls_env(tmp_path, s3, ca.cert_path, client_cert)
    run = run_agent(backup_args(pg_tls, s3, bucket, tls_db, None, extra=verify), env, tmp_path)
    assert run.returncode == 0, run.describe()
    assert_no_key(run, client_cert)
    # The agent's private copy of the key is gone with it; the mounted one is untouched.
    assert not list(tmp_path.glob("pg-tls-*"))
    assert client_cert.key.stat().st_mode & 0o777 == 0o644

    target = "ts_tls_restored"
    pg_tls.drop_database(target)
    pg_tls.set_createdb(APP_ROLE, True)  # create_sample_database resets the role
    try:
        run = run_agent(restore_args(pg_tls, s3, bucket, manifest_key(), target, None,
                                     extra=[*verify, "--create-database"]), env, tmp_path)
        assert run.returncode == 0, run.describe()
        assert_no_key(run, client_cert)
        assert db_snapshot(pg_tls, target) == db_snapshot(pg_tls, tls_db)
    finally:
        pg_tls.drop_database(target)


def test_a_wrong_root_certificate_fails_clearly(
    pg_tls: PostgresServer, s3: S3Server, bucket: str, tls_db: str, other_ca: TestCA,
    client_cert: CertFiles, tmp_path: Path,
) -> None:
    env = tls_env(tmp_path, s3, other_ca.cert_path, client_cert)
    run = run_agent(backup_args(pg_tls, s3, bucket, tls_db, None,
                                extra=["--db-sslmode", "verify-full"]), env, tmp_path)
    assert run.returncode != 0, run.describe()
    assert "certificate verify failed" in run.error_line, run.describe()
    assert_no_key(run, client_cert)
    assert s3.list_keys(bucket) == []


def test_without_a_client_certificate_the_cert_line_refuses(
    pg_tls: PostgresServer, s3: S3Server, bucket: str, tls_db: str, ca: TestCA,
    tmp_path: Path,
) -> None:
    env = agent_env(tmp_path, None, s3, {"PGSSLROOTCERT": str(ca.cert_path)})
    run = run_agent(backup_args(pg_tls, s3, bucket, tls_db, None,
                                extra=["--db-sslmode", "verify-full"]), env, tmp_path)
    assert run.returncode != 0, run.describe()
    assert "certificate" in run.error_line, run.describe()
