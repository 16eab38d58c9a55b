"""The operator at scale, on the local cluster (docs/benchmarks.md, "Operator").

Runs against the helm-installed operator exactly as the e2e tests install it. Backups get a
real Job each, but in namespaces whose ResourceQuota allows no pods, so nothing runs: what is
measured is the operator's reaction time, not backups. The specs point at hosts that do not
exist and say `deletionPolicy: Retain`, so deleting them never touches a bucket.
"""

from __future__ import annotations

import contextlib
import datetime
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from kubernetes import client as k8s
from kubernetes import watch

from bench.measure import rss_bytes, tree
from tests.support.cluster import (
    Cluster,
    create_namespace,
    delete_namespace,
    secret_data,
    start_cluster,
    wait_for,
)
from tests.support.operator import OPERATOR_NAMESPACE, install_operator, run_tool
from timesheet_backup import constants as c
from timesheet_backup.api.models import RetentionSpec
from timesheet_backup.schedule import retention

GROUP, VERSION = c.GROUP, c.VERSION
Log = Callable[[str], None]

BACKUP_SPEC: dict[str, Any] = {
    "components": ["database"],
    "database": {"host": "db.bench.invalid", "name": "timesheet", "user": "timesheet",
                 "passwordSecretRef": {"name": "bench-db", "key": "password"}},
    "storage": {"bucket": "bench", "endpoint": "http://s3.bench.invalid:9000",
                "forcePathStyle": True, "credentialsSecretRef": {"name": "bench-s3"}},
    "deletionPolicy": "Retain",
}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return round(ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo), 3)


def stats(values: list[float]) -> dict[str, Any]:
    return {"count": len(values), "p50": percentile(values, 50), "p90": percentile(values, 90),
            "p99": percentile(values, 99), "max": round(max(values), 3) if values else None,
            "mean": round(statistics.fmean(values), 3) if values else None}


class Arrivals:
    """Wall-clock time at which this process first saw each object (a watch, in a thread).
    API timestamps have one-second resolution; a watch sees objects within milliseconds."""

    def __init__(self, lister: Callable[..., Any], *args: Any) -> None:
        self.seen: dict[str, float] = {}
        self.deleted: dict[str, float] = {}
        self._stop = threading.Event()
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._run, args=(lister, args), daemon=True)
        self._thread.start()

    def _run(self, lister: Callable[..., Any], args: tuple[Any, ...]) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                for event in self._watch.stream(lister, *args, timeout_seconds=60):
                    obj = event["object"]
                    meta = obj["metadata"] if isinstance(obj, dict) else obj.metadata
                    name = meta["name"] if isinstance(meta, dict) else meta.name
                    if event["type"] == "DELETED":
                        self.deleted.setdefault(name, time.time())
                    else:
                        self.seen.setdefault(name, time.time())
                    if self._stop.is_set():
                        break

    def stop(self) -> None:
        self._stop.set()
        self._watch.stop()


