"""`make operator-up`: the operator and the example app's surroundings on the local cluster.

After `make cluster-up`, this leaves the operator running as a pod installed by its Helm chart
(so with exactly the RBAC the chart ships), and the `timesheet` namespace ready for
`kubectl apply -f examples/...`: the Secrets, the uploads PVC, the stand-in web app, and the
Services `timesheet-db` and `s3` through which pods reach the host's PostgreSQL and S3 server.
It creates the role, database and bucket the examples name, with the examples' credentials,
and records the uploads directory as UPLOADS_DIR in .cluster/env. Idempotent."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import psycopg
import yaml
from botocore.config import Config
from botocore.exceptions import ClientError
from kubernetes.client import ApiException
from psycopg import sql

from tests.support.cluster import CLUSTER_DIR, REPO_ROOT, Cluster, start_cluster, wait_for
from tests.support.operator import APP_UID, claim_directory, install_operator, run_tool

APP_NAMESPACE = "timesheet"
EXAMPLES = REPO_ROOT / "examples"


def say(text: str) -> None:
    print(f"==> {text}", flush=True)


def example_secrets() -> dict[str, dict[str, str]]:
    docs = yaml.safe_load_all((EXAMPLES / "app" / "secrets.yaml").read_text())
    return {d["metadata"]["name"]: d["stringData"] for d in docs}


def pg_connect(cluster: Cluster, dbname: str = "postgres") -> psycopg.Connection[Any]:
    env = cluster.env
    return psycopg.connect(host=env["PGHOST"], port=int(env["PGPORT"]), user=env["PGUSER"],
                           password=env["PGPASSWORD"], dbname=dbname, autocommit=True)


def ensure_database(cluster: Cluster, password: str) -> None:
    """Role `timesheet` (owner of `timesheet_db`) with the example Secret's password, and the
    roles the sample schema grants to."""
    with pg_connect(cluster) as conn:
        for role, login in (("timesheet", True), ("timesheet_reporting", False),
                            ("timesheet_readonly", False)):
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                conn.execute(sql.SQL("CREATE ROLE {} " + ("LOGIN" if login else "NOLOGIN"))
                             .format(sql.Identifier(role)))
        conn.execute(sql.SQL("ALTER ROLE timesheet PASSWORD {}").format(sql.Literal(password)))
        conn.execute("GRANT timesheet_reporting TO timesheet")
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'timesheet_db'").fetchone():
            conn.execute("CREATE DATABASE timesheet_db OWNER timesheet")


def ensure_bucket(cluster: Cluster, access_key: str, secret_key: str) -> None:
    s3 = boto3.client("s3", endpoint_url=cluster.env["S3_ENDPOINT"], region_name="us-east-1",
                      aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                      config=Config(s3={"addressing_style": "path"}))
    try:
        s3.create_bucket(Bucket="timesheet-backups")
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise


def expose(cluster: Cluster, name: str, port: int, host_port: int) -> None:
    try:
        cluster.expose_host_port(APP_NAMESPACE, name, port, host_port)
    except ApiException as exc:
        if exc.status != 409:
            raise


def record_env(key: str, value: str) -> None:
    env_file = CLUSTER_DIR / "env"
    lines = [line for line in env_file.read_text().splitlines()
             if not line.startswith(f"export {key}=")]
    lines.append(f"export {key}={value}")
    env_file.write_text("\n".join(lines) + "\n")


def main() -> int:
    started = time.monotonic()
    cluster = start_cluster()
    say("installing the operator with its Helm chart (namespace tsb-system)")
    operator = install_operator(cluster)
    say(f"operator pod {operator.pod_name()} is running")

    say(f"preparing namespace {APP_NAMESPACE} from examples/app/")
    for name in ("namespace.yaml", "secrets.yaml", "uploads-pvc.yaml", "web.yaml"):
        manifest = (EXAMPLES / "app" / name).read_text().replace(
            "image: timesheet-backup-operator:dev", f"image: {cluster.image}")
        run_tool(cluster, "kubectl", "apply", "-f", "-", stdin=manifest)
    secrets = example_secrets()
    s3_port = int(cluster.env["S3_ENDPOINT"].rsplit(":", 1)[1].rstrip("/"))
    expose(cluster, "timesheet-db", 5432, int(cluster.env["PGPORT"]))
    expose(cluster, "s3", 9000, s3_port)
    ensure_database(cluster, secrets["timesheet-db"]["password"])
    s3_secret = secrets["backup-s3"]
    ensure_bucket(cluster, s3_secret["AWS_ACCESS_KEY_ID"], s3_secret["AWS_SECRET_ACCESS_KEY"])

    uploads: Path = claim_directory(cluster, APP_NAMESPACE, "timesheet-uploads")
    # The volume is the web app's (examples/app/web.yaml runs as uid 1000); backup and restore
    # Jobs take that identity.
    subprocess.run(["chown", f"{APP_UID}:{APP_UID}", str(uploads)], check=True)
    record_env("UPLOADS_DIR", str(uploads))
    wait_for(lambda: (cluster.apps.read_namespaced_deployment(
        "timesheet-web", APP_NAMESPACE).status.ready_replicas or 0) >= 1, 120,
        message="timesheet-web not ready")
    say(f"ready in {time.monotonic() - started:.0f}s: `source .cluster/env`, then "
        "`kubectl apply -f examples/backup.yaml`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
