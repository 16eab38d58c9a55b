"""What every handler shares: the clock, the configuration, Events and status writes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal, cast

import kopf

from timesheet_backup import kube, status
from timesheet_backup.settings import OperatorConfig

# Injected so tests of the pure parts can pin time; handlers always go through `now()`.
clock: Callable[[], datetime] = lambda: datetime.now(UTC)  # noqa: E731
_config: OperatorConfig | None = None


def now() -> datetime:
    return clock()


def set_config(config: OperatorConfig) -> None:
    global _config
    _config = config


def config() -> OperatorConfig:
    if _config is None:
        raise RuntimeError("operator configuration not loaded (startup handler did not run)")
    return _config


def write(patch: kopf.Patch, fields: Mapping[str, Any]) -> None:
    """Stage status fields into kopf's patch (applied to the status subresource)."""
    patch.setdefault("status", {}).update(fields)


def enter(
    body: Mapping[str, Any],
    patch: kopf.Patch,
    phase: str,
    reason: str,
    message: str,
    *,
    event: str | None = None,
    **fields: Any,
) -> None:
    """Move to `phase` with conditions; post an Event of type `event` (Normal/Warning) when
    the phase changes, so `kubectl describe` tells the story once per transition."""
    old_phase = (body.get("status") or {}).get("phase")
    write(patch, status.transition(body, phase, reason, message, now(), **fields))
    if event and old_phase != phase:
        post_event(body, event, reason, message)


def post_event(body: Mapping[str, Any], type_: Literal["Normal", "Warning"] | str, reason: str,
               message: str) -> None:
    """A Kubernetes Event on the object (kopf posts it asynchronously, with retries)."""
    kopf.event(cast(kopf.Body, body), type=type_, reason=reason, message=message[:1024])


def not_terminal(status: Mapping[str, Any], **_: Any) -> bool:
    """kopf `when=` filter: only objects still at work need their timer."""
    return status.get("phase") not in ("Succeeded", "Failed")


def database_target(database: Mapping[str, Any] | None) -> str | None:
    """The lock key of a database: host:port/name (one Job at a time per target)."""
    if not database or not database.get("host") or not database.get("name"):
        return None
    return f"{database['host']}:{database.get('port') or 5432}/{database['name']}"


def running_on(namespace: str, plural: str, target: str | None) -> str | None:
    """The name of a Backup or Restore (`plural`) Running against the same database target,
    if any: the lock that keeps one Job at a time per database."""
    if target is None:
        return None
    for obj in kube.list_custom(namespace, plural):
        st = obj.get("status") or {}
        if st.get("phase") == "Running" and st.get("databaseTarget") == target:
            return str(obj["metadata"]["name"])
    return None
