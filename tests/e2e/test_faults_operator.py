"""Faults of the operator itself, on the real control plane: the operator SIGKILLed at random
moments of Backups and Restores, an agent pod killed mid-upload, and two operator replicas of
which only the Lease holder acts.

The kills are real: the test asks containerd for the host PID of the container's main process
and sends it SIGKILL (the kubelet then restarts it, for restartPolicy Always). The moments are
random but seeded: the seed is printed and in every assertion message; rerun one with
`TSB_FAULT_SEED=<seed>`.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.cluster import Cluster, describe_namespace, wait_for
from tests.support.dbsnapshot import assert_same
from tests.support.operator import (
    OPERATOR_NAMESPACE,
    App,
    Operator,
    install_operator,
    run_tool,
)

pytestmark = pytest.mark.e2e

TERMINAL = ("Succeeded", "Failed")
# Rounds of 5 runs with one kill each. Few kills keep the kubelet's restart back-off
# (doubling from 10s while a container keeps crashing) short.
ROUNDS = int(os.environ.get("TSB_FAULT_ROUNDS", "4"))
OPERATOR_SELECTOR = "app.kubernetes.io/name=timesheet-backup-operator"
LEASE_NAME = "tsb-timesheet-backup-operator"
ORIGINAL_REPLICAS = "backup.northstar.io/original-replicas"
QUIESCED_BY = "backup.northstar.io/quiesced-by"
ACTED = "Timer 'reconcile_backup' succeeded"  # kopf's log line when a Backup was handled


@pytest.fixture(scope="module")
def seed() -> int:
    value = int(os.environ.get("TSB_FAULT_SEED") or random.SystemRandom().randrange(10**6))
    print(f"fault seed: TSB_FAULT_SEED={value}")
    return value


# --- killing a container's process on the node ------------------------------------------------


def container_main_pid(cluster: Cluster, namespace: str, pod: str, container: str) -> int:
    return wait_for(lambda: cluster.container_pid(namespace, pod, container), 30, interval=0.2,
                    message=f"no running container {container} in pod {namespace}/{pod}")


def sigkill_container(cluster: Cluster, namespace: str, pod: str, container: str) -> None:
    os.kill(container_main_pid(cluster, namespace, pod, container), signal.SIGKILL)


def operator_pods(cluster: Cluster) -> list[Any]:
    pods = cluster.core.list_namespaced_pod(OPERATOR_NAMESPACE,
                                            label_selector=OPERATOR_SELECTOR).items
    return [p for p in pods if not p.metadata.deletion_timestamp]


def lease_holder(cluster: Cluster) -> str | None:
    coordination = __import__("kubernetes").client.CoordinationV1Api(cluster.api)
    try:
        lease = coordination.read_namespaced_lease(LEASE_NAME, OPERATOR_NAMESPACE)
    except Exception:
        return None
    return lease.spec.holder_identity or None


def acting_operator_pod(cluster: Cluster) -> str:
    """The operator pod that acts: the Lease holder (a single replica holds it too)."""
    def find() -> str | None:
        names = {p.metadata.name for p in operator_pods(cluster)
                 if p.status.phase == "Running"}
        holder = lease_holder(cluster)
        if holder is None and len(names) == 1:
            return names.pop()  # leader election disabled
        return holder if holder in names else None

    return str(wait_for(find, 60, interval=0.5, message="no operator pod holds the Lease"))


def restarts(cluster: Cluster, pod: str) -> int:
    status = cluster.core.read_namespaced_pod(pod, OPERATOR_NAMESPACE).status
    return sum(c.restart_count for c in status.container_statuses or [])


def kill_operator(cluster: Cluster) -> str:
    """SIGKILL the acting operator; return once the kubelet restarted it and it acts
    again (same pod: it holds the Lease under its own name and takes it back at once)."""
    pod = acting_operator_pod(cluster)
    before = restarts(cluster, pod)
    sigkill_container(cluster, OPERATOR_NAMESPACE, pod, "operator")
    wait_for(lambda: restarts(cluster, pod) > before, 90, interval=0.5,
             message=f"operator pod {pod} not restarted")
    wait_for(lambda: Operator(cluster).pod_name(), 90, interval=0.5,
             message="operator not ready after the kill")
    return pod


# --- what must hold after any run -----------------------------------------------------------


def jobs_of(app: App, label: str, name: str) -> list[Any]:
    return list(app.cluster.batch.list_namespaced_job(
        app.namespace, label_selector=f"backup.northstar.io/{label}={name}").items)


def pods_of_job(app: App, job: str) -> list[Any]:
    return list(app.cluster.core.list_namespaced_pod(
        app.namespace, label_selector=f"job-name={job}").items)


def multipart_uploads(app: App) -> list[str]:
    response = app.s3().list_multipart_uploads(Bucket=app.bucket)
    return [u["Key"] for u in response.get("Uploads", [])]


def check_backup(app: App, name: str, context: str) -> dict[str, Any]:
    backup = app.get("backups", name)
    st = backup.get("status") or {}
    where = f"{context}: backup {name}: {json.dumps(st)[:1500]}"
    assert st.get("phase") in TERMINAL, where
    jobs = jobs_of(app, "backup", name)
    assert [j.metadata.name for j in jobs] == [st.get("jobName")], where
    backoff = jobs[0].spec.backoff_limit
    assert len(pods_of_job(app, jobs[0].metadata.name)) <= backoff + 1, where
    manifest = f"e2e/{app.namespace}/{name}/manifest.json"
    if st["phase"] == "Succeeded":
        assert st["manifestKey"] == manifest, where
        assert manifest in app.object_keys(manifest), where
    else:
        assert st.get("message"), where
        assert manifest not in app.object_keys(manifest), where
    return backup


def check_restore(app: App, name: str, context: str) -> dict[str, Any]:
    restore = app.get("restores", name)
    st = restore.get("status") or {}
    where = f"{context}: restore {name}: {json.dumps(st)[:1500]}"
    assert st.get("phase") in TERMINAL, where
    if st["phase"] == "Failed":
        assert st.get("message"), where
    for job in jobs_of(app, "restore", name):
        assert len(pods_of_job(app, job.metadata.name)) <= job.spec.backoff_limit + 1, where
    return restore


def check_deployment(app: App, name: str, replicas: int, context: str) -> None:
    deployment = app.cluster.apps.read_namespaced_deployment(name, app.namespace)
    annotations = deployment.metadata.annotations or {}
    where = f"{context}: Deployment {name}: replicas {deployment.spec.replicas}, {annotations}"
    assert deployment.spec.replicas == replicas, where
    assert ORIGINAL_REPLICAS not in annotations and QUIESCED_BY not in annotations, where


def job_interval(job: Any) -> tuple[float, float]:
    start = job.status.start_time or job.metadata.creation_timestamp
    end = job.status.completion_time
    if end is None:
        for cond in job.status.conditions or []:
            if cond.type in ("Complete", "Failed") and cond.status == "True":
                end = cond.last_transition_time
    return start.timestamp(), (end.timestamp() if end else float("inf"))


def check_one_job_per_database(app: App, backups: list[str], restores: list[str],
                               context: str) -> None:
    """No backup Job of the source database ran while an in-place restore Job of it ran."""
    for restore in restores:
        for rjob in jobs_of(app, "restore", restore):
            r0, r1 = job_interval(rjob)
            for backup in backups:
                for bjob in jobs_of(app, "backup", backup):
                    b0, b1 = job_interval(bjob)
                    # Times have one-second resolution: touching intervals are sequential.
                    assert not (b0 < r1 - 1 and r0 < b1 - 1), (
                        f"{context}: Jobs {bjob.metadata.name} [{b0}, {b1}] and "
                        f"{rjob.metadata.name} [{r0}, {r1}] ran at the same time")


# --- the tests --------------------------------------------------------------------------


def backup_spec(app: App, components: list[str], **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"components": components, "database": app.database_spec(),
                            "storage": app.storage()}
    if "uploads" in components:
        spec["uploads"] = {"claimName": "timesheet-uploads"}
    spec.update(extra)
    return spec


def quiet_deployment(cluster: Cluster, namespace: str, name: str) -> None:
    """A Deployment for restores to quiesce: one sleeping shell."""
    body: dict[str, Any] = {
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "main", "image": cluster.shell_image,
                                         "command": ["sleep", "100000"]}]},
            },
        },
    }
    cluster.apps.create_namespaced_deployment(namespace, body)


def test_operator_sigkilled_at_random_moments(app: App, seed: int) -> None:
    """ROUNDS rounds; in each, three Backups (database + uploads) and two Restores (into a
    new database, quiescing one Deployment; in place, quiescing the web app, so it must take
    turns with the Backups of the same database) start at random offsets, and the operator
    is SIGKILLed once at a random moment: 5 runs per round, each hit at a different point."""
    rng = random.Random(seed)
    cluster = app.cluster
    quiet_deployment(cluster, app.namespace, "quiet")
    db_before = app.db_snapshot()
    app.create("backups", "base", backup_spec(app, ["database"]))
    assert app.wait_phase("backups", "base", TERMINAL)["status"]["phase"] == "Succeeded"
    log: list[str] = []

    for r in range(ROUNDS):
        context = f"seed {seed}, round {r}"
        plan = sorted([
            (rng.uniform(0, 4), "backups", f"b{r}a"),
            (rng.uniform(0, 4), "backups", f"b{r}b"),
            (rng.uniform(0, 4), "backups", f"b{r}c"),
            (rng.uniform(0, 4), "restores", f"r{r}new"),
            (rng.uniform(0, 4), "restores", f"r{r}inplace"),
        ])
        kill_at = rng.uniform(0.5, 9)
        t0 = time.monotonic()
        killed = False
        for offset, plural, name in plan:
            if not killed and offset > kill_at:
                time.sleep(max(0.0, kill_at - (time.monotonic() - t0)))
                kill_operator(cluster)
                killed = True
            time.sleep(max(0.0, offset - (time.monotonic() - t0)))
            if plural == "backups":
                app.create(plural, name, backup_spec(app, ["database", "uploads"]))
            elif name.endswith("new"):
                app.create(plural, name, {
                    "backupName": "base",
                    "database": {"name": f"{app.database}_{name}", "createDatabase": True},
                    "quiesce": {"deployments": ["quiet"]}})
            else:
                app.create(plural, name, {"backupName": "base",
                                          "quiesce": {"deployments": ["timesheet-web"]}})
        if not killed:
            time.sleep(max(0.0, kill_at - (time.monotonic() - t0)))
            phases = {n: (app.get(p, n).get("status") or {}).get("currentStep")
                      or (app.get(p, n).get("status") or {}).get("phase") for _, p, n in plan}
            kill_operator(cluster)
        else:
            phases = {}
        log.append(f"round {r}: created at {[(round(o, 2), n) for o, _, n in plan]}, "
                   f"killed at {kill_at:.2f}s {phases}")
        names = [(p, n) for _, p, n in plan]
        for plural, name in names:
            app.wait_phase(plural, name, TERMINAL, timeout=300)
        context = f"{context} ({log[-1]})"
        for plural, name in names:
            obj = (check_backup if plural == "backups" else check_restore)(app, name, context)
            # Killing the operator must not fail anything: the agents were not touched.
            assert obj["status"]["phase"] == "Succeeded", \
                f"{context}: {name}: {json.dumps(obj['status'])[:1500]}"
        check_deployment(app, "quiet", 1, context)
        check_deployment(app, "timesheet-web", 1, context)
        check_one_job_per_database(app, [f"b{r}{x}" for x in "abc"], [f"r{r}inplace"],
                                   context)
        assert_same(db_before, app.db_snapshot(f"{app.database}_r{r}new"))
    print("\n".join(log))
    assert multipart_uploads(app) == []


def kill_agent_mid_upload(app: App, name: str) -> str:
    """Wait until the backup's agent has a multipart upload open, then SIGKILL it."""
    job = str(wait_for(lambda: (app.get("backups", name).get("status") or {}).get("jobName"),
                       60, message=f"backup {name} has no Job"))

    def uploading() -> str | None:
        pods = [p for p in pods_of_job(app, job) if p.status.phase == "Running"]
        return pods[0].metadata.name if pods and multipart_uploads(app) else None

    pod = str(wait_for(uploading, 120, interval=0.05, message=lambda: "no upload seen:\n" +
                   describe_namespace(app.cluster, app.namespace)))
    sigkill_container(app.cluster, app.namespace, pod, "agent")
    return pod


