"""Job settings for locked-down namespaces (docs/security.md, "Jobs in locked-down
namespaces"): pull secrets, priority class, extra env, pod labels and annotations, a
ServiceAccount for workload identity; per object over the operator's defaults, applied alike
to backup, restore, hook and verify Jobs, and refused at `kubectl apply` time where they
would collide with what the operator sets (the CRDs' CEL rules, evaluated here with a CEL
interpreter)"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import pytest

from timesheet_backup import constants as c
from timesheet_backup import settings
from timesheet_backup.api import crds, models, validation
from timesheet_backup.api.defaults import Defaults
from timesheet_backup.api.fields import SpecError, dump, parse, schema_for
from timesheet_backup.api.resolve import merge_job, resolve_backup
from timesheet_backup.decisions.schedules import verification_body
from timesheet_backup.jobs import manifests, pod

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

BACKUP = {"apiVersion": c.API_VERSION, "kind": "Backup",
          "metadata": {"name": "nightly", "namespace": "timesheet", "uid": "u-1"}}
RESTORE = {"apiVersion": c.API_VERSION, "kind": "Restore",
           "metadata": {"name": "back", "namespace": "timesheet", "uid": "u-2"}}
FULL_BACKUP = {
    "components": ["database", "uploads"],
    "database": {"host": "db", "name": "timesheet_db", "user": "timesheet",
                 "passwordSecretRef": {"name": "db", "key": "password"}},
    "uploads": {"claimName": "timesheet-uploads"},
    "storage": {"bucket": "backups", "credentialsSecretRef": {"name": "s3"}},
}
RESOLVED_RESTORE = {
    "manifestKey": "p/timesheet/nightly/manifest.json", "components": ["database", "uploads"],
    "database": {"host": "db", "name": "timesheet_db", "user": "timesheet",
                 "passwordSecretRef": {"name": "db", "key": "password"}},
    "uploads": {"claimName": "timesheet-uploads"},
    "storage": {"bucket": "backups", "credentialsSecretRef": {"name": "s3"}},
    "encrypted": True,
}


def job(**data: Any) -> models.JobSpec:
    return parse(models.JobSpec, data, "job")


def config_with(**defaults: Any) -> settings.OperatorConfig:
    return settings.OperatorConfig(defaults=Defaults(job=job(**defaults)) if defaults
                                   else Defaults())


def pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    return dict(manifest["spec"]["template"]["spec"])


def env_of(manifest: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in pod_spec(manifest)["containers"][0]["env"]}


# --- the pod ----------------------------------------------------------------------------------


def make(settings_: models.JobSpec | None = None,
         config: settings.OperatorConfig | None = None, **overrides: Any) -> dict[str, Any]:
    spec = pod.AgentJob(name="nightly-backup", namespace="timesheet", owner=BACKUP,
                        labels={c.LABEL_BACKUP: "nightly"}, args=["agent", "backup"],
                        job=settings_ or models.JobSpec(), **overrides)
    return pod.agent_job(spec, config or settings.OperatorConfig())


def test_without_settings_the_pod_has_none_of_them() -> None:
    manifest = make()
    spec = pod_spec(manifest)
    assert spec["automountServiceAccountToken"] is False
    for key in ("serviceAccountName", "imagePullSecrets", "priorityClassName"):
        assert key not in spec
    assert "annotations" not in manifest["spec"]["template"]["metadata"]
    assert list(env_of(manifest)) == ["TMPDIR"]


def test_every_setting_reaches_the_pod() -> None:
    manifest = make(job(
        serviceAccountName="backup-writer", imagePullSecrets=["registry", "mirror"],
        priorityClassName="backup-critical",
        env=[{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}, {"name": "NO_PROXY"}],
        podLabels={"team": "timesheet"}, podAnnotations={"sidecar.istio.io/inject": "false"}))
    spec = pod_spec(manifest)
    template_meta = manifest["spec"]["template"]["metadata"]
    assert spec["serviceAccountName"] == "backup-writer"
    assert spec["imagePullSecrets"] == [{"name": "registry"}, {"name": "mirror"}]
    assert spec["priorityClassName"] == "backup-critical"
    env = env_of(manifest)
    assert env["HTTPS_PROXY"] == {"name": "HTTPS_PROXY", "value": "http://proxy:3128"}
    assert env["NO_PROXY"] == {"name": "NO_PROXY", "value": ""}
    assert env["TMPDIR"]["value"] == pod.SCRATCH_MOUNT
    assert template_meta["labels"]["team"] == "timesheet"
    assert template_meta["labels"][c.LABEL_BACKUP] == "nightly"
    assert template_meta["annotations"] == {"sidecar.istio.io/inject": "false"}
    # Pod labels are the pods' only: the Job keeps the operator's.
    assert "team" not in manifest["metadata"]["labels"]


def test_the_token_is_mounted_only_with_a_service_account() -> None:
    assert pod_spec(make())["automountServiceAccountToken"] is False
    assert pod_spec(make(job(priorityClassName="p")))["automountServiceAccountToken"] is False
    with_account = pod_spec(make(job(serviceAccountName="irsa")))
    assert with_account["automountServiceAccountToken"] is True
    # ...and the pod stays locked down all the same.
    container = with_account["containers"][0]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    assert with_account["securityContext"]["runAsNonRoot"] is True


def test_pod_labels_never_replace_the_operators() -> None:
    """The schema refuses them; a model built in code (or defaults that slipped through) still
    cannot relabel the pod away from its owner."""
    settings_ = models.JobSpec(pod_labels={c.LABEL_MANAGED_BY: "me", c.LABEL_BACKUP: "other",
                                           "team": "t"})
    labels = make(settings_)["spec"]["template"]["metadata"]["labels"]
    assert labels[c.LABEL_MANAGED_BY] == c.MANAGED_BY
    assert labels[c.LABEL_BACKUP] == "nightly"
    assert labels["team"] == "t"


def test_a_hooks_own_env_wins_over_the_restores_extra_env() -> None:
    manifest = make(job(env=[{"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
                             {"name": "LANG", "value": "C"}]),
                    image="app:1", env=[{"name": "LANG", "value": "de_DE.UTF-8"}])
    env = pod_spec(manifest)["containers"][0]["env"]
    assert [e["name"] for e in env] == ["TMPDIR", "HTTPS_PROXY", "LANG"]
    assert env[2]["value"] == "de_DE.UTF-8"


# --- merging with the operator's defaults ------------------------------------------------------


DEFAULTS = {
    "activeDeadlineSeconds": 7200, "priorityClassName": "backup", "serviceAccountName": "ops",
    "imagePullSecrets": ["registry"], "nodeSelector": {"pool": "batch", "disk": "ssd"},
    "env": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
            {"name": "NO_PROXY", "value": ".svc"}],
    "podLabels": {"team": "platform", "cost": "backup"},
    "podAnnotations": {"a": "1"},
    "resources": {"requests": {"memory": "256Mi"}, "limits": {"memory": "512Mi"}},
    "tolerations": [{"key": "batch", "operator": "Exists"}],
}


@pytest.mark.parametrize(("own", "expected"), [
    # nothing of its own: the defaults
    ({}, {k: DEFAULTS[k] for k in ("priorityClassName", "serviceAccountName", "env")}),
    # scalars: the object's value
    ({"priorityClassName": "high", "serviceAccountName": "writer", "backoffLimit": 0},
     {"priorityClassName": "high", "serviceAccountName": "writer", "backoffLimit": 0,
      "activeDeadlineSeconds": 7200}),
    # maps: key by key, the object's value winning
    ({"podLabels": {"team": "timesheet"}, "nodeSelector": {"disk": "nvme"},
      "podAnnotations": {"b": "2"}},
     {"podLabels": {"team": "timesheet", "cost": "backup"},
      "nodeSelector": {"pool": "batch", "disk": "nvme"},
      "podAnnotations": {"a": "1", "b": "2"}}),
    # named lists: by name, the defaults' others kept in their order, then the object's
    ({"env": [{"name": "NO_PROXY", "value": ".svc,.local"}, {"name": "LANG", "value": "C"}],
      "imagePullSecrets": ["mirror", "registry"]},
     {"env": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
              {"name": "NO_PROXY", "value": ".svc,.local"}, {"name": "LANG", "value": "C"}],
      "imagePullSecrets": ["mirror", "registry"]}),
    # whole Kubernetes objects and lists of them: replaced
    ({"resources": {"requests": {"cpu": "1"}}, "tolerations": []},
     {"resources": {"requests": {"cpu": "1"}}, "tolerations": []}),
])
def test_merge_rules(own: dict[str, Any], expected: dict[str, Any]) -> None:
    merged = dump(merge_job(job(**DEFAULTS), job(**own)))
    for key, value in expected.items():
        assert merged[key] == value, key


def test_merge_without_defaults_or_own() -> None:
    assert merge_job(None, None) == models.JobSpec()
    assert merge_job(None, job(priorityClassName="p")) == job(priorityClassName="p")
    assert merge_job(job(priorityClassName="p"), None) == job(priorityClassName="p")


@pytest.mark.parametrize("own", [
    {}, {"env": [{"name": "NO_PROXY", "value": "x"}]}, {"podLabels": {"team": "x"}},
    {"imagePullSecrets": ["other"]}, {"resources": {"limits": {"memory": "1Gi"}}},
])
def test_merge_is_idempotent(own: dict[str, Any]) -> None:
    """A Backup's settings are merged for status.resolved and again by pod.agent_job."""
    defaults = job(**DEFAULTS)
    once = merge_job(defaults, job(**own))
    assert merge_job(defaults, once) == once


