"""Writers that cannot delete, end to end (docs/security.md): the Backup's Job gets a key
that may put, read and list but never delete (a versitygw IAM account and the bucket policy
of tests/support/s3server.write_only_policy); the operator deletes with
storage.deleteCredentialsSecretRef, which no Job gets.

Needs the e2e S3 server started with `--iam-dir` (tests/cluster/cluster-up.sh): accounts are
made through its admin API with the root key the harness holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.e2e.test_operator import backup_spec
from tests.support.cluster import secret_data, wait_for
from tests.support.operator import App
from tests.support.s3server import create_user, write_only_policy

pytestmark = pytest.mark.e2e

PREFIX = "e2e"  # App.storage()'s prefix


def make_keys(app: App) -> tuple[tuple[str, str], tuple[str, str]]:
    """A writer and a deleter account, the bucket policy between them, and their Secrets
    backup-s3-writer and backup-s3-deleter in the app's namespace."""
    binary = Path(app.cluster.env["TSB_TOOLS_BIN"]) / "versitygw"
    root = (app.s3_env["AWS_ACCESS_KEY_ID"], app.s3_env["AWS_SECRET_ACCESS_KEY"])
    writer = create_user(binary, app.s3_env["S3_ENDPOINT"], *root)
    deleter = create_user(binary, app.s3_env["S3_ENDPOINT"], *root)
    policy = write_only_policy(app.bucket, PREFIX, writer[0], deleter[0])
    app.s3().put_bucket_policy(Bucket=app.bucket, Policy=json.dumps(policy))
    for name, key in (("backup-s3-writer", writer), ("backup-s3-deleter", deleter)):
        app.cluster.core.create_namespaced_secret(app.namespace, {
            "metadata": {"name": name},
            "data": secret_data({"AWS_ACCESS_KEY_ID": key[0],
                                 "AWS_SECRET_ACCESS_KEY": key[1]})})
    return writer, deleter


def client_of(app: App, key: tuple[str, str]) -> Any:
    return boto3.client("s3", endpoint_url=app.s3_env["S3_ENDPOINT"],
                        aws_access_key_id=key[0], aws_secret_access_key=key[1],
                        region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"},
                                      retries={"max_attempts": 1}))


def write_only_storage(app: App, deleter_secret: str = "backup-s3-deleter") -> dict[str, Any]:
    return {**app.storage(), "credentialsSecretRef": {"name": "backup-s3-writer"},
            "deleteCredentialsSecretRef": {"name": deleter_secret}}


def secret_refs_of_job_pod(app: App, job_name: str) -> set[str]:
    pods = app.cluster.core.list_namespaced_pod(
        app.namespace, label_selector=f"job-name={job_name}").items
    assert pods, f"no pod of Job {job_name}"
    spec = pods[0].spec
    names = {e.value_from.secret_key_ref.name for e in spec.containers[0].env or []
             if e.value_from and e.value_from.secret_key_ref}
    for volume in spec.volumes or []:
        if volume.secret:
            names.add(volume.secret.secret_name)
        for source in (volume.projected.sources if volume.projected else None) or []:
            if source.secret:
                names.add(source.secret.name)
    return names


def test_a_write_only_key_backs_up_and_the_operator_deletes(app: App) -> None:
    writer, _deleter = make_keys(app)
    app.create("backups", "write-only", backup_spec(app, storage=write_only_storage(app)))
    backup = app.wait_phase("backups", "write-only", ("Succeeded", "Failed"), timeout=300)
    assert backup["status"]["phase"] == "Succeeded", json.dumps(backup["status"], indent=1)
    assert not backup["status"].get("warnings"), backup["status"]["warnings"]
    # The Job had the writer's key only; the delete key stays with the operator.
    refs = secret_refs_of_job_pod(app, backup["status"]["jobName"])
    assert "backup-s3-writer" in refs and "backup-s3-deleter" not in refs, refs

    directory = f"{PREFIX}/{app.namespace}/write-only/"
    keys = app.object_keys(directory)
    assert f"{directory}manifest.json" in keys and len(keys) == 3, keys
    s3 = client_of(app, writer)
    for call in (lambda: s3.delete_object(Bucket=app.bucket, Key=keys[0]),
                 lambda: s3.delete_objects(Bucket=app.bucket,
                                           Delete={"Objects": [{"Key": k} for k in keys]})):
        with pytest.raises(ClientError) as refused:
            call()
        assert refused.value.response["Error"]["Code"] == "AccessDenied"
    assert app.object_keys(directory) == keys

    app.delete("backups", "write-only")
    wait_for(lambda: not app.list("backups"), 90,
             message=lambda: f"the Backup did not go: {app.events('write-only')}")
    assert app.object_keys(directory) == []
    assert any(e.reason == "Deleted" and e.message == f"deleted {len(keys)} object(s) from "
               "the bucket" for e in app.events("write-only"))
    assert not any(e.reason == "DeleteFailed" for e in app.events("write-only"))


def test_a_missing_delete_secret_warns_and_the_deletion_waits_for_it(app: App) -> None:
    """The delete key is the operator's: without it the backup still runs (a warning in
    status and an Event), and deleting the Backup retries until the Secret exists."""
    _writer, deleter = make_keys(app)
    app.create("backups", "no-deleter", backup_spec(
        app, components=["database"], storage=write_only_storage(app, "late-deleter")))
    backup = app.wait_phase("backups", "no-deleter", ("Succeeded", "Failed"))
    assert backup["status"]["phase"] == "Succeeded", json.dumps(backup["status"], indent=1)
    warnings = backup["status"]["warnings"]
    assert len(warnings) == 1, warnings
    assert "late-deleter" in warnings[0]
    assert "(storage.deleteCredentialsSecretRef)" in warnings[0]
    assert any(e.reason == "DeleteSecretMissing" for e in app.events("no-deleter"))
    directory = f"{PREFIX}/{app.namespace}/no-deleter/"
    keys = app.object_keys(directory)
    assert len(keys) == 2, keys

    app.delete("backups", "no-deleter")
    wait_for(lambda: any(e.reason == "DeleteFailed" for e in app.events("no-deleter")), 60,
             message="no DeleteFailed Event while the delete Secret is missing")
    assert app.object_keys(directory) == keys and app.list("backups")
    app.cluster.core.create_namespaced_secret(app.namespace, {
        "metadata": {"name": "late-deleter"},
        "data": secret_data({"AWS_ACCESS_KEY_ID": deleter[0],
                             "AWS_SECRET_ACCESS_KEY": deleter[1]})})
    # The finalizer retries every 30 s.
    wait_for(lambda: not app.list("backups"), 120, message="the Backup did not go")
    assert app.object_keys(directory) == []
