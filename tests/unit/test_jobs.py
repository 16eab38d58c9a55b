"""Job manifests, Job outcomes, status shaping, settings and defaults resolution."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from timesheet_backup import settings
from timesheet_backup.api import models
from timesheet_backup.api.defaults import Defaults
from timesheet_backup.api.fields import SpecError, parse
from timesheet_backup.api.resolve import ResolveError, deep_merge, resolve_backup
from timesheet_backup.api.validation import DNS_LABEL_PATTERN
from timesheet_backup.jobs import outcome, pod
from timesheet_backup.status import human_size, merge_conditions, timestamp, transition

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
OWNER = {"apiVersion": "backup.northstar.io/v1alpha1", "kind": "Backup",
         "metadata": {"name": "nightly", "uid": "u-1"}}


def make_job(**overrides: Any) -> dict[str, Any]:
    spec = pod.AgentJob(name="nightly-backup", namespace="timesheet", owner=OWNER,
                        labels={"backup.northstar.io/backup": "nightly"},
                        args=["agent", "backup"], **overrides)
    return pod.agent_job(spec, settings.OperatorConfig())


def test_job_is_locked_down() -> None:
    job = make_job()
    spec = job["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["restartPolicy"] == "Never"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
    }
    assert {"name": "scratch", "mountPath": "/scratch"} in container["volumeMounts"]
    assert {"name": "TMPDIR", "value": "/scratch"} in container["env"]
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert job["metadata"]["labels"]["app.kubernetes.io/managed-by"] == \
        "timesheet-backup-operator"
    assert job["spec"]["backoffLimit"] == 1
    assert job["spec"]["activeDeadlineSeconds"] == 3600


def test_job_tuning_and_node_pinning() -> None:
    job = make_job(
        job=models.JobSpec(backoff_limit=0, active_deadline_seconds=600,
                           node_selector={"disk": "ssd"}, resources={"limits": {"memory": "1Gi"}}),
        run_on_node="node-a",
        volumes=[pod.PodVolume("uploads", "timesheet-uploads", pod.UPLOADS_MOUNT, "files", True)],
    )
    spec = job["spec"]["template"]["spec"]
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 600
    assert spec["nodeSelector"] == {"disk": "ssd"}
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["node-a"]
    assert {"name": "uploads", "mountPath": "/data/uploads", "readOnly": True,
            "subPath": "files"} in spec["containers"][0]["volumeMounts"]
    assert spec["containers"][0]["resources"] == {"limits": {"memory": "1Gi"}}


def test_secrets_only_as_references() -> None:
    storage = models.StorageSpec(bucket="b", credentials_secret_ref=models.CredentialsSecretRef(
        name="s3", session_token_key="token"))
    env = pod.storage_env(storage)
    assert [e["name"] for e in env] == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                        "AWS_SESSION_TOKEN"]
    assert all("value" not in e for e in env)
    assert pod.storage_env(models.StorageSpec(bucket="b")) == []


@pytest.mark.parametrize("parent", ["x", "a" * 40, "a" * 80, "b" * 57 + "-" + "c" * 5])
def test_child_names_are_dns_labels(parent: str) -> None:
    name = pod.child_name(parent, "backup")
    assert len(name) <= 63 and name.endswith("-backup")
    assert pod.child_name(parent, "backup") == name
    assert re.fullmatch(DNS_LABEL_PATTERN, name)


def test_long_names_stay_distinct() -> None:
    assert pod.child_name("a" * 80, "backup") != pod.child_name("a" * 79 + "b", "backup")


# --- outcomes -------------------------------------------------------------------------------


def cond(type_: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": "True", "reason": reason, "message": message}


def a_pod(state: dict[str, Any], created: datetime = NOW, **status: Any) -> dict[str, Any]:
    return {"metadata": {"creationTimestamp": timestamp(created)},
            "status": {"containerStatuses": [{"state": state}], **status}}


def test_outcome_success_reads_the_summary() -> None:
    job = {"status": {"conditions": [cond("Complete")]}}
    p = a_pod({"terminated": {"exitCode": 0, "message": '{"ok": true, "manifestKey": "k"}'}})
    result = outcome.job_outcome(job, [p], NOW)
    assert result.state == "succeeded" and result.summary["manifestKey"] == "k"


def test_outcome_failure_carries_the_agents_line() -> None:
    job = {"status": {"conditions": [cond("Failed", "BackoffLimitExceeded")]}}
    p = a_pod({"terminated": {"exitCode": 2,
                              "message": '{"ok": false, "error": "cannot reach database"}'}})
    result = outcome.job_outcome(job, [p], NOW)
    assert result.state == "failed"
    assert result.message == "cannot reach database (exit code 2)"
    assert result.reason == "BackoffLimitExceeded"


def test_outcome_failure_falls_back_to_the_log_tail() -> None:
    job = {"status": {"conditions": [cond("Failed", "BackoffLimitExceeded")]}}
    p = a_pod({"terminated": {"exitCode": 1, "message": "line1\nTraceback: boom"}})
    assert outcome.job_outcome(job, [p], NOW).message == "Traceback: boom (exit code 1)"


def test_outcome_of_a_killed_agent_says_so() -> None:
    job = {"status": {"conditions": [cond("Failed", "BackoffLimitExceeded")]}}
    p = a_pod({"terminated": {"exitCode": 137, "message": "08:00 INFO archiving /data"}})
    assert outcome.job_outcome(job, [p], NOW).message == (
        "the agent was killed (SIGKILL: out of memory, or its pod or node was stopped); "
        "its last output: 08:00 INFO archiving /data (exit code 137)")


def test_outcome_of_an_agent_over_its_memory_limit_names_the_limit() -> None:
    job = {"status": {"conditions": [cond("Failed", "BackoffLimitExceeded")]}}
    p = a_pod({"terminated": {"exitCode": 137, "reason": "OOMKilled", "message": "08:00 INFO"}})
    p["spec"] = {"containers": [{"resources": {"limits": {"memory": "64Mi"}}}]}
    result = outcome.job_outcome(job, [p], NOW)
    assert (result.reason, result.message) == (
        "OOMKilled", "the agent ran out of memory (limit 64Mi); raise "
        "spec.job.resources.limits.memory (exit code 137)")
    del p["spec"]
    assert outcome.job_outcome(job, [p], NOW).message.startswith(
        "the agent ran out of memory; raise")


RUNNING = {"running": {"startedAt": "2026-11-26T11:59:00Z"}}


def containers(*states: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"creationTimestamp": timestamp(NOW)},
            "status": {"containerStatuses": [{"state": state} for state in states]}}


@pytest.mark.parametrize(("pod_", "summary", "line"), [
    (containers(), {}, ""),  # no container status yet
    (containers(RUNNING), {}, ""),  # nothing terminated: no message to read
    (containers({}), {}, ""),
    (containers({"terminated": {"exitCode": 0}}), {}, ""),
    (containers({"terminated": {"message": "  \n"}}), {}, ""),
    # the first terminated container is read, wherever it is in the list
    (containers(RUNNING, {"terminated": {"message": '{"error": "disk full"}'}}),
     {"error": "disk full"}, "disk full"),
    (containers({"terminated": {"message": '{"ok": false, "message": "no such table"}'}}),
     {"ok": False, "message": "no such table"}, "no such table"),
    (containers({"terminated": {"message": '{"error": "a", "message": "b"}'}}),
     {"error": "a", "message": "b"}, "a"),
    (containers({"terminated": {"message": '{"ok": true}'}}), {"ok": True}, ""),
    # JSON, but not the agent's object: no summary, the text kept as it is
    (containers({"terminated": {"message": "[1, 2]"}}), {}, "[1, 2]"),
    (containers({"terminated": {"message": '"quoted"'}}), {}, '"quoted"'),
    (containers({"terminated": {"message": "137\n"}}), {}, "137"),
    (containers({"terminated": {"message": "null"}}), {}, "null"),
    # not JSON (FallbackToLogsOnError): the last log line
    (containers({"terminated": {"message": "a\nb\nKeyError: 'x'\n"}}), {}, "KeyError: 'x'"),
])
def test_termination_summary(pod_: dict[str, Any], summary: dict[str, Any], line: str) -> None:
    assert outcome.termination_summary(pod_) == (summary, line)


def test_outcome_of_a_failed_job_whose_pod_never_terminated() -> None:
    job = {"status": {"conditions": [cond("Failed", "BackoffLimitExceeded", "pod failed")]}}
    result = outcome.job_outcome(job, [containers(RUNNING)], NOW)
    assert (result.state, result.reason, result.message, result.summary) == (
        "failed", "BackoffLimitExceeded", "the agent failed (pod failed)", {})


@pytest.mark.parametrize(("spec", "limit"), [
    ({"containers": [{"resources": {"limits": {"memory": "64Mi"}}}]}, " (limit 64Mi)"),
    # the first container that has a memory limit names it
    ({"containers": [{"name": "a"}, {"resources": {"requests": {"memory": "1Gi"}}},
                     {"resources": {"limits": {"cpu": "1"}}},
                     {"resources": {"limits": {"memory": "256Mi"}}}]}, " (limit 256Mi)"),
    ({"containers": [{"resources": {"limits": {"cpu": "1"}}}]}, ""),
    ({"containers": [{"resources": {"limits": None}}, {"resources": None}]}, ""),
    ({"containers": []}, ""),
    ({}, ""),
    (None, ""),
])
def test_outcome_of_an_oom_kill_names_the_limit_when_there_is_one(
        spec: dict[str, Any] | None, limit: str) -> None:
    job = {"status": {"conditions": [cond("Failed", "BackoffLimitExceeded")]}}
    p = a_pod({"terminated": {"exitCode": 137, "reason": "OOMKilled",
                              "message": '{"error": "ignored"}'}})
    p["spec"] = spec
    result = outcome.job_outcome(job, [p], NOW)
    assert (result.state, result.reason, result.message) == (
        "failed", "OOMKilled", f"the agent ran out of memory{limit}; raise "
        "spec.job.resources.limits.memory (exit code 137)")
    assert result.summary == {"error": "ignored"}


def test_outcome_deadline_and_missing_job() -> None:
    job = {"status": {"conditions": [cond("Failed", "DeadlineExceeded")]}}
    result = outcome.job_outcome(job, [], NOW)
    assert result.state == "failed" and "activeDeadlineSeconds" in result.message
    assert outcome.job_outcome(None, [], NOW).reason == "JobMissing"


def test_outcome_stuck_pod_fails_after_grace() -> None:
    job: dict[str, Any] = {"status": {}}
    waiting = {"waiting": {"reason": "ErrImagePull", "message": "no such image"}}
    assert outcome.job_outcome(job, [a_pod(waiting)], NOW).state == "running"
    late = a_pod(waiting, created=NOW - timedelta(minutes=5))
    result = outcome.job_outcome(job, [late], NOW)
    assert result.state == "failed" and "no such image" in result.message


def test_outcome_of_a_job_without_pods_yet() -> None:
    result = outcome.job_outcome({"status": {"active": 1}}, [], NOW + timedelta(days=1))
    assert (result.state, result.reason, result.summary) == ("running", "Running", {})


LATE = NOW - outcome.STUCK_GRACE - timedelta(seconds=1)


def waiting(reason: str, message: str = "") -> dict[str, Any]:
    return {"waiting": {"reason": reason, "message": message}}


@pytest.mark.parametrize(("states", "created", "reason", "message"), [
    # other reasons are the Job's to bound (backoffLimit, activeDeadlineSeconds)
    ([waiting("ContainerCreating")], LATE, "Running", "the agent is running"),
    ([waiting("PodInitializing")], NOW - timedelta(hours=5), "Running", "the agent is running"),
    ([waiting("CrashLoopBackOff", "back-off")], LATE, "Running", "the agent is running"),
    ([{"waiting": {}}], LATE, "Running", "the agent is running"),
    ([RUNNING], LATE, "Running", "the agent is running"),
    # a stuck reason within the grace period: may still be fixed (e.g. an image pushed late)
    ([waiting("ImagePullBackOff")], NOW - outcome.STUCK_GRACE, "Running",
     "the agent is running"),
    # past it: failed, whichever container is stuck
    ([waiting("ContainerCreating"), waiting("CreateContainerConfigError", "no secret x")],
     LATE, "CreateContainerConfigError",
     "the agent pod cannot start: CreateContainerConfigError: no secret x"),
    ([RUNNING, waiting("InvalidImageName")], LATE, "InvalidImageName",
     "the agent pod cannot start: InvalidImageName: no detail"),
])
def test_outcome_of_a_waiting_container(states: list[dict[str, Any]], created: datetime,
                                        reason: str, message: str) -> None:
    p = containers(*states)
    p["metadata"]["creationTimestamp"] = timestamp(created)
    result = outcome.job_outcome({"status": {}}, [p], NOW)
    assert (result.state, result.reason, result.message) == (
        "running" if reason == "Running" else "failed", reason, message)


def scheduled(status: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": "PodScheduled", "status": status, "reason": reason, "message": message}


UNSCHEDULABLE = scheduled("False", "Unschedulable", "0/3 nodes")


@pytest.mark.parametrize(("conditions", "age", "state", "message"), [
    ([UNSCHEDULABLE], timedelta(hours=1), "failed",
     "the agent pod cannot be scheduled: 0/3 nodes"),
    ([{"type": "Initialized", "status": "True"}, UNSCHEDULABLE], timedelta(hours=1), "failed",
     "the agent pod cannot be scheduled: 0/3 nodes"),
    ([scheduled("False", "Unschedulable")], timedelta(hours=1), "failed",
     "the agent pod cannot be scheduled: "),
    # within the grace period: the cluster autoscaler may still add a node
    ([UNSCHEDULABLE], outcome.UNSCHEDULABLE_GRACE, "running", "the agent is running"),
    ([scheduled("True")], timedelta(hours=1), "running", "the agent is running"),
    ([scheduled("False", "SchedulingGated")], timedelta(hours=1), "running",
     "the agent is running"),
    ([{"type": "Ready", "status": "False", "reason": "Unschedulable"}], timedelta(hours=1),
     "running", "the agent is running"),
])
def test_outcome_unschedulable(conditions: list[dict[str, Any]], age: timedelta, state: str,
                               message: str) -> None:
    p = a_pod({}, created=NOW - age, conditions=conditions)
    result = outcome.job_outcome({"status": {}}, [p], NOW)
    assert (result.state, result.message) == (state, message)
    assert result.reason == ("Unschedulable" if state == "failed" else "Running")


# --- status ---------------------------------------------------------------------------------


def test_transition_sets_phase_and_conditions() -> None:
    body = {"metadata": {"generation": 1}, "status": {}}
    patch = transition(body, "Running", "JobCreated", "started", NOW, jobName="j", other=None)
    assert patch["phase"] == "Running" and patch["jobName"] == "j" and "other" not in patch
    by_type = {c["type"]: c for c in patch["conditions"]}
    assert by_type["Progressing"]["status"] == "True"
    assert by_type["Ready"]["observedGeneration"] == 1
    assert "completionTime" not in patch

    later = NOW + timedelta(minutes=5)
    done = transition({"metadata": {"generation": 1}, "status": patch}, "Succeeded",
                      "Completed", "ok", later)
    by_type = {c["type"]: c for c in done["conditions"]}
    assert by_type["Ready"]["status"] == "True"
    assert by_type["Ready"]["lastTransitionTime"] == timestamp(later)
    # Failed stayed False: its transition time is kept.
    assert by_type["Failed"]["lastTransitionTime"] == timestamp(NOW)
    assert done["completionTime"] == timestamp(later)


def test_merge_conditions_orders_fixed_set_first() -> None:
    merged = merge_conditions([{"type": "Failed", "status": "False"}],
                              [{"type": "Ready", "status": "True", "lastTransitionTime": "t"}])
    assert [c["type"] for c in merged] == ["Ready", "Failed"]


@pytest.mark.parametrize("size,text", [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"),
                                       (5 * 1024**3, "5.0 GiB"), (5 * 1024**5, "5120.0 TiB")])
def test_human_size(size: int, text: str) -> None:
    assert human_size(size) == text


@pytest.mark.parametrize("size,text", [(0, "0B"), (1023, "1023B"), (1536, "1.5KiB"),
                                       (5 * 1024**4, "5.0TiB")])
def test_human_size_as_one_word(size: int, text: str) -> None:
    """The form of the catalog table's SIZE column (tests/unit/test_storage_catalog.py)."""
    assert human_size(size, sep="") == text