def test_backup_status_records_the_merged_job() -> None:
    spec = resolve_backup({**FULL_BACKUP, "job": {"env": [{"name": "LANG", "value": "C"}]}},
                          Defaults(job=job(**DEFAULTS)))
    assert spec.job is not None
    assert [e.name for e in spec.job.env or []] == ["HTTPS_PROXY", "NO_PROXY", "LANG"]
    assert spec.job.service_account_name == "ops"
    assert resolve_backup(FULL_BACKUP, Defaults()).job is None


# --- all four kinds of Job alike ---------------------------------------------------------------


def every_job(own: dict[str, Any], config: settings.OperatorConfig
              ) -> Iterator[tuple[str, dict[str, Any]]]:
    backup = resolve_backup({**FULL_BACKUP, "job": own}, config.defaults)
    yield "backup", manifests.backup_job({**BACKUP, "spec": FULL_BACKUP}, backup, config)
    restore = parse(models.RestoreSpec, {
        "backupName": "nightly", "job": own,
        "decryption": {"secretRef": {"name": "age", "key": "identity"}},
        "hooks": {"postRestore": [{"name": "migrate", "image": "app:1"}]},
        "verify": {"httpGet": {"url": "http://web/health"}}})
    yield "restore", manifests.restore_job(RESTORE, restore, RESOLVED_RESTORE, config)
    assert restore.hooks and restore.hooks.post_restore and restore.verify
    yield "hook", manifests.hook_job(RESTORE, 0, restore.hooks.post_restore[0], restore, config)
    assert restore.verify.http_get
    yield "verify", manifests.verify_job(RESTORE, restore, restore.verify.http_get, config)