@pytest.fixture
def big_uploads(app: App) -> Iterator[App]:
    """A large incompressible file, so that an upload lasts long enough to be killed in."""
    big = app.uploads_dir / "files" / "big.bin"
    with open(big, "wb") as fh:
        for _ in range(48):
            fh.write(random.randbytes(1024 * 1024))
    os.chown(big, 65532, 65532)
    yield app


@pytest.mark.parametrize("backoff_limit", [0, 1])
def test_agent_pod_killed_mid_upload(big_uploads: App, backoff_limit: int) -> None:
    app = big_uploads
    app.create("backups", "killed", backup_spec(app, ["uploads"],
                                                job={"backoffLimit": backoff_limit}))
    first = kill_agent_mid_upload(app, "killed")
    backup = app.wait_phase("backups", "killed", TERMINAL, timeout=300)
    st = check_backup(app, "killed", f"backoffLimit {backoff_limit}")
    pods = pods_of_job(app, st["status"]["jobName"])
    if backoff_limit == 0:
        assert st["status"]["phase"] == "Failed", st["status"]
        assert [p.metadata.name for p in pods] == [first]
        message = st["status"]["message"]
        assert "137" in message or "killed" in message.lower(), message
        assert app.object_keys(f"e2e/{app.namespace}/killed/") == []
    else:
        assert st["status"]["phase"] == "Succeeded", st["status"]
        assert len(pods) == 2, [p.metadata.name for p in pods]
        keys = app.object_keys(f"e2e/{app.namespace}/killed/")
        assert keys.count(f"e2e/{app.namespace}/killed/manifest.json") == 1
    assert backup["status"]["phase"] == st["status"]["phase"]
    # The killed agent could not abort its multipart upload; the operator does.
    wait_for(lambda: multipart_uploads(app) == [], 30,
             message=lambda: f"orphan multipart uploads: {multipart_uploads(app)}")


