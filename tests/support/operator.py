"""e2e fixtures for the operator: installed through its Helm chart (so it runs as a pod with
the chart's ServiceAccount and RBAC, as in production), plus a per-test "app": a database
with sample timesheet data, an uploads volume with files, a bucket, Secrets and the Services
through which pods reach the host's PostgreSQL and S3 server."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
import yaml
from botocore.config import Config
from kubernetes import client as k8s
from psycopg import sql

from tests.support.cluster import REPO_ROOT, Cluster, describe_namespace, secret_data, wait_for
from tests.support.dbsnapshot import APP_ROLE, SAMPLE_ROLES, load_sample, load_schema, snapshot
from tests.support.pgserver import PostgresServer
from tests.support.trees import make_app_owned, make_uploads_tree, snapshot_tree

GROUP, VERSION = "backup.northstar.io", "v1alpha1"
OPERATOR_NAMESPACE = "tsb-system"
RELEASE = "tsb"
# The example web app's uid (examples/app/web.yaml): not the agent's 65532.
APP_UID = 1000


def tool_env(cluster: Cluster) -> dict[str, str]:
    env = dict(os.environ)
    env.update({k: v for k, v in cluster.env.items() if k != "PATH"})
    tools = cluster.env.get("TSB_TOOLS_BIN") or ""
    env["PATH"] = f"{tools}:{env.get('PATH', '')}" if tools else env.get("PATH", "")
    env["KUBECONFIG"] = str(cluster.kubeconfig)
    return env


def run_tool(cluster: Cluster, *argv: str, check: bool = True, timeout: float = 300,
             stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), env=tool_env(cluster), cwd=REPO_ROOT, text=True,
                            capture_output=True, timeout=timeout, input=stdin)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@dataclass
class Operator:
    cluster: Cluster
    namespace: str = OPERATOR_NAMESPACE

    def pod_name(self) -> str | None:
        pods = self.cluster.core.list_namespaced_pod(
            self.namespace, label_selector="app.kubernetes.io/name=timesheet-backup-operator")
        running = [p for p in pods.items if p.status.phase == "Running"
                   and not p.metadata.deletion_timestamp
                   and any(c.type == "Ready" and c.status == "True"
                           for c in p.status.conditions or [])]
        return running[0].metadata.name if running else None


    def metrics_url(self, port: int = 8080) -> str:
        """The acting pod's /metrics, straight at its pod IP (this host routes to the pod
        network through the node's bridge)."""
        name = wait_for(self.pod_name, 60, message="no running operator pod")
        ip = self.cluster.core.read_namespaced_pod(name, self.namespace).status.pod_ip
        return f"http://{ip}:{port}/metrics"


def install_operator(cluster: Cluster, *extra: str) -> Operator:
    """`helm upgrade --install` the chart with the e2e image; wait for the pod."""
    run_tool(cluster, "kubectl", "apply", "--server-side", "--force-conflicts", "-f", "crds/")
    repository, _, tag = cluster.image.rpartition(":")
    # A rebuilt image keeps its tag: name its content in the pod template, so an operator
    # started from the previous build is replaced rather than kept.
    built = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", cluster.image],
                           capture_output=True, text=True)
    if built.returncode == 0:
        extra = ("--set-string", f"podAnnotations.tsb-e2e-image={built.stdout.strip()}",
                 *extra)
    run_tool(cluster, "helm", "upgrade", "--install", RELEASE,
             "charts/timesheet-backup-operator", "--namespace", OPERATOR_NAMESPACE,
             "--create-namespace", "--set", f"image.repository={repository}",
             "--set", f"image.tag={tag}", "--set", "schedules=null",
             "--wait", "--timeout", "180s", *extra)
    operator = Operator(cluster)
    wait_for(operator.pod_name, 120, message="operator pod not running")
    return operator


