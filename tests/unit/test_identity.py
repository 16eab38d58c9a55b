"""The identity of agent Jobs that mount the uploads claim (jobs/identity.py), row by row."""

from __future__ import annotations

from typing import Any

import pytest

from timesheet_backup.jobs import identity
from timesheet_backup.jobs.identity import Observed, choose

pytestmark = pytest.mark.unit

CLAIM = "timesheet-uploads"


def pod_spec(pod_ctx: dict[str, Any] | None = None, container_ctx: dict[str, Any] | None = None,
             claim: str = CLAIM, sidecar_ctx: dict[str, Any] | None = None) -> dict[str, Any]:
    containers: list[dict[str, Any]] = [{
        "name": "web",
        "volumeMounts": [{"name": "uploads", "mountPath": "/app/uploads"}],
        **({"securityContext": container_ctx} if container_ctx is not None else {}),
    }]
    if sidecar_ctx is not None:
        containers.insert(0, {"name": "metrics", "securityContext": sidecar_ctx})
    return {
        **({"securityContext": pod_ctx} if pod_ctx is not None else {}),
        "containers": containers,
        "volumes": [{"name": "uploads", "persistentVolumeClaim": {"claimName": claim}}],
    }


def test_explicit_pod_security_context_is_used_as_given() -> None:
    explicit = {"runAsUser": 0, "runAsNonRoot": False}
    chosen = choose(explicit, CLAIM, [Observed("pod web", pod_spec({"runAsUser": 1000}))])
    assert chosen.security_context == explicit
    assert chosen.runs_as_root
    assert "job.podSecurityContext" in chosen.description
    assert chosen.warning is None


def test_no_claim_runs_as_the_agent() -> None:
    chosen = choose(None, None, [Observed("pod web", pod_spec({"runAsUser": 1000}))])
    assert chosen.security_context == identity.agent_default()
    assert chosen.security_context["runAsUser"] == identity.AGENT_UID


def test_app_uid_group_fsgroup_and_supplemental_groups_are_copied() -> None:
    app = {"runAsUser": 1000, "runAsGroup": 1001, "fsGroup": 2000,
           "supplementalGroups": [3000, 3001]}
    chosen = choose(None, CLAIM, [Observed("pod web-1", pod_spec(app))])
    assert chosen.security_context == {
        "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1001, "fsGroup": 2000,
        "fsGroupChangePolicy": "OnRootMismatch", "supplementalGroups": [3000, 3001],
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert chosen.warning is None
    assert "pod web-1" in chosen.description and "uid 1000" in chosen.description


def test_the_containers_own_context_wins_over_the_pods() -> None:
    spec = pod_spec({"runAsUser": 5, "runAsGroup": 5}, {"runAsUser": 1000, "runAsGroup": 1000})
    ctx = choose(None, CLAIM, [Observed("pod web", spec)]).security_context
    assert (ctx["runAsUser"], ctx["runAsGroup"]) == (1000, 1000)


def test_a_sidecar_that_does_not_mount_the_claim_does_not_count() -> None:
    spec = pod_spec({"runAsUser": 1000}, sidecar_ctx={"runAsUser": 9999})
    assert choose(None, CLAIM, [Observed("pod web", spec)]).security_context["runAsUser"] == 1000


def test_no_run_as_group_leaves_the_group_to_the_runtime() -> None:
    ctx = choose(None, CLAIM, [Observed("pod web", pod_spec({"runAsUser": 1000}))]
                 ).security_context
    assert "runAsGroup" not in ctx and "fsGroup" not in ctx


def test_pods_of_another_claim_are_ignored_and_the_next_observation_is_used() -> None:
    other = Observed("pod other", pod_spec({"runAsUser": 7}, claim="another"))
    template = Observed("Deployment timesheet-web", pod_spec({"runAsUser": 1000}))
    chosen = choose(None, CLAIM, [other, template])
    assert chosen.security_context["runAsUser"] == 1000
    assert "Deployment timesheet-web" in chosen.description


@pytest.mark.parametrize("app", [{"runAsUser": 0}, {}, None], ids=["root", "image-user",
                                                                   "no-context"])
def test_an_app_running_as_root_or_an_unknown_user_is_never_escalated(
        app: dict[str, Any] | None) -> None:
    spec = pod_spec(None if app is None else {**app, "fsGroup": 2000})
    chosen = choose(None, CLAIM, [Observed("pod web", spec)])
    ctx = chosen.security_context
    assert ctx["runAsUser"] == identity.AGENT_UID and ctx["runAsNonRoot"] is True
    assert not chosen.runs_as_root
    if app is not None:
        assert ctx["fsGroup"] == 2000  # the app's groups still help reading group files
    assert chosen.warning is not None
    assert "runAsNonRoot: false" in chosen.warning and "baseline" in chosen.warning


def test_nobody_mounts_the_claim() -> None:
    chosen = choose(None, CLAIM, [])
    assert chosen.security_context == identity.agent_default()
    assert f"no pod or Deployment mounts {CLAIM}" in chosen.description
    assert chosen.warning is None


def test_the_job_takes_the_chosen_identity_and_root_only_when_asked() -> None:
    from timesheet_backup import settings
    from timesheet_backup.jobs import pod

    def job(ctx: dict[str, Any] | None) -> dict[str, Any]:
        spec = pod.AgentJob(name="n-backup", namespace="ns", owner={
            "apiVersion": "v", "kind": "Backup", "metadata": {"name": "n", "uid": "u"}},
            labels={}, args=[], security_context=ctx)
        return pod.agent_job(spec, settings.OperatorConfig())["spec"]["template"]["spec"]

    app = choose(None, CLAIM, [Observed("pod web", pod_spec({"runAsUser": 1000}))])
    spec = job(dict(app.security_context))
    assert spec["securityContext"]["runAsUser"] == 1000
    assert spec["containers"][0]["securityContext"]["runAsNonRoot"] is True
    root = job({"runAsUser": 0, "runAsNonRoot": False})
    assert root["containers"][0]["securityContext"]["runAsNonRoot"] is False
    assert job(None)["securityContext"] == identity.agent_default()

