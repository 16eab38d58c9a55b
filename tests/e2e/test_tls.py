"""TLS with a private CA to both endpoints, through the operator (issue 17):

- a Backup and a Restore against an S3 endpoint over https whose certificate a CA made by the
  test signs (a second versitygw, started here with --cert/--key, reached through a Service
  like the harness's own S3), trusted through storage.caBundleSecretRef -- by the Jobs (a
  mounted file) and by the operator (which reads the manifest and deletes the objects);
- a database reached with sslMode verify-full and a client certificate (a second PostgreSQL
  with `ssl = on` and a `hostssl ... cert` pg_hba line for the app's role; no password);
- insecureSkipTLSVerify: the Backup succeeds, with status.warnings and a Warning Event;
- the client's private key appears nowhere a user, log collector or Prometheus can see.

No cluster-script changes: both servers are started by this module on the harness's host
address (cluster.host_bind_address) and exposed with cluster.expose_host_port."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import Cluster, secret_data, wait_for
from tests.support.dbsnapshot import APP_ROLE, create_sample_database, ensure_roles
from tests.support.operator import OPERATOR_NAMESPACE, App, Operator, delete_all
from tests.support.pgserver import PostgresServer
from tests.support.s3server import S3Server
from tests.support.secretscan import pem_secrets, scan_text
from tests.support.tlscerts import CertFiles, TestCA

pytestmark = pytest.mark.e2e

S3_SERVICE, S3_PORT = "s3-tls", 9443
DB_SERVICE = "timesheet-db-tls"


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "ca")


def service_names(app: App, service: str) -> list[str]:
    return [f"{service}.{app.namespace}.svc", f"{service}.{app.namespace}.svc.cluster.local"]


@pytest.fixture
def s3_tls(cluster: Cluster, app: App, ca: TestCA) -> Iterator[S3Server]:
    cert = ca.issue("s3", hosts=[*service_names(app, S3_SERVICE), cluster.host_bind_address])
    server = S3Server(tls=cert, ca_bundle=ca.cert_path, host=cluster.host_bind_address)
    try:
        server.start()
        server.make_bucket(app.bucket)
        cluster.expose_host_port(app.namespace, S3_SERVICE, S3_PORT, server.port)
        cluster.core.create_namespaced_secret(app.namespace, {
            "metadata": {"name": "s3-tls"},
            "data": secret_data({"AWS_ACCESS_KEY_ID": server.access_key,
                                 "AWS_SECRET_ACCESS_KEY": server.secret_key})})
        yield server
        # While the server still runs: the operator deletes the Backups' objects through it.
        delete_all(app)
    finally:
        server.cleanup()


@pytest.fixture
def pg_tls(cluster: Cluster, app: App, ca: TestCA) -> Iterator[PostgresServer]:
    cert = ca.issue("postgres", hosts=[*service_names(app, DB_SERVICE),
                                       cluster.host_bind_address])
    server = PostgresServer(tls=cert, ca_cert=ca.cert_path, host=cluster.host_bind_address)
    try:
        server.start()
        ensure_roles(server)
        create_sample_database(server, "timesheet_tls", scale=1)
        server.set_createdb(APP_ROLE, True)
        server.allow_cert_auth(APP_ROLE)
        cluster.expose_host_port(app.namespace, DB_SERVICE, 5432, server.port)
        yield server
        delete_all(app)
    finally:
        server.cleanup()


@pytest.fixture
def tls_secrets(cluster: Cluster, app: App, ca: TestCA) -> CertFiles:
    """The CA (as cert-manager's ca.crt would be) and the app role's client certificate as a
    kubernetes.io/tls Secret."""
    client = ca.issue(APP_ROLE, client=True)
    core = cluster.core
    core.create_namespaced_secret(app.namespace, {
        "metadata": {"name": "private-ca"}, "data": secret_data({"ca.crt": ca.cert_pem})})
    core.create_namespaced_secret(app.namespace, {
        "metadata": {"name": "timesheet-db-client"}, "type": "kubernetes.io/tls",
        "data": secret_data({"tls.crt": client.cert_pem, "tls.key": client.key_pem})})
    return client


def tls_storage(app: App) -> dict[str, object]:
    return {"bucket": app.bucket, "prefix": "e2e-tls",
            "endpoint": f"https://{S3_SERVICE}.{app.namespace}.svc:{S3_PORT}",
            "forcePathStyle": True, "credentialsSecretRef": {"name": "s3-tls"},
            "caBundleSecretRef": {"name": "private-ca", "key": "ca.crt"}}


def tls_database(app: App) -> dict[str, object]:
    return {"host": f"{DB_SERVICE}.{app.namespace}.svc", "name": "timesheet_tls",
            "user": APP_ROLE, "sslMode": "verify-full",
            "sslRootCertSecretRef": {"name": "private-ca", "key": "ca.crt"},
            "clientCertSecretRef": {"name": "timesheet-db-client"}}


def test_backup_and_restore_over_tls_with_a_private_ca_and_a_client_certificate(
    cluster: Cluster, app: App, operator: Operator, s3_tls: S3Server, pg_tls: PostgresServer,
    tls_secrets: CertFiles,
) -> None:
    app.create("backups", "tls", {"components": ["database"], "database": tls_database(app),
                                  "storage": tls_storage(app), "job": {"backoffLimit": 0}})
    st = app.wait_phase("backups", "tls", ("Succeeded", "Failed"))["status"]
    # Succeeded means the operator, too, read the manifest over TLS with the CA.
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    assert not st.get("warnings")
    keys = [o["Key"] for o in s3_tls.client().list_objects_v2(
        Bucket=app.bucket, Prefix="e2e-tls/").get("Contents", [])]
    assert any(k.endswith("manifest.json") for k in keys), keys

    job = cluster.batch.read_namespaced_job(st["jobName"], app.namespace)
    container = job.spec.template.spec.containers[0]
    assert not [a for a in container.args if "PRIVATE KEY" in a]
    assert {v.name for v in job.spec.template.spec.volumes} >= {"s3-ca", "postgres-tls"}

    pg_tls.drop_database("timesheet_tls_restored")
    app.create("restores", "tls", {
        "backupName": "tls",
        "database": {"name": "timesheet_tls_restored", "createDatabase": True},
        "verify": {"sqlChecks": ["SELECT count(*) > 0 FROM timesheets"]},
        "job": {"backoffLimit": 0}})
    rst = app.wait_phase("restores", "tls", ("Succeeded", "Failed"), timeout=300)["status"]
    assert rst["phase"] == "Succeeded", json.dumps(rst, indent=1)

    # Deleting the Backup deletes its objects: the operator's own S3 calls trust the CA.
    app.delete("backups", "tls")
    cluster_wait_no_objects(s3_tls, app.bucket, "e2e-tls/")

    places = {
        "backups": json.dumps(app.list("backups")),
        "restores": json.dumps(app.list("restores")),
        "jobs": json.dumps(cluster.api.sanitize_for_serialization(
            cluster.batch.list_namespaced_job(app.namespace).items)),
        "events": json.dumps(cluster.api.sanitize_for_serialization(
            cluster.core.list_namespaced_event(app.namespace).items)),
    }
    for pod in cluster.core.list_namespaced_pod(app.namespace).items:
        for container_name, text in cluster.pod_logs(app.namespace, pod.metadata.name).items():
            places[f"log {pod.metadata.name}/{container_name}"] = text
    operator_pod = operator.pod_name()
    assert operator_pod
    for container_name, text in cluster.pod_logs(OPERATOR_NAMESPACE, operator_pod).items():
        places[f"operator log {container_name}"] = text
    findings = [f for where, text in places.items()
                for f in scan_text(where, text, pem_secrets("client key", tls_secrets.key_pem))]
    assert findings == [], "\n".join(map(str, findings))


def cluster_wait_no_objects(s3: S3Server, bucket: str, prefix: str) -> None:
    wait_for(lambda: not s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
             .get("Contents"), 120, interval=1,
             message=lambda: f"objects under {prefix} never deleted")


def test_without_the_ca_the_backup_fails_with_the_reason(
    app: App, operator: Operator, s3_tls: S3Server, tls_secrets: CertFiles,
) -> None:
    storage = {**tls_storage(app)}
    storage.pop("caBundleSecretRef")
    # Retain: without the CA the operator cannot reach the bucket either, so a Delete
    # policy would keep the Backup Deleting until someone fixes the trust (nothing is given
    # up silently); this test only looks at the failure.
    app.create("backups", "no-ca", {"components": ["database"], "database": app.database_spec(),
                                    "storage": storage, "job": {"backoffLimit": 0},
                                    "deletionPolicy": "Retain"})
    st = app.wait_phase("backups", "no-ca", ("Succeeded", "Failed"))["status"]
    assert st["phase"] == "Failed"
    assert "certificate verify failed" in st["message"], st["message"]


def test_insecure_skip_tls_verify_is_warned_about(
    app: App, operator: Operator, s3_tls: S3Server, tls_secrets: CertFiles,
) -> None:
    storage = {**tls_storage(app), "insecureSkipTLSVerify": True}
    storage.pop("caBundleSecretRef")
    app.create("backups", "insecure", {"components": ["database"],
                                       "database": app.database_spec(), "storage": storage,
                                       "job": {"backoffLimit": 0}})
    st = app.wait_phase("backups", "insecure", ("Succeeded", "Failed"))["status"]
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    assert any("insecureSkipTLSVerify" in w for w in st.get("warnings") or []), st
    assert [e for e in app.events("insecure")
            if e.type == "Warning" and e.reason == "InsecureSkipTLSVerify"]


def test_a_missing_ca_secret_is_secret_missing(app: App, operator: Operator) -> None:
    storage = {**app.storage(), "caBundleSecretRef": {"name": "no-such-ca", "key": "ca.crt"}}
    app.create("backups", "ca-missing", {"components": ["database"],
                                         "database": app.database_spec(), "storage": storage})
    st = app.wait_phase("backups", "ca-missing", ("Succeeded", "Failed"))["status"]
    assert st["phase"] == "Failed"
    assert "no-such-ca" in st["message"]
    assert [c for c in st["conditions"] if c["reason"] == "SecretMissing"]