@dataclass
class App:
    """One test's world: namespace objects, a database with data, a bucket, an uploads dir."""

    cluster: Cluster
    namespace: str
    database: str
    bucket: str
    uploads_dir: Path
    pg_env: dict[str, str]
    s3_env: dict[str, str]

    # --- database -------------------------------------------------------------------------

    def connect(self, dbname: str | None = None) -> psycopg.Connection[Any]:
        return psycopg.connect(host=self.pg_env["PGHOST"], port=int(self.pg_env["PGPORT"]),
                               user=self.pg_env["PGUSER"], password=self.pg_env["PGPASSWORD"],
                               dbname=dbname or self.database, autocommit=True)

    def db_snapshot(self, dbname: str | None = None) -> dict[str, Any]:
        with self.connect(dbname) as conn:
            return snapshot(conn)

    def wipe_database(self) -> None:
        """Lose everything: the database is dropped and created empty again."""
        with self.connect("postgres") as conn:
            name = sql.Identifier(self.database)
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(name))
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER timesheet").format(name))

    def database_exists(self, name: str) -> bool:
        with self.connect("postgres") as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            return row is not None

    # --- bucket ---------------------------------------------------------------------------

    def s3(self) -> Any:
        return boto3.client("s3", endpoint_url=self.s3_env["S3_ENDPOINT"],
                            aws_access_key_id=self.s3_env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.s3_env["AWS_SECRET_ACCESS_KEY"],
                            region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}))

    def object_keys(self, prefix: str = "") -> list[str]:
        response = self.s3().list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for o in response.get("Contents", []))

    # --- uploads --------------------------------------------------------------------------

    def tree(self) -> dict[str, Any]:
        return snapshot_tree(self.uploads_dir, owners=True)

    # --- resources ------------------------------------------------------------------------

    def storage(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "prefix": "e2e",
                "endpoint": f"http://s3.{self.namespace}.svc:9000", "forcePathStyle": True,
                "credentialsSecretRef": {"name": "backup-s3"}}

    def database_spec(self, name: str | None = None) -> dict[str, Any]:
        return {"host": f"timesheet-db.{self.namespace}.svc", "name": name or self.database,
                "user": APP_ROLE,
                "passwordSecretRef": {"name": "timesheet-db", "key": "password"}}

    def create(self, plural: str, name: str, spec: dict[str, Any],
               labels: dict[str, str] | None = None) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}",
                "kind": {"backups": "Backup", "restores": "Restore",
                         "backupschedules": "BackupSchedule"}[plural],
                "metadata": {"name": name, "labels": labels or {}}, "spec": spec}
        return dict(self.cluster.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, body))

    def get(self, plural: str, name: str) -> dict[str, Any]:
        return dict(self.cluster.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, name))

    def list(self, plural: str, selector: str = "") -> list[dict[str, Any]]:
        return list(self.cluster.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, label_selector=selector)["items"])

    def patch(self, plural: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch (`None` deletes a field), as `kubectl patch --type merge`."""
        return dict(self.cluster.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, name, body,
            _content_type="application/merge-patch+json"))

    def delete(self, plural: str, name: str) -> None:
        self.cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                            plural, name)

    def wait_phase(self, plural: str, name: str, phases: tuple[str, ...],
                   timeout: float = 180) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            obj = self.get(plural, name)
            return obj if (obj.get("status") or {}).get("phase") in phases else None

        return wait_for(check, timeout, interval=1, message=lambda: (
            f"{plural}/{name} never reached {phases}: "
            f"{json.dumps(self.get(plural, name).get('status'), indent=1)[:3000]}\n"
            f"{describe_namespace(self.cluster, self.namespace)}"))

    def events(self, name: str) -> list[k8s.CoreV1Event]:
        return [e for e in self.cluster.core.list_namespaced_event(self.namespace).items
                if e.involved_object.name == name]

    def web_replicas(self) -> int:
        return int(self.cluster.apps.read_namespaced_deployment(
            "timesheet-web", self.namespace).spec.replicas)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The password of the app's own role (roles are cluster-wide, so one per test process).
APP_DB_PASSWORD = f"app-{secrets.token_urlsafe(18)}"


def _create_roles(conn: psycopg.Connection[Any]) -> None:
    """The sample's roles; `timesheet` is the app's owner role, which the operator's Jobs use,
    as in production: LOGIN, not a superuser. CREATEDB because Restores with
    `createDatabase` and the schedules' restore tests create databases (docs/security.md)."""
    for role in SAMPLE_ROLES:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    conn.execute(sql.SQL("ALTER ROLE {} LOGIN NOSUPERUSER CREATEDB NOCREATEROLE PASSWORD {}")
                 .format(sql.Identifier(APP_ROLE), sql.Literal(APP_DB_PASSWORD)))
    conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(SAMPLE_ROLES[1]),
                                                 sql.Identifier(SAMPLE_ROLES[0])))