def quota_namespace(cluster: Cluster, hint: str) -> str:
    """A namespace where Jobs can be created but no pod can: ResourceQuota pods: 0. (No
    resourcequota controller runs here, so the quota's status is written by hand; admission
    only needs it to be there.)"""
    ns = create_namespace(cluster, f"bench-{hint}")
    cluster.core.create_namespaced_resource_quota(ns, {
        "metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}})
    cluster.core.replace_namespaced_resource_quota_status("no-pods", ns, {
        "metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}},
        "status": {"hard": {"pods": "0"}, "used": {"pods": "0"}}})
    cluster.core.create_namespaced_secret(ns, {"metadata": {"name": "bench-db"},
                                               "data": secret_data({"password": "unused"})})
    cluster.core.create_namespaced_secret(ns, {"metadata": {"name": "bench-s3"}, "data":
                                               secret_data({"AWS_ACCESS_KEY_ID": "unused",
                                                            "AWS_SECRET_ACCESS_KEY": "unused"})})
    return ns


def backup_body(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": c.API_VERSION, "kind": "Backup",
            "metadata": {"name": name, "labels": labels or {}}, "spec": BACKUP_SPEC}


def drop_namespace(cluster: Cluster, ns: str, log: Log) -> float:
    """Delete a namespace while the operator runs (Backups carry its finalizer)."""
    t = time.monotonic()
    with contextlib.suppress(Exception):
        delete_namespace(cluster, ns, timeout=600, force_pods=True)
    seconds = round(time.monotonic() - t, 1)
    log(f"  deleted namespace {ns} in {seconds} s")
    return seconds


# ---------------------------------------------------------------------------- latency


def apply_latency(cluster: Cluster, count: int, log: Log) -> dict[str, Any]:
    """`kubectl apply` one Backup at a time; time until its Job appears."""
    ns = quota_namespace(cluster, "latency")
    jobs = Arrivals(cluster.batch.list_namespaced_job, ns)
    applied: dict[str, float] = {}
    job_of: dict[str, str] = {}
    try:
        time.sleep(1)
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(count):
                name = f"latency-{i:03d}"
                path = Path(tmp) / f"{name}.yaml"
                path.write_text(yaml.safe_dump({**backup_body(name),
                                                "metadata": {"name": name, "namespace": ns}}))
                run_tool(cluster, "kubectl", "apply", "-f", str(path))
                applied[name] = time.time()
                time.sleep(0.5)
        def all_jobs() -> bool:
            for name in applied:
                body = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, ns,
                                                                   c.PLURAL_BACKUP, name)
                job = (body.get("status") or {}).get("jobName")
                if job:
                    job_of[name] = job
            return all(job_of.get(n) in jobs.seen for n in applied)

        wait_for(all_jobs, 300, interval=2, message="not every Backup got its Job")
    finally:
        jobs.stop()
    latencies = [jobs.seen[job_of[n]] - applied[n] for n in applied]
    result = {"backups": count, "namespace_drop_seconds": drop_namespace(cluster, ns, log),
              "seconds": stats(latencies)}
    log(f"  apply -> Job: {result['seconds']}")
    return result


# ---------------------------------------------------------------------------- schedules


def schedules_same_minute(cluster: Cluster, count: int, log: Log) -> dict[str, Any]:
    """`count` BackupSchedules due in the same minute: from the minute boundary to every
    Backup, and to every Job."""
    ns = quota_namespace(cluster, "schedules")
    now = datetime.datetime.now(datetime.UTC)
    fire = (now + datetime.timedelta(seconds=90)).replace(second=0, microsecond=0)
    cron_line = f"{fire.minute} {fire.hour} * * *"
    backups = Arrivals(cluster.custom.list_namespaced_custom_object, GROUP, VERSION, ns,
                       c.PLURAL_BACKUP)
    jobs = Arrivals(cluster.batch.list_namespaced_job, ns)

    def create(i: int) -> None:
        body = {"apiVersion": c.API_VERSION, "kind": "BackupSchedule",
                "metadata": {"name": f"s{i:03d}"},
                "spec": {"schedule": cron_line, "timeZone": "UTC",
                         "template": {"spec": BACKUP_SPEC}}}
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, ns, c.PLURAL_SCHEDULE,
                                                       body)

    try:
        t = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(create, range(count)))
        created_in = round(time.monotonic() - t, 1)
        log(f"  {count} schedules created in {created_in} s, due at {fire:%H:%M:%S} UTC")
        deadline = fire.timestamp() + 600
        wait_for(lambda: len(jobs.seen) >= count or time.time() > deadline,
                 fire.timestamp() - time.time() + 660, interval=2,
                 message="schedules did not fire")
    finally:
        backups.stop()
        jobs.stop()
    base = fire.timestamp()
    b_times = sorted(t - base for t in backups.seen.values())
    j_times = sorted(t - base for t in jobs.seen.values())
    result = {"schedules": count, "created_in_seconds": created_in,
              "backups_created": len(b_times), "jobs_created": len(j_times),
              "first_backup_seconds": round(b_times[0], 2) if b_times else None,
              "all_backups_seconds": round(b_times[-1], 2) if b_times else None,
              "all_jobs_seconds": round(j_times[-1], 2) if j_times else None,
              "backup_after_boundary": stats(b_times), "job_after_boundary": stats(j_times)}
    result["namespace_drop_seconds"] = drop_namespace(cluster, ns, log)
    log(f"  {count} schedules: {result}")
    return result


# ---------------------------------------------------------------------------- retention


