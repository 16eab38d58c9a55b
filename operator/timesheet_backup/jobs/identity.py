"""Which identity an agent Job that mounts the uploads volume runs as (pure).

The uploads are written by the app, as the app's uid, often with modes such as 0600/0640 in
0700/0750 directories. A Job running as any other uid cannot read them (backup) or leaves
files the app cannot write again (restore). So a Job that mounts the uploads claim takes the
app's identity, observed from the pods that mount the claim (or, when none runs — a Restore
has just scaled the app down — from the pod template of a Deployment that mounts it):

| observed                                  | the Job runs as                                  |
| ----------------------------------------- | ------------------------------------------------ |
| `job.podSecurityContext` set              | exactly that (the explicit override)             |
| no uploads claim mounted                  | the agent's own non-root user (65532)            |
| no pod or template mounts the claim       | the agent's user (65532); said in status         |
| the app runs as a non-root uid            | that uid, its group, fsGroup, supplementalGroups |
| the app runs as root, or as its image's   | the agent's user plus the app's groups, and a    |
| user (no runAsUser: invisible to us)      | warning saying how to opt in; never root         |

Root is never chosen silently: it needs a Pod Security level of `baseline` or lower and is
an explicit `job.podSecurityContext` (runAsUser: 0, runAsNonRoot: false).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

AGENT_UID = 65532
# The seccomp profile every Job gets; restricted Pod Security requires one.
SECCOMP = {"type": "RuntimeDefault"}
# An fsGroup makes the kubelet chown/chmod the volume on mount. With the app's own fsGroup
# the tree is already so; OnRootMismatch skips the walk over every file when the root is.
FS_GROUP_CHANGE_POLICY = "OnRootMismatch"


@dataclass(frozen=True)
class Observed:
    """One pod (or pod template) that mounts the uploads claim."""

    source: str  # e.g. "pod timesheet-web-5d9c", "Deployment timesheet-web"
    pod_spec: Mapping[str, Any]


@dataclass(frozen=True)
class Identity:
    """The pod securityContext of the Job and a sentence on where it came from."""

    security_context: Mapping[str, Any]
    description: str
    warning: str | None = None

    @property
    def runs_as_root(self) -> bool:
        return self.security_context.get("runAsUser") == 0


def agent_default() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": AGENT_UID,
        "runAsGroup": AGENT_UID,
        "seccompProfile": dict(SECCOMP),
    }


def _mounts_claim(pod_spec: Mapping[str, Any], claim: str) -> list[str]:
    """Names of the pod's volumes that are the claim."""
    return [
        v["name"] for v in pod_spec.get("volumes") or []
        if (v.get("persistentVolumeClaim") or {}).get("claimName") == claim
    ]


def app_ids(pod_spec: Mapping[str, Any], claim: str) -> dict[str, Any] | None:
    """runAsUser/runAsGroup/fsGroup/supplementalGroups of the containers that mount the claim
    (a container's own securityContext wins over the pod's, as in the kubelet); None when
    the pod does not mount it."""
    volumes = set(_mounts_claim(pod_spec, claim))
    if not volumes:
        return None
    pod_ctx = pod_spec.get("securityContext") or {}
    containers = [
        ct for ct in [*(pod_spec.get("containers") or []), *(pod_spec.get("initContainers") or [])]
        if any(m.get("name") in volumes for m in ct.get("volumeMounts") or [])
    ]
    # The app container is the first one that mounts the claim (sidecars come after it).
    own = (containers[0].get("securityContext") or {}) if containers else {}
    return {
        "runAsUser": own.get("runAsUser", pod_ctx.get("runAsUser")),
        "runAsGroup": own.get("runAsGroup", pod_ctx.get("runAsGroup")),
        "fsGroup": pod_ctx.get("fsGroup"),
        "supplementalGroups": list(pod_ctx.get("supplementalGroups") or []),
    }


def _describe(ctx: Mapping[str, Any]) -> str:
    parts = [f"uid {ctx.get('runAsUser', 'of the image')}"]
    if ctx.get("runAsGroup") is not None:
        parts.append(f"gid {ctx['runAsGroup']}")
    if ctx.get("fsGroup") is not None:
        parts.append(f"fsGroup {ctx['fsGroup']}")
    if ctx.get("supplementalGroups"):
        parts.append("groups " + ",".join(str(g) for g in ctx["supplementalGroups"]))
    return ", ".join(parts)


def choose(
    explicit: Mapping[str, Any] | None,
    claim: str | None,
    observed: Sequence[Observed],
) -> Identity:
    """The identity of a Job: see the module's table."""
    if explicit:
        return Identity(dict(explicit), f"{_describe(explicit)} (job.podSecurityContext)")
    default = agent_default()
    if not claim:
        return Identity(default, f"{_describe(default)} (the agent's user)")
    for seen in observed:
        ids = app_ids(seen.pod_spec, claim)
        if ids is None:
            continue
        groups: dict[str, Any] = {}
        if ids["fsGroup"] is not None:
            groups["fsGroup"] = ids["fsGroup"]
            groups["fsGroupChangePolicy"] = FS_GROUP_CHANGE_POLICY
        if ids["supplementalGroups"]:
            groups["supplementalGroups"] = ids["supplementalGroups"]
        uid = ids["runAsUser"]
        if uid is not None and uid != 0:
            ctx = {
                "runAsNonRoot": True,
                "runAsUser": uid,
                **({"runAsGroup": ids["runAsGroup"]} if ids["runAsGroup"] is not None else {}),
                **groups,
                "seccompProfile": dict(SECCOMP),
            }
            return Identity(ctx, f"{_describe(ctx)}, as {seen.source}, which mounts {claim}")
        ctx = {**default, **groups}
        who = "root" if uid == 0 else "its image's user (no runAsUser)"
        return Identity(
            ctx,
            f"{_describe(ctx)} (the agent's user with the groups of {seen.source})",
            warning=(
                f"{seen.source} runs as {who}; the Job does not run as root unless asked: "
                f"files only that user can read cannot be backed up or restored as uid "
                f"{AGENT_UID}. Set job.podSecurityContext.runAsUser to the files' owner, or, "
                "for root, runAsUser: 0 and runAsNonRoot: false (needs the namespace's Pod "
                "Security level 'baseline' or 'privileged')"
            ),
        )
    return Identity(
        default,
        f"{_describe(default)} (the agent's user: no pod or Deployment mounts {claim})",
    )