def make_app(cluster: Cluster, namespace: str, *, web: bool = True) -> App:
    env = cluster.env
    pg_env = {k: env[k] for k in ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD")}
    s3_env = {k: env[k] for k in ("S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    database = f"e2e_{secrets.token_hex(4)}"
    app = App(cluster, namespace, database, f"e2e-{secrets.token_hex(4)}", Path("/nonexistent"),
              pg_env, s3_env)
    with app.connect("postgres") as conn:
        _create_roles(conn)
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER timesheet").format(
            sql.Identifier(database)))
    with app.connect() as conn:
        load_schema(conn)
        load_sample(conn, scale=1)
    app.s3().create_bucket(Bucket=app.bucket)

    port = int(s3_env["S3_ENDPOINT"].rsplit(":", 1)[1].rstrip("/"))
    cluster.expose_host_port(namespace, "timesheet-db", 5432, int(pg_env["PGPORT"]))
    cluster.expose_host_port(namespace, "s3", 9000, port)
    core = cluster.core
    core.create_namespaced_secret(namespace, {"metadata": {"name": "timesheet-db"},
                                              "data": secret_data(
                                                  {"password": APP_DB_PASSWORD})})
    core.create_namespaced_secret(namespace, {"metadata": {"name": "backup-s3"},
                                              "data": secret_data(
                                                  {"AWS_ACCESS_KEY_ID":
                                                   s3_env["AWS_ACCESS_KEY_ID"],
                                                   "AWS_SECRET_ACCESS_KEY":
                                                   s3_env["AWS_SECRET_ACCESS_KEY"]})})
    core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": "timesheet-uploads"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    })
    if web:
        manifest = (REPO_ROOT / "examples" / "app" / "web.yaml").read_text()
        for doc in yaml.safe_load_all(manifest):
            doc["metadata"]["namespace"] = namespace
            if doc["kind"] == "Deployment":
                container = doc["spec"]["template"]["spec"]["containers"][0]
                container["image"] = cluster.image
                # Local pods share the host's network: each test's web app gets its own port.
                port = free_port()
                container["command"][container["command"].index("8000")] = str(port)
                container["ports"][0]["containerPort"] = port
                cluster.apps.create_namespaced_deployment(namespace, doc)
            else:
                core.create_namespaced_service(namespace, doc)
        wait_for(lambda: (cluster.apps.read_namespaced_deployment(
            "timesheet-web", namespace).status.ready_replicas or 0) >= 1, 90,
            message=lambda: f"web not ready:\n{describe_namespace(cluster, namespace)}")
    app.uploads_dir = claim_directory(cluster, namespace, "timesheet-uploads")
    fill_volume(app.uploads_dir, "files", seed=7)
    return app


# A new PostgreSQL server as pods reach it (new_server): its Service and its superuser's
# password Secret.
NEW_SERVER_SERVICE = "timesheet-db-new"
NEW_SERVER_SECRET = "pg-new-admin"


@contextlib.contextmanager
def new_server(cluster: Cluster, namespace: str) -> Iterator[PostgresServer]:
    """A fresh PostgreSQL server, without the app's roles or database (disaster recovery):
    pods in `namespace` reach it as the Service NEW_SERVER_SERVICE, its superuser's password
    is in the Secret NEW_SERVER_SECRET (key `password`)."""
    server = PostgresServer(host=cluster.host_bind_address)
    try:
        server.start()
        # Pods connect from the pod network; the server listens only where they reach it.
        server.allow_password_logins("0.0.0.0/0")
        cluster.expose_host_port(namespace, NEW_SERVER_SERVICE, 5432, server.port)
        cluster.core.create_namespaced_secret(namespace, {
            "metadata": {"name": NEW_SERVER_SECRET},
            "data": secret_data({"password": server.password})})
        yield server
    finally:
        server.cleanup()


def fill_volume(volume: Path, subdir: str, seed: int) -> None:
    """The edge-case uploads tree under `volume/subdir`, as the app would have written it."""
    make_uploads_tree(volume / subdir, seed=seed, large_size=3 * 1024 * 1024,
                      special_files=False, foreign_owner=False, non_utf8=False)
    # Its absolute symlink names this host's path, which is outside the volume as pods
    # mount it: the agent rightly refuses to restore such a link.
    (volume / subdir / "links" / "absolute-inside").unlink()
    # As the app leaves it: its own uid (not the agent's), 0600/0640 files, 0700/0750 dirs.
    make_app_owned(volume, APP_UID, APP_UID)


def claim_directory(cluster: Cluster, namespace: str, claim: str) -> Path:
    """The host directory behind a bound PVC (the local node's provisioner makes hostPath PVs;
    the kubelet mounts them)."""
    def bound() -> str | None:
        pvc = cluster.core.read_namespaced_persistent_volume_claim(claim, namespace)
        return pvc.spec.volume_name if pvc.status.phase == "Bound" else None

    if cluster.provider != "local":
        pytest.fail(f"writing into a PVC from the test needs the local node, not the "
                    f"{cluster.provider} provider", pytrace=False)
    pv_name = wait_for(bound, 60, message=f"PVC {claim} not bound")
    pv = cluster.core.read_persistent_volume(pv_name)
    path = Path(pv.spec.host_path.path)
    wait_for(path.is_dir, 10, message=f"{path} missing")
    return path


def drop_app(app: App) -> None:
    with app.connect("postgres") as conn:
        for row in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                (app.database + "%",)).fetchall():
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(row[0])))
    s3 = app.s3()
    for key in app.object_keys():
        s3.delete_object(Bucket=app.bucket, Key=key)
    s3.delete_bucket(Bucket=app.bucket)


def delete_all(app: App) -> None:
    """Delete our resources while the operator still runs (their finalizers need it)."""
    for plural in ("restores", "backupschedules", "backups"):
        for obj in app.list(plural):
            app.delete(plural, obj["metadata"]["name"])
    wait_for(lambda: not any(app.list(p) for p in ("restores", "backupschedules", "backups")),
             120, message="custom resources not deleted (finalizers stuck?)")


@pytest.fixture(scope="session")
def operator(cluster: Cluster) -> Iterator[Operator]:
    yield install_operator(cluster)


@pytest.fixture
def app(cluster: Cluster, namespace: str, operator: Operator) -> Iterator[App]:
    the_app = make_app(cluster, namespace)
    yield the_app
    delete_all(the_app)
    drop_app(the_app)

