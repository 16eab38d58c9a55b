"""Bad input is refused by the real API server at `kubectl apply` time (OpenAPI schema and
CEL rules of the generated CRDs), with a message a person understands."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.support.cluster import REPO_ROOT, Cluster, create_namespace, delete_namespace
from tests.support.operator import run_tool

pytestmark = pytest.mark.e2e

GOOD_DB = {"host": "db", "name": "timesheet_db", "user": "timesheet",
           "passwordSecretRef": {"name": "db", "key": "password"}}

# (kind, spec, a piece of the API server's message)
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("Backup", {"components": ["logs"]}, 'Unsupported value: "logs"'),
    ("Backup", {"components": []}, "should have at least 1 items"),
    ("Backup", {"components": ["database", "database"]}, "Duplicate value"),
    ("Backup", {"database": {**GOOD_DB, "port": 70000}}, "should be less than or equal to 65535"),
    ("Backup", {"database": {**GOOD_DB, "format": "tar"}}, 'Unsupported value: "tar"'),
    ("Backup", {"database": {**GOOD_DB, "jobs": 4}},
     "a parallel dump (jobs > 1) needs format: directory"),
    ("Backup", {"database": {**GOOD_DB, "tables": ["a"], "excludeTables": ["b"]}},
     "use tables or excludeTables, not both"),
    ("Backup", {"database": {**GOOD_DB, "tables": ["entries\n; DROP TABLE x"]}},
     "spec.database.tables[0]"),
    ("Backup", {"database": {**GOOD_DB, "host": "-oProxyCommand=x"}}, "spec.database.host"),
    ("Backup", {"uploads": {"claimName": "../etc"}}, "spec.uploads.claimName"),
    ("Backup", {"uploads": {"claimName": "u", "subPath": "../../etc"}},
     "subPath must not contain '..'"),
    ("Backup", {"uploads": {"claimName": "u", "subPath": "/etc"}}, "spec.uploads.subPath"),
    ("Backup", {"storage": {"bucket": "Bad_Bucket"}}, "spec.storage.bucket"),
    ("Backup", {"storage": {"bucket": "b", "endpoint": "ftp://x"}}, "spec.storage.endpoint"),
    ("Backup", {"storage": {"bucket": "b", "serverSideEncryption": {"type": "AES256",
                                                                     "kmsKeyId": "k"}}},
     "kmsKeyId is only used with type aws:kms"),
    ("Backup", {"compression": {"algorithm": "gzip", "level": 12}}, "gzip levels are 1 to 9"),
    ("Backup", {"compression": {"algorithm": "none", "level": 3}},
     "level has no meaning with algorithm none"),
    ("Backup", {"encryption": {"ageRecipients": ["ssh-rsa AAAA"]}},
     "spec.encryption.ageRecipients[0]"),
    ("Backup", {"deletionPolicy": "Orphan"}, 'Unsupported value: "Orphan"'),
    ("Backup", {"job": {"backoffLimit": -1}}, "should be greater than or equal to 0"),
    ("Backup", {"job": {"activeDeadlineSeconds": 5}}, "should be greater than or equal to 60"),
    ("Backup", {"databse": {}}, 'unknown field "spec.databse"'),
    ("BackupSchedule", {}, "spec.schedule: Required value"),
    ("BackupSchedule", {"schedule": "0 25 * * *"}, "spec.schedule"),
    ("BackupSchedule", {"schedule": "every day"}, "spec.schedule"),
    ("BackupSchedule", {"schedule": "0 2 * * * *"}, "spec.schedule"),
    ("BackupSchedule", {"schedule": "0 2 * * *; rm -rf /"}, "spec.schedule"),
    ("BackupSchedule", {"schedule": "@daily", "timeZone": "../../etc/passwd"}, "spec.timeZone"),
    ("BackupSchedule", {"schedule": "@daily", "concurrencyPolicy": "Sometimes"},
     'Unsupported value: "Sometimes"'),
    ("BackupSchedule", {"schedule": "@daily", "retention": {"keepLast": 0}},
     "should be greater than or equal to 1"),
    ("BackupSchedule", {"schedule": "@daily", "retention": {"maxAge": "30 days"}},
     "spec.retention.maxAge"),
    ("BackupSchedule", {"schedule": "@daily", "retention": {"keepFailed": -3}},
     "should be greater than or equal to 0"),
    ("BackupSchedule", {"schedule": "@daily", "verification": {"schedule": "61 * * * *"}},
     "spec.verification.schedule"),
    ("BackupSchedule", {"schedule": "@daily", "backupOwnerReference": "namespace"},
     'Unsupported value: "namespace"'),
    ("Restore", {}, "set exactly one of backupName or source"),
    ("Restore", {"backupName": "b", "source": {"storage": {"bucket": "bkt"},
                                               "manifestKey": "a/b/manifest.json"}},
     "set exactly one of backupName or source"),
    ("Restore", {"source": {"storage": {"bucket": "bkt"}, "manifestKey": "../x/manifest.json"}},
     "manifestKey must not contain '..'"),
    ("Restore", {"source": {"storage": {"bucket": "bkt"}, "manifestKey": "a/b/dump.sql"}},
     "spec.source.manifestKey"),
    ("Restore", {"backupName": "b", "uploads": {"mode": "overwrite"}},
     'Unsupported value: "overwrite"'),
    ("Restore", {"backupName": "b", "quiesce": {"deployments": ["Web App"]}},
     "spec.quiesce.deployments[0]"),
    ("Restore", {"backupName": "b", "verify": {"httpGet": {"url": "file:///etc/passwd"}}},
     "spec.verify.httpGet.url"),
    ("Restore", {"backupName": "b", "hooks": {"postRestore": [{"name": "m"}]}},
     "spec.hooks.postRestore[0].image: Required value"),
    ("Restore", {"backupName": "b" * 300}, "spec.backupName"),
]


def manifest(kind: str, spec: dict[str, Any], name: str = "invalid") -> str:
    return yaml.safe_dump({"apiVersion": "backup.northstar.io/v1alpha1", "kind": kind,
                           "metadata": {"name": name}, "spec": spec})


@pytest.fixture(scope="module")
def space(cluster: Cluster) -> Iterator[str]:
    """One namespace for the whole corpus: nothing here is created for real except one
    Backup, so a namespace per case would only add its deletion time."""
    name = create_namespace(cluster, "validation")
    yield name
    delete_namespace(cluster, name, force_pods=True)


@pytest.fixture(scope="module")
def crds(cluster: Cluster) -> Cluster:
    run_tool(cluster, "kubectl", "apply", "--server-side", "--force-conflicts", "-f", "crds/")
    run_tool(cluster, "kubectl", "wait", "--for=condition=Established", "--timeout=60s",
             "crd/backups.backup.northstar.io", "crd/backupschedules.backup.northstar.io",
             "crd/restores.backup.northstar.io")
    return cluster


@pytest.mark.parametrize(("kind", "spec", "message"), INVALID,
                         ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(INVALID)])
def test_invalid_manifest_is_refused(crds: Cluster, space: str, kind: str,
                                     spec: dict[str, Any], message: str) -> None:
    result = run_tool(crds, "kubectl", "apply", "--dry-run=server", "-n", space, "-f", "-",
                      stdin=manifest(kind, spec), check=False)
    assert result.returncode != 0, f"accepted: {spec}"
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize("example", ["backup.yaml", "schedule.yaml", "restore.yaml",
                                     "restore-from-bucket.yaml", "quickstart/postgres.yaml",
                                     "quickstart/s3.yaml"])
def test_examples_are_accepted(crds: Cluster, space: str, example: str) -> None:
    text = (REPO_ROOT / "examples" / example).read_text()
    docs = [d for d in yaml.safe_load_all(text) if d]
    for doc in docs:
        doc["metadata"].pop("namespace", None)
    result = run_tool(crds, "kubectl", "apply", "--dry-run=server", "-n", space, "-f", "-",
                      stdin=yaml.safe_dump_all(docs), check=False)
    assert result.returncode == 0, result.stderr


def test_backup_spec_is_immutable(crds: Cluster, space: str) -> None:
    run_tool(crds, "kubectl", "apply", "-n", space, "-f", "-",
             stdin=manifest("Backup", {"components": ["database"]}, "frozen"))
    result = run_tool(crds, "kubectl", "apply", "-n", space, "-f", "-",
                      stdin=manifest("Backup", {"components": ["uploads"]}, "frozen"),
                      check=False)
    assert result.returncode != 0
    assert "spec is immutable" in result.stderr