def test_every_kind_of_job_gets_the_settings() -> None:
    config = config_with(imagePullSecrets=["registry"], priorityClassName="backup",
                         env=[{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
                         podLabels={"team": "platform"})
    own = {"serviceAccountName": "writer", "env": [{"name": "NO_PROXY", "value": ".svc"}],
           "podAnnotations": {"a": "1"}}
    kinds = []
    for kind, manifest in every_job(own, config):
        kinds.append(kind)
        spec = pod_spec(manifest)
        assert spec["imagePullSecrets"] == [{"name": "registry"}], kind
        assert spec["priorityClassName"] == "backup", kind
        assert spec["serviceAccountName"] == "writer", kind
        assert spec["automountServiceAccountToken"] is True, kind
        env = env_of(manifest)
        assert env["HTTPS_PROXY"]["value"] == "http://proxy:3128", kind
        assert env["NO_PROXY"]["value"] == ".svc", kind
        meta = manifest["spec"]["template"]["metadata"]
        assert meta["labels"]["team"] == "platform", kind
        assert meta["annotations"] == {"a": "1"}, kind
    assert kinds == ["backup", "restore", "hook", "verify"]


def test_a_hook_gets_the_settings_but_not_the_agents_default_resources() -> None:
    config = config_with(priorityClassName="backup",
                         resources={"limits": {"memory": "512Mi"}})
    jobs = dict(every_job({}, config))
    assert pod_spec(jobs["hook"])["priorityClassName"] == "backup"
    assert "resources" not in pod_spec(jobs["hook"])["containers"][0]
    assert pod_spec(jobs["restore"])["containers"][0]["resources"] == {
        "limits": {"memory": "512Mi"}}


def test_the_operators_env_cannot_be_displaced() -> None:
    """Every variable a Job builder sets is one `job.env` may not name."""
    for kind, manifest in every_job({}, settings.OperatorConfig()):
        if kind == "hook":
            continue
        for name in env_of(manifest):
            assert validation.reserved_env(name), f"{kind} sets {name}, which is not reserved"


# Variables the agent and its S3 client read that a user may well set: the standard AWS
# region variables (identity webhooks such as IRSA's set them on the pod too).
USER_SETTABLE = {"AWS_REGION", "AWS_DEFAULT_REGION"}


def test_what_the_agent_reads_from_its_environment_is_reserved() -> None:
    sources = [*(ROOT / "operator/timesheet_backup/agent").glob("*.py"),
               *(ROOT / "operator/timesheet_backup/storage").glob("*.py")]
    names = {m for p in sources
             for m in re.findall(r"(?:env|environ)(?:\.get\(|\[)\"([A-Z_]+)\"", p.read_text())}
    assert {"PGHOST", "AWS_REGION"} <= names  # the scan finds what it looks for
    for name in names - USER_SETTABLE:
        assert validation.reserved_env(name), name
    assert validation.reserved_env(c.AGE_IDENTITY_ENV)


# --- schedules' restore tests ------------------------------------------------------------------


SCHEDULE = {"apiVersion": c.API_VERSION, "kind": "BackupSchedule",
            "metadata": {"name": "daily", "namespace": "timesheet", "uid": "u-3"},
            "spec": {"schedule": "@daily",
                     "template": {"spec": {"job": {"serviceAccountName": "writer",
                                                   "imagePullSecrets": ["registry"]}}},
                     "verification": {"schedule": "@weekly"}}}
GOOD = {"metadata": {"name": "daily-1"}, "status": {"resolved": {"database": {"name": "db"}}}}


def test_a_restore_test_runs_with_the_templates_job_settings() -> None:
    spec = parse(models.BackupScheduleSpec, SCHEDULE["spec"])
    assert spec.verification
    body = verification_body(SCHEDULE, spec.verification, GOOD, "daily-verify-1")
    assert body["spec"]["job"] == {"serviceAccountName": "writer",
                                   "imagePullSecrets": ["registry"]}
    parse(models.RestoreSpec, body["spec"])
    # A restore test compares the restored rows with the counts taken in the dump's snapshot.
    assert body["spec"]["verify"]["rowCounts"] is True


def test_a_restore_tests_own_job_settings_win() -> None:
    data = {**SCHEDULE["spec"], "verification": {"schedule": "@weekly",
                                                 "job": {"priorityClassName": "low"}}}
    spec = parse(models.BackupScheduleSpec, data)
    assert spec.verification
    body = verification_body({**SCHEDULE, "spec": data}, spec.verification, GOOD, "v-1")
    assert body["spec"]["job"] == {"priorityClassName": "low"}
    no_job = {"schedule": "@daily", "verification": {"schedule": "@weekly"}}
    spec = parse(models.BackupScheduleSpec, no_job)
    assert spec.verification
    assert "job" not in verification_body({**SCHEDULE, "spec": no_job}, spec.verification,
                                          GOOD, "v-2")["spec"]


# --- refused at apply time (the CRDs' CEL rules) and at startup (the defaults) -----------------


def job_schemas() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every `job` (JobSpec) schema in the three CRDs, by path."""
    for definition in crds.DEFINITIONS:
        root = crds.crd(definition)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

        def walk(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
            props = node.get("properties") or {}
            if "podLabels" in props and "env" in props:
                yield path, node
            for name, sub in props.items():
                yield from walk(sub, f"{path}.{name}")
            if isinstance(node.get("items"), dict):
                yield from walk(node["items"], f"{path}[]")

        yield from walk(root["properties"]["spec"], f"{definition.kind}.spec")


def test_every_job_in_every_crd_carries_the_rules() -> None:
    paths = sorted(p for p, _ in job_schemas())
    assert paths == ["Backup.spec.job", "BackupSchedule.spec.template.spec.job",
                     "BackupSchedule.spec.verification.job", "Restore.spec.job"]


def cel(rule: str, value: Any) -> bool:
    env = celpy.Environment()
    program = env.program(env.compile(rule))
    return bool(program.evaluate({"self": celpy.json_to_cel(value)}))


RESERVED_ENV = ["TMPDIR", "PGPASSWORD", "PGHOST", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN", "TSB_AGE_IDENTITY", "TSB_PG_CLIENTS_ROOT", "TSB_ANYTHING"]
FREE_ENV = ["HTTPS_PROXY", "https_proxy", "NO_PROXY", "HTTP_PROXY", "AWS_REGION",
            "AWS_CA_BUNDLE", "LANG", "TSB", "MY_TSB_X", "PGOPTIONS_X"]


@pytest.mark.parametrize(("path", "schema"), list(job_schemas()), ids=lambda x: str(x)[:40])
def test_cel_refuses_reserved_env_names(path: str, schema: dict[str, Any]) -> None:
    name_schema = schema["properties"]["env"]["items"]["properties"]["name"]
    (rule,) = name_schema["x-kubernetes-validations"]
    for name in RESERVED_ENV:
        assert not cel(rule["rule"], name), f"{path}: {name} admitted"
    for name in FREE_ENV:
        assert cel(rule["rule"], name), f"{path}: {name} refused"
        assert re.fullmatch(name_schema["pattern"], name)
    assert "TMPDIR" in rule["message"] and "TSB_" in rule["message"]
    assert schema["properties"]["env"]["x-kubernetes-list-map-keys"] == ["name"]


@pytest.mark.parametrize(("path", "schema"), list(job_schemas()), ids=lambda x: str(x)[:40])
def test_cel_refuses_the_operators_pod_labels(path: str, schema: dict[str, Any]) -> None:
    labels = schema["properties"]["podLabels"]
    (rule,) = labels["x-kubernetes-validations"]
    for key in (c.LABEL_MANAGED_BY, c.LABEL_BACKUP, c.LABEL_RESTORE, c.LABEL_SCHEDULE,
                "backup.northstar.io/anything", "job-name", "controller-uid",
                "batch.kubernetes.io/job-name"):
        assert not cel(rule["rule"], {"team": "x", key: "v"}), f"{path}: {key} admitted"
    assert cel(rule["rule"], {"team": "x", "app.kubernetes.io/part-of": "timesheet",
                              "example.com/backup.northstar.io": "y"})
    assert cel(rule["rule"], {})
    value = labels["additionalProperties"]["pattern"]
    assert all(re.fullmatch(value, v) for v in ("", "a", "a.b-c_d", "x" * 63))
    assert not any(re.fullmatch(value, v) for v in ("-a", "a b", "a/"))


@pytest.mark.parametrize(("path", "schema"), list(job_schemas()), ids=lambda x: str(x)[:40])
def test_schema_shapes_of_the_names(path: str, schema: dict[str, Any]) -> None:
    props = schema["properties"]
    for key in ("serviceAccountName", "priorityClassName"):
        assert props[key]["pattern"] == validation.DNS_SUBDOMAIN_PATTERN, path
    assert props["imagePullSecrets"]["items"]["pattern"] == validation.DNS_SUBDOMAIN_PATTERN
    assert props["imagePullSecrets"]["x-kubernetes-list-type"] == "set"


@pytest.mark.parametrize(("section", "message"), [
    ("env:\n      - {name: PGPASSWORD, value: x}", r"defaults\.job\.env: PGPASSWORD"),
    ("env:\n      - {name: TSB_X, value: x}", r"defaults\.job\.env: TSB_X"),
    ("podLabels: {app.kubernetes.io/managed-by: me}",
     r"defaults\.job\.podLabels: app\.kubernetes\.io/managed-by"),
    ("podLabels: {backup.northstar.io/backup: x}", r"defaults\.job\.podLabels: backup"),
])
def test_settings_refuse_reserved_defaults(tmp_path: Path, section: str, message: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"defaults:\n  job:\n    {section}\n")
    with pytest.raises(SpecError, match=message):
        settings.load({"TSB_CONFIG": str(config)})


def test_settings_take_job_defaults(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "defaults:\n  job:\n    serviceAccountName: backup\n    imagePullSecrets: [registry]\n"
        "    priorityClassName: high\n    env: [{name: NO_PROXY, value: .svc}]\n"
        "    podLabels: {team: t}\n    podAnnotations: {a: b}\n")
    loaded = settings.load({"TSB_CONFIG": str(config)})
    assert loaded.defaults.job == job(
        serviceAccountName="backup", imagePullSecrets=["registry"], priorityClassName="high",
        env=[{"name": "NO_PROXY", "value": ".svc"}], podLabels={"team": "t"},
        podAnnotations={"a": "b"})


# --- ttlSecondsAfterFinished (how long finished Jobs and their logs stay) ---------------------


def ttl_of(manifest: dict[str, Any]) -> int:
    return int(manifest["spec"]["ttlSecondsAfterFinished"])


def test_ttl_default_is_a_day() -> None:
    assert ttl_of(make()) == pod.DEFAULT_TTL_SECONDS_AFTER_FINISHED == 86400


@pytest.mark.parametrize(("defaults", "own", "expected"), [
    ({}, {"ttlSecondsAfterFinished": 5}, 5),
    ({"ttlSecondsAfterFinished": 259200}, {}, 259200),
    ({"ttlSecondsAfterFinished": 259200}, {"ttlSecondsAfterFinished": 0}, 0),  # 0 is a value
    ({"priorityClassName": "p"}, {}, 86400),
])
def test_ttl_merges_like_any_scalar(defaults: dict[str, Any], own: dict[str, Any],
                                    expected: int) -> None:
    config = config_with(**defaults)
    for kind, manifest in every_job(own, config):
        assert ttl_of(manifest) == expected, kind


def test_ttl_is_refused_below_zero_by_the_schema() -> None:
    schema = schema_for(models.JobSpec)["properties"]["ttlSecondsAfterFinished"]
    assert schema["minimum"] == 0 and schema["type"] == "integer"


def test_the_old_operator_wide_ttl_key_becomes_the_jobs_default(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("jobTtlSecondsAfterFinished: 3600\n")
    loaded = settings.load({"TSB_CONFIG": str(config)})
    assert loaded.defaults.job == job(ttlSecondsAfterFinished=3600)
    assert ttl_of(make(config=loaded)) == 3600
    config.write_text("jobTtlSecondsAfterFinished: 3600\n"
                      "defaults: {job: {ttlSecondsAfterFinished: 3600, backoffLimit: 2}}\n")
    assert settings.load({"TSB_CONFIG": str(config)}).defaults.job == job(
        ttlSecondsAfterFinished=3600, backoffLimit=2)
    config.write_text("jobTtlSecondsAfterFinished: 3600\n"
                      "defaults: {job: {ttlSecondsAfterFinished: 60}}\n")
    with pytest.raises(SpecError, match="replaced by the latter"):
        settings.load({"TSB_CONFIG": str(config)})