def operator_deployment(cluster: Cluster) -> str:
    deployments = cluster.apps.list_namespaced_deployment(
        OPERATOR_NAMESPACE, label_selector="app.kubernetes.io/name=timesheet-backup-operator")
    return str(deployments.items[0].metadata.name)


def operator_pid(cluster: Cluster, pod: str) -> int | None:
    """The host PID of the operator container's main process (containerd knows it)."""
    return cluster.container_pid(OPERATOR_NAMESPACE, pod, "operator")


def cgroup_memory_peak(pid: int) -> int | None:
    """The kernel's own high-water mark of the container's memory cgroup (v1
    `memory.max_usage_in_bytes`, v2 `memory.peak`): what the limit is enforced against."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "memory":
            candidate = Path(f"/sys/fs/cgroup/memory{path}/memory.max_usage_in_bytes")
        elif controllers == "":
            candidate = Path(f"/sys/fs/cgroup{path}/memory.peak")
        else:
            continue
        if candidate.exists():
            return int(candidate.read_text())
    return None


def operator_container(cluster: Cluster, pod: str) -> dict[str, Any]:
    """The kubelet's view of the operator container: its memory limit, restarts and why the
    last instance ended (an OOM kill shows here as reason OOMKilled)."""
    obj = cluster.core.read_namespaced_pod(pod, OPERATOR_NAMESPACE)
    spec = next(c_ for c_ in obj.spec.containers if c_.name == "operator")
    status = next(s for s in obj.status.container_statuses or [] if s.name == "operator")
    last = status.last_state.terminated if status.last_state else None
    return {"memory_limit": (spec.resources.limits or {}).get("memory"),
            "restarts": status.restart_count,
            "last_termination_reason": last.reason if last else None}


def count_backups(cluster: Cluster, ns: str) -> int:
    page = cluster.custom.list_namespaced_custom_object(GROUP, VERSION, ns, c.PLURAL_BACKUP,
                                                        limit=1)
    remaining = page["metadata"].get("remainingItemCount") or 0
    return len(page["items"]) + int(remaining)


def retention_at_scale(cluster: Cluster, count: int, log: Log) -> dict[str, Any]:
    """`count` finished Backups of one schedule, hourly over the past; the operator starts
    and prunes them to what `retention` keeps."""
    ns = quota_namespace(cluster, "retention")
    deployment = operator_deployment(cluster)
    policy = {"maxAge": "30d", "keepFailed": 3}
    now = datetime.datetime.now(datetime.UTC)
    # Spread over the same 5,000 hours (208 days) whatever the count, so a small run
    # prunes too; half a step off the hour, so the clock moving on does not change the set.
    step = 5000 / count
    times = {f"nightly-{i:05d}": now - datetime.timedelta(hours=(i + 0.5) * step)
             for i in range(count)}
    records = [retention.BackupRecord(n, "Succeeded", t) for n, t in times.items()]
    keep = count - len(retention.to_prune(records, RetentionSpec(max_age="30d", keep_failed=3),
                                          now, ZoneInfo("UTC")))
    result: dict[str, Any] = {"backups": count, "retention": policy, "expected_kept": keep,
                              "spacing_hours": round(step, 2)}
    run_tool(cluster, "kubectl", "-n", OPERATOR_NAMESPACE, "scale", "deployment", deployment,
             "--replicas=0")
    try:
        wait_for(lambda: not cluster.core.list_namespaced_pod(
            OPERATOR_NAMESPACE, label_selector="app.kubernetes.io/name="
            "timesheet-backup-operator").items, 120, message="operator pod still there")
        labels = {c.LABEL_SCHEDULE: "nightly", c.LABEL_MANAGED_BY: c.MANAGED_BY}
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, ns, c.PLURAL_SCHEDULE, {
            "apiVersion": c.API_VERSION, "kind": "BackupSchedule",
            "metadata": {"name": "nightly"},
            "spec": {"schedule": "0 2 * * *", "timeZone": "UTC", "suspend": True,
                     "template": {"spec": BACKUP_SPEC}, "retention": policy}})

        def make(item: tuple[str, datetime.datetime]) -> None:
            name, when = item
            obj = cluster.custom.create_namespaced_custom_object(
                GROUP, VERSION, ns, c.PLURAL_BACKUP, backup_body(name, labels))
            stamp = when.strftime("%Y-%m-%dT%H:%M:%SZ")
            obj["status"] = {"phase": "Succeeded", "startTime": stamp,
                             "completionTime": stamp, "message": "benchmark fixture"}
            cluster.custom.replace_namespaced_custom_object_status(
                GROUP, VERSION, ns, c.PLURAL_BACKUP, name, obj)

        t = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(make, times.items()))
        result["fixture_seconds"] = round(time.monotonic() - t, 1)
        log(f"  {count} Backups created and marked Succeeded in {result['fixture_seconds']} s")
    finally:
        run_tool(cluster, "kubectl", "-n", OPERATOR_NAMESPACE, "scale", "deployment",
                 deployment, "--replicas=1")
    start = time.monotonic()
    from tests.support.operator import Operator

    operator = Operator(cluster)
    pod = wait_for(operator.pod_name, 180, interval=0.5, message="operator pod not running")
    result["operator_ready_seconds"] = round(time.monotonic() - start, 1)
    pid = operator_pid(cluster, pod)
    peak = {"tree": 0, "largest_process": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set() and pid:
            pids = tree(pid)
            sizes = [rss_bytes(p) for p in pids]
            peak["tree"] = max(peak["tree"], sum(sizes))
            peak["largest_process"] = max(peak["largest_process"], max(sizes, default=0))
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    progress: list[tuple[float, int]] = []
    try:
        def pruned() -> bool:
            n = count_backups(cluster, ns)
            progress.append((round(time.monotonic() - start, 1), n))
            return n <= keep

        wait_for(pruned, 1200, interval=2, message="retention did not prune in 20 minutes")
        result["prune_seconds_from_scale_up"] = round(time.monotonic() - start, 1)
        time.sleep(5)  # memory just after the work, before a GC might return it
    finally:
        done.set()
        sampler.join()
    result["remaining"] = count_backups(cluster, ns)
    result["operator_pid_found"] = pid is not None
    # The chart's memory limit is the claim under test here: the kubelet enforces it, so an
    # operator that outgrew it would have been OOM-killed and restarted during the pass.
    result["operator_container"] = operator_container(cluster, pod)
    result["operator_cgroup_peak_bytes"] = cgroup_memory_peak(pid) if pid else None
    if result["operator_container"]["restarts"]:
        raise RuntimeError(f"the operator restarted during retention at scale: "
                           f"{result['operator_container']}")
    result["operator_peak_rss_bytes"] = peak["largest_process"]
    result["operator_pod_tree_peak_rss_bytes"] = peak["tree"]
    result["progress"] = progress[:: max(1, len(progress) // 30)]
    log(f"  retention: {count} -> {result['remaining']} in "
        f"{result['prune_seconds_from_scale_up']} s, operator peak RSS "
        f"{peak['largest_process'] / 2**20:.0f} MiB")
    result["namespace_drop_seconds"] = drop_namespace(cluster, ns, log)
    return result


def idle_operator_rss(cluster: Cluster) -> int:
    from tests.support.operator import Operator

    pod = Operator(cluster).pod_name()
    pid = operator_pid(cluster, pod) if pod else None
    return max((rss_bytes(p) for p in tree(pid)), default=0) if pid else 0


def run_all(scale: dict[str, Any], log: Log) -> dict[str, Any]:
    cluster = start_cluster()
    install_operator(cluster)
    out: dict[str, Any] = {"provider": cluster.provider}
    try:
        time.sleep(5)
        out["operator_idle_rss_bytes"] = idle_operator_rss(cluster)
        log("latency from kubectl apply to the Job")
        out["latency"] = apply_latency(cluster, scale["latency_backups"], log)
        log(f"{scale['schedules']} schedules firing in the same minute")
        out["schedules"] = schedules_same_minute(cluster, scale["schedules"], log)
        log(f"retention over {scale['retention_backups']} Backups")
        out["retention"] = retention_at_scale(cluster, scale["retention_backups"], log)
    finally:
        # Whatever happened, leave the standard install behind for the e2e tests.
        install_operator(cluster)
    with contextlib.suppress(k8s.ApiException):
        out["kubernetes"] = k8s.VersionApi(cluster.api).get_code().git_version
    return out