# --- settings and resolution ----------------------------------------------------------------


def test_settings_from_file_and_env(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("defaults:\n  storage:\n    bucket: backups\n  database:\n    host: db\n")
    loaded = settings.load({"TSB_CONFIG": str(config), "TSB_NAMESPACES": "a, b",
                            "TSB_IMAGE": "img:1"})
    assert loaded.namespaces == ["a", "b"] and loaded.image == "img:1"
    assert loaded.defaults.storage == models.StorageSpec(bucket="backups")


def test_settings_refuse_unknown_fields(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("defaults:\n  storag: {}\n")
    with pytest.raises(SpecError, match=r"config\.defaults: unknown field"):
        settings.load({"TSB_CONFIG": str(config)})


def defaults() -> Defaults:
    return parse(Defaults, {
        "database": {"host": "timesheet-db", "name": "timesheet_db", "user": "timesheet",
                     "passwordSecretRef": {"name": "db", "key": "password"}, "noOwner": True},
        "uploads": {"claimName": "timesheet-uploads"},
        "storage": {"bucket": "backups", "prefix": "timesheet"},
        "compression": {"algorithm": "gzip"},
    })


def test_minimal_backup_resolves_from_defaults() -> None:
    spec = resolve_backup({}, defaults())
    assert spec.database is not None and spec.database.host == "timesheet-db"
    assert spec.storage is not None and spec.storage.bucket == "backups"
    assert spec.compression == models.CompressionSpec(algorithm="gzip")


def test_user_values_win_even_when_false() -> None:
    spec = resolve_backup({"database": {"noOwner": False, "name": "other"},
                           "compression": {"level": 3}}, defaults())
    assert spec.database is not None
    assert spec.database.no_owner is False and spec.database.name == "other"
    assert spec.database.host == "timesheet-db"
    assert spec.compression == models.CompressionSpec(algorithm="gzip", level=3)


def test_incomplete_backup_names_every_missing_field() -> None:
    with pytest.raises(ResolveError) as err:
        resolve_backup({}, Defaults())
    assert "database.host" in str(err.value) and "uploads.claimName" in str(err.value)
    assert "storage.bucket" in str(err.value)
    # Only what the chosen components need.
    with pytest.raises(ResolveError) as err:
        resolve_backup({"components": ["uploads"], "uploads": {"claimName": "u"}},
                       Defaults())
    assert str(err.value).endswith("storage.bucket")


def test_deep_merge() -> None:
    assert deep_merge({"a": {"b": 1, "c": [1]}}, {"a": {"c": [2]}, "d": 0}) == \
        {"a": {"b": 1, "c": [2]}, "d": 0}


def test_agent_jobs_get_the_default_resources_unless_they_set_their_own() -> None:
    defaults = {"requests": {"memory": "256Mi"}, "limits": {"memory": "512Mi"}}
    config = settings.OperatorConfig(defaults=Defaults(
        job=models.JobSpec(resources=defaults)))

    def resources(**overrides: Any) -> Any:
        spec = pod.AgentJob(name="n", namespace="ns", owner={
            "apiVersion": "v", "kind": "Restore", "metadata": {"name": "n", "uid": "u"}},
            labels={}, args=[], **overrides)
        return pod.agent_job(spec, config)["spec"]["template"]["spec"]["containers"][0].get(
            "resources")

    assert resources() == defaults
    own = {"limits": {"memory": "2Gi"}}
    assert resources(job=models.JobSpec(resources=own)) == own
    assert resources(image="app:1") is None  # a hook's image: its author sizes it
