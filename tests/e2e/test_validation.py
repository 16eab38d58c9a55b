"""Bad input is refused by the real API server at `kubectl apply` time (OpenAPI schema and
CEL rules of the generated CRDs), with a message a person understands."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.support.cluster import (
    REPO_ROOT,
    Cluster,
    create_namespace,
    delete_namespace,
    secret_data,
    wait_for,
)
from tests.support.operator import Operator, run_tool

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
    ("Backup", {"database": {**GOOD_DB, "globalsPasswords": True}},
     "globalsPasswords adds the password hashes to the roles dump: set globals too"),
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
    ("Restore", {}, "set exactly one of backupName, source or latest"),
    ("Restore", {"source": {"storage": {"bucket": "bkt"}}},
     "set exactly one of manifestKey (that backup) or latest"),
    ("Restore", {"source": {"storage": {"bucket": "bkt"}, "manifestKey": "a/b/manifest.json",
                            "latest": {}}},
     "set exactly one of manifestKey (that backup) or latest"),
    ("Restore", {"source": {"storage": {"bucket": "bkt"}, "latest": {"before": "yesterday"}}},
     "spec.source.latest.before"),
    ("Restore", {"backupName": "b", "source": {"storage": {"bucket": "bkt"},
                                               "manifestKey": "a/b/manifest.json"}},
     "set exactly one of backupName, source or latest"),
    ("Restore", {"source": {"storage": {"bucket": "bkt"}, "manifestKey": "../x/manifest.json"}},
     "manifestKey must not contain '..'"),
    ("Backup", {"storage": {"bucket": "bkt", "prefix": "../other"}},
     "prefix must not contain '..'"),
    ("Backup", {"storage": {"bucket": "bkt", "prefix": "team/../../other"}},
     "prefix must not contain '..'"),
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


# --- more of the hostile corpus: oversized fields, injection attempts, absurd values -----

AGE_RECIPIENT = "age1" + "q" * 58

# (kind, spec, a piece of the API server's message)
MORE_INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("Backup", {"storage": {"bucket": "bkt", "prefix": "/abs/path"}}, "spec.storage.prefix"),
    ("Backup", {"storage": {"bucket": "bkt", "prefix": "a b"}}, "spec.storage.prefix"),
    ("Backup", {"storage": {"bucket": "bkt", "prefix": "p" * 513}},
     "spec.storage.prefix: Too long"),
    ("Backup", {"storage": {"bucket": "bkt", "endpoint": "http://x y"}},
     "spec.storage.endpoint"),
    ("Backup", {"database": {**GOOD_DB, "name": "timesheet\n; DROP DATABASE x"}},
     "spec.database.name"),
    ("Backup", {"database": {**GOOD_DB, "user": "postgres\u0000"}}, "spec.database.user"),
    ("Backup", {"database": {**GOOD_DB, "excludeTables": ["audit\r\nCOPY x TO PROGRAM 'sh'"]}},
     "spec.database.excludeTables[0]"),
    ("Backup", {"database": {**GOOD_DB, "tables": ["t" * 129]}},
     "spec.database.tables[0]: Too long"),
    ("Backup", {"database": {**GOOD_DB, "tables": [f"t{i}" for i in range(65)]}},
     "must have at most 64 items"),
    ("Backup", {"database": {**GOOD_DB, "sslMode": "disable host=evil"}},
     'Unsupported value: "disable host=evil"'),
    ("Backup", {"database": {**GOOD_DB, "passwordSecretRef": {"name": "db",
                                                              "key": "../../token"}}},
     "spec.database.passwordSecretRef.key"),
    ("Backup", {"encryption": {"ageRecipients": [AGE_RECIPIENT] * 17}},
     "must have at most 16 items"),
    ("Backup", {"encryption": {"ageRecipients": []}}, "should have at least 1 items"),
    ("Backup", {"uploads": {"claimName": "u", "exclude": ["\n"]}}, "spec.uploads.exclude[0]"),
    ("BackupSchedule", {"schedule": "@daily", "timeZone": "Europe/Berlin; rm -rf /"},
     "spec.timeZone"),
    ("BackupSchedule", {"schedule": "@daily", "timeZone": "A" * 65}, "spec.timeZone: Too long"),
    ("BackupSchedule", {"schedule": "0 2 * * " + "1," * 70 + "1"}, "spec.schedule: Too long"),
    ("BackupSchedule", {"schedule": "@daily", "retention": {"keepLast": 1000000}},
     "should be less than or equal to 10000"),
    ("BackupSchedule", {"schedule": "@daily", "retention": {"keepDaily": -1}},
     "should be greater than or equal to 1"),
    ("BackupSchedule", {"schedule": "@daily", "retention": {"keepMonthly": 100000}},
     "should be less than or equal to 1200"),
    ("BackupSchedule", {"schedule": "@daily", "retention": {"maxAge": "0d"}},
     "spec.retention.maxAge"),
    ("BackupSchedule", {"schedule": "@daily", "retention": {"maxAge": "-30d"}},
     "spec.retention.maxAge"),
    ("BackupSchedule", {"schedule": "@daily", "retention": {"maxAge": "100000d"}},
     "spec.retention.maxAge"),
    ("BackupSchedule", {"schedule": "@daily", "startingDeadlineSeconds": 0},
     "should be greater than or equal to 1"),
    ("BackupSchedule", {"schedule": "@daily",
                        "verification": {"schedule": "@daily", "checks": ["SELECT 1"] * 33}},
     "must have at most 32 items"),
    ("BackupSchedule", {"schedule": "@daily",
                        "verification": {"schedule": "@daily", "checks": ["S" * 4097]}},
     "spec.verification.checks[0]: Too long"),
    ("BackupSchedule", {"schedule": "@daily", "template": {"spec": {"components": ["logs"]}}},
     'Unsupported value: "logs"'),
    ("Restore", {"backupName": "b", "components": ["everything"]},
     'Unsupported value: "everything"'),
    ("Restore", {"backupName": "b", "database": {"name": "x\n; DROP DATABASE timesheet"}},
     "spec.database.name"),
    ("Restore", {"backupName": "b", "database": {"jobs": 0}},
     "should be greater than or equal to 1"),
    ("Restore", {"backupName": "b", "uploads": {"subPath": "a/../../etc"}},
     "subPath must not contain '..'"),
    ("Restore", {"backupName": "B/../../x"}, "spec.backupName"),
    ("Restore", {"source": {"storage": {"bucket": "bkt"},
                            "manifestKey": "a/../../b/manifest.json"}},
     "manifestKey must not contain '..'"),
    ("Restore", {"source": {"storage": {"bucket": "bkt"}, "manifestKey": "a\n/manifest.json"}},
     "spec.source.manifestKey"),
    ("Restore", {"backupName": "b", "decryption": {"secretRef": {"name": "Age Key",
                                                                 "key": "k"}}},
     "spec.decryption.secretRef.name"),
    ("Restore", {"backupName": "b", "hooks": {"postRestore": [
        {"name": f"h{i}", "image": "i"} for i in range(9)]}}, "must have at most 8 items"),
    ("Restore", {"backupName": "b", "hooks": {"postRestore": [
        {"name": "m; rm -rf /", "image": "i"}]}}, "spec.hooks.postRestore[0].name"),
    ("Restore", {"backupName": "b", "verify": {"sqlChecks": ["SELECT 1"] * 33}},
     "must have at most 32 items"),
]


@pytest.mark.parametrize(("kind", "spec", "message"), INVALID + MORE_INVALID,
                         ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(INVALID)]
                         + [f"{k}-more-{i}" for i, (k, _, _) in enumerate(MORE_INVALID)])
def test_invalid_manifest_is_refused(crds: Cluster, space: str, kind: str,
                                     spec: dict[str, Any], message: str) -> None:
    result = run_tool(crds, "kubectl", "apply", "--dry-run=server", "-n", space, "-f", "-",
                      stdin=manifest(kind, spec), check=False)
    assert result.returncode != 0, f"accepted: {spec}"
    assert message in result.stderr, result.stderr




@pytest.mark.parametrize(("name", "message"), [
    ("x;rm -rf", "metadata.name: Invalid value"),
    ("../escape", "may not contain '/'"),
    ("UPPER", "metadata.name: Invalid value"),
    ("a" * 254, "metadata.name: Invalid value"),
    ("-dash", "metadata.name: Invalid value"),
])
def test_hostile_object_names_are_refused(crds: Cluster, space: str, name: str,
                                          message: str) -> None:
    """Names reach Job names, labels and S3 keys: the API server refuses these already."""
    result = run_tool(crds, "kubectl", "apply", "--dry-run=server", "-n", space, "-f", "-",
                      stdin=manifest("Backup", {}, name), check=False)
    assert result.returncode != 0, f"accepted name {name!r}"
    assert message in result.stderr, result.stderr


# --- what only the operator can know: accepted by the API server, Failed by the operator --


def _operator_case(cluster: Cluster, namespace: str, plural: str, name: str,
                   spec: dict[str, Any]) -> None:
    kind = {"backups": "Backup", "restores": "Restore", "backupschedules": "BackupSchedule"}
    cluster.custom.create_namespaced_custom_object(
        "backup.northstar.io", "v1alpha1", namespace, plural,
        {"apiVersion": "backup.northstar.io/v1alpha1", "kind": kind[plural],
         "metadata": {"name": name}, "spec": spec})


def _conditions(cluster: Cluster, namespace: str, plural: str,
                name: str) -> dict[str, dict[str, Any]]:
    obj = cluster.custom.get_namespaced_custom_object(
        "backup.northstar.io", "v1alpha1", namespace, plural, name)
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def _warning(cluster: Cluster, namespace: str, name: str, reason: str) -> bool:
    return any(e.type == "Warning" and e.reason == reason
               for e in cluster.core.list_namespaced_event(namespace).items
               if e.involved_object.name == name)


def test_what_only_the_operator_can_know_fails_clearly(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    """A Secret without the named key, a Restore of a Backup that does not exist: each ends
    with a clear condition and a Warning Event, and no Job is created. (A `..` prefix is
    refused by the schema; the operator's own refusal of it is the unit-tested layout check.
    A time zone that does not exist is refused by the webhook; its status fallback, with the
    operator stopped, is in test_webhook.py.)"""
    cluster.core.create_namespaced_secret(namespace, {
        "metadata": {"name": "db"}, "data": secret_data({"other-key": "x" * 12})})
    storage = {"bucket": "bkt", "endpoint": "http://s3.invalid:9000",
               "forcePathStyle": True}
    _operator_case(cluster, namespace, "backups", "no-key", {
        "components": ["database"], "database": GOOD_DB, "storage": storage})
    _operator_case(cluster, namespace, "restores", "of-nothing", {"backupName": "never-was"})

    expected = [
        ("backups", "no-key", "Failed", "True", "SecretMissing", "password"),
        ("restores", "of-nothing", "Failed", "True", "BackupNotFound", "never-was"),
    ]
    try:
        for plural, name, type_, status, reason, text in expected:
            def settled(plural: str = plural, name: str = name,
                        type_: str = type_) -> dict[str, Any] | None:
                return _conditions(cluster, namespace, plural, name).get(type_)

            cond = wait_for(settled, 60, interval=1, message=f"{plural}/{name}: no {type_}")
            assert (cond["status"], cond["reason"]) == (status, reason), cond
            assert text in cond["message"], cond
            wait_for(lambda name=name, reason=reason: _warning(cluster, namespace, name, reason),
                     30, message=f"{name}: no Warning Event {reason}")
        assert cluster.batch.list_namespaced_job(namespace).items == []
    finally:
        for plural in ("restores", "backupschedules", "backups"):
            for obj in cluster.custom.list_namespaced_custom_object(
                    "backup.northstar.io", "v1alpha1", namespace, plural)["items"]:
                cluster.custom.delete_namespaced_custom_object(
                    "backup.northstar.io", "v1alpha1", namespace, plural,
                    obj["metadata"]["name"])