@pytest.fixture
def two_replicas(cluster: Cluster) -> Iterator[None]:
    install_operator(cluster, "--set", "replicaCount=2")
    try:
        yield
    finally:
        install_operator(cluster)


def test_two_replicas_one_acts_and_failover(app: App, two_replicas: None) -> None:
    cluster = app.cluster
    wait_for(lambda: len([p for p in operator_pods(cluster)
                          if p.status.phase == "Running"]) == 2, 120,
             message="two operator pods not running")
    leader = acting_operator_pod(cluster)
    standby = next(p.metadata.name for p in operator_pods(cluster)
                   if p.metadata.name != leader)

    app.create("backups", "one", backup_spec(app, ["database"]))
    st = app.wait_phase("backups", "one", TERMINAL)["status"]
    assert st["phase"] == "Succeeded", st
    check_backup(app, "one", "two replicas")
    logs = {pod: cluster.pod_logs(OPERATOR_NAMESPACE, pod).get("operator", "")
            for pod in (leader, standby)}
    assert ACTED in logs[leader], logs[leader][-3000:]
    assert ACTED not in logs[standby], logs[standby][-3000:]
    assert "waiting as a candidate" in logs[standby], logs[standby][-3000:]
    assert lease_holder(cluster) == leader

    # Failover: the leader dies without releasing the Lease (SIGKILL) and its pod goes away
    # for good, as with a lost node; the standby takes the Lease once it expires.
    sigkill_container(cluster, OPERATOR_NAMESPACE, leader, "operator")
    run_tool(cluster, "kubectl", "delete", "pod", "-n", OPERATOR_NAMESPACE, leader,
             "--grace-period=0", "--force", "--wait=false")
    started = time.monotonic()
    wait_for(lambda: lease_holder(cluster) == standby, 60, interval=0.5,
             message=lambda: f"the Lease is held by {lease_holder(cluster)}, not {standby}")
    print(f"failover: {standby} took the Lease {time.monotonic() - started:.1f}s after the "
          "leader was killed")
    app.create("backups", "two", backup_spec(app, ["database"]))
    st = app.wait_phase("backups", "two", TERMINAL)["status"]
    assert st["phase"] == "Succeeded", st
    check_backup(app, "two", "after failover")
    log = cluster.pod_logs(OPERATOR_NAMESPACE, standby).get("operator", "")
    assert "became the leader" in log and ACTED in log, log[-3000:]
