"""What happened to an agent Job, from the Job and its pods as the API server shows them
(pure). Nothing may stay Running forever: every way a run can end or stall maps to an outcome.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from timesheet_backup.status import parse_time

# Waiting reasons that do not fix themselves; past the grace period the run has failed.
STUCK_REASONS = frozenset({
    "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
    "CreateContainerError", "RunContainerError",
})
STUCK_GRACE = timedelta(minutes=2)
KILLED_EXIT_CODE = 137  # 128 + SIGKILL
UNSCHEDULABLE_GRACE = timedelta(minutes=10)


@dataclass
class Outcome:
    state: Literal["running", "succeeded", "failed"]
    reason: str
    message: str
    summary: dict[str, Any] = field(default_factory=dict)


def _condition(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return None


def _terminated(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated")
        if terminated:
            return dict(terminated)
    return None


def termination_summary(pod: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The agent's JSON summary and one line of text from the pod's termination message."""
    terminated = _terminated(pod) or {}
    raw = (terminated.get("message") or "").strip()
    try:
        parsed = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        # FallbackToLogsOnError: the log tail, e.g. a crash before the agent could write JSON.
        return {}, raw.splitlines()[-1] if raw else ""
    if not isinstance(parsed, dict):
        return {}, raw
    return parsed, str(parsed.get("error") or parsed.get("message") or "")


def _newest(pods: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    if not pods:
        return None
    return max(pods, key=lambda p: p.get("metadata", {}).get("creationTimestamp") or "")


def job_outcome(job: Mapping[str, Any] | None, pods: Sequence[Mapping[str, Any]],
                now: datetime) -> Outcome:
    if job is None:
        return Outcome("failed", "JobMissing",
                       "the agent Job disappeared before it finished (deleted by someone?)")
    newest = _newest(pods)
    if _condition(job, "Complete") or _condition(job, "SuccessCriteriaMet"):
        summary = termination_summary(newest)[0] if newest else {}
        return Outcome("succeeded", "Completed", "the agent finished", summary)
    failed = _condition(job, "Failed") or _condition(job, "FailureTarget")
    if failed:
        summary, line = termination_summary(newest) if newest else ({}, "")
        exit_code = (_terminated(newest) or {}).get("exitCode") if newest else None
        reason = failed.get("reason") or "JobFailed"
        terminated = (_terminated(newest) or {}) if newest else {}
        if reason == "DeadlineExceeded":
            message = "the agent did not finish within activeDeadlineSeconds"
        elif terminated.get("reason") == "OOMKilled":
            # The kubelet says why: the container went over its memory limit.
            reason = "OOMKilled"
            limit = _memory_limit(newest or {})
            message = ("the agent ran out of memory" + (f" (limit {limit})" if limit else "")
                       + "; raise spec.job.resources.limits.memory")
        elif exit_code == KILLED_EXIT_CODE and not summary:
            # No JSON summary: the agent never got to say why. Its last log line is kept
            # as a hint of where it was.
            message = ("the agent was killed (SIGKILL: out of memory, or its pod or node was "
                       "stopped)" + (f"; its last output: {line}" if line else ""))
        elif line:
            message = line
        else:
            message = f"the agent failed ({failed.get('message') or reason})"
        if exit_code not in (None, 0) and reason != "DeadlineExceeded":
            message += f" (exit code {exit_code})"
        return Outcome("failed", reason, message, summary)
    if newest is not None:
        stuck = _stuck(newest, now)
        if stuck:
            return stuck
    return Outcome("running", "Running", "the agent is running")


def _memory_limit(pod: Mapping[str, Any]) -> str | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
        if limit:
            return str(limit)
    return None


def _stuck(pod: Mapping[str, Any], now: datetime) -> Outcome | None:
    status = pod.get("status") or {}
    created = parse_time(pod.get("metadata", {}).get("creationTimestamp")) or now
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_REASONS and now - created > STUCK_GRACE:
            return Outcome("failed", waiting["reason"],
                           f"the agent pod cannot start: {waiting['reason']}: "
                           f"{waiting.get('message') or 'no detail'}")
    for cond in status.get("conditions") or []:
        if (cond.get("type") == "PodScheduled" and cond.get("status") == "False"
                and cond.get("reason") == "Unschedulable" and now - created > UNSCHEDULABLE_GRACE):
            return Outcome("failed", "Unschedulable",
                           f"the agent pod cannot be scheduled: {cond.get('message') or ''}")
    return None
