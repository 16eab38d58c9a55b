"""What every handler and action shares: the clock, the configuration, Events, status
writes, the per-database lock and the Job's identity."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast

import kopf

from timesheet_backup import constants as c
from timesheet_backup import kube, status
from timesheet_backup.api import models
from timesheet_backup.api.fields import dump, json_name, parse
from timesheet_backup.decisions.backups import database_target as database_target
from timesheet_backup.jobs import identity
from timesheet_backup.settings import OperatorConfig
from timesheet_backup.status import TERMINAL_PHASES

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


def write(patch: kopf.Patch, fields: models.ObservedStatus, *,
          clear: Sequence[str] = ()) -> None:
    """The one status writer: stage `fields`, a typed status (models.BackupStatus,
    RestoreStatus, BackupScheduleStatus) of which only the fields set are written, into
    kopf's patch (applied to the status subresource as a merge patch when the handler
    returns; a field a strict schema does not know would be pruned silently, so nothing
    untyped goes in). `clear` names fields (Python names) that are removed when None (a null
    in the merge patch) instead of left as they are."""
    unknown = set(clear) - {f.name for f in dataclasses.fields(fields)}
    if unknown:
        raise ValueError(f"{type(fields).__name__} has no field {', '.join(sorted(unknown))}")
    staged = patch.setdefault("status", {})
    staged.update(dump(fields))
    staged.update({json_name(f): None for f in dataclasses.fields(fields)
                   if f.name in clear and getattr(fields, f.name) is None})


def enter(
    body: Mapping[str, Any],
    patch: kopf.Patch,
    phase: str,
    reason: str,
    message: str,
    fields: models.RunStatus,
    *,
    event: str | None = None,
    clear: Sequence[str] = (),
) -> None:
    """Move to `phase` with conditions (status.transition), writing `fields` (a Backup's or
    Restore's typed status: what else changes with the phase) in the same patch; post an
    Event of type `event` (Normal/Warning) when the phase changes, so `kubectl describe`
    tells the story once per transition."""
    old_phase = (body.get("status") or {}).get("phase")
    write(patch, parse(type(fields), status.transition(body, phase, reason, message, now()),
                       "status"))
    write(patch, fields, clear=clear)
    if event and old_phase != phase:
        post_event(body, event, reason, message)


def conditions(items: Sequence[Mapping[str, Any]]) -> list[models.Condition]:
    """Conditions as status.condition()/merge_conditions() shape them, typed for write()."""
    return [parse(models.Condition, item, "status.conditions") for item in items]


def insecure_settings(body: Mapping[str, Any], storage: models.StorageSpec | None
                      ) -> list[str] | None:
    """Say loudly, as a Warning Event, that the Job will not verify the object store's
    certificate; returns the lines for status.warnings (None: nothing to warn about)."""
    if storage is None or not storage.insecure_skip_tls_verify or storage.ca_bundle_secret_ref:
        return None
    message = (f"storage.insecureSkipTLSVerify is set: the TLS certificate of "
               f"{storage.endpoint or 'the S3 endpoint'} is NOT verified, so anyone on the "
               f"network path can read and alter backups and capture the S3 credentials "
               f"(labs only; use storage.caBundleSecretRef)")
    post_event(body, "Warning", "InsecureSkipTLSVerify", message)
    return [message]


def post_event(body: Mapping[str, Any], type_: Literal["Normal", "Warning"] | str, reason: str,
               message: str) -> None:
    """A Kubernetes Event on the object (kopf posts it asynchronously, with retries)."""
    kopf.event(cast(kopf.Body, body), type=type_, reason=reason, message=message[:1024])


def missing_secrets(namespace: str, refs: list[tuple[str, str]]) -> list[str]:
    """What is wrong with each (secret, key) a Job needs (jobs.pod.required_secrets), in
    words fit for status: the Secret or the key is missing."""
    problems = []
    for name, key in refs:
        try:
            kube.read_secret_key(namespace, name, key)
        except LookupError as exc:
            # A Secret that is not there is one problem, however many of its keys are needed.
            if str(exc) not in problems:
                problems.append(str(exc))
    return problems


def not_terminal(status: Mapping[str, Any], **_: Any) -> bool:
    """kopf `when=` filter: only objects still at work need their timer."""
    return status.get("phase") not in TERMINAL_PHASES


def running_on(namespace: str, plural: str, target: str | None,
               exclude: str | None = None) -> str | None:
    """The name of a Backup or Restore (`plural`) Running against the same database target,
    if any (other than `exclude`): the lock that keeps one Job at a time per database."""
    if target is None:
        return None
    return _running_in(kube.list_custom(namespace, plural), target, exclude)


def _running_in(objects: list[dict[str, Any]], target: str, exclude: str | None) -> str | None:
    for obj in objects:
        st = obj.get("status") or {}
        name = str(obj["metadata"]["name"])
        if st.get("phase") == "Running" and st.get("databaseTarget") == target \
                and name != exclude:
            return name
    return None


# A handler's decision to start work on a database reaches the API server only when kopf
# applies its status patch, after the handler returned; handlers run concurrently (kopf's
# thread pool), so a Backup and a Restore could both find the database free in the same tick.
# The check and a claim held in this process until the patch has surely landed are made under
# one lock. One process acts at a time (leader election), so in-process claims suffice.
CLAIM_SECONDS = 30.0
_claims_lock = threading.Lock()
_claims: dict[tuple[str, str], list[tuple[str, str, float]]] = {}
_KINDS = {c.PLURAL_BACKUP: c.KIND_BACKUP, c.PLURAL_RESTORE: c.KIND_RESTORE}


def lock_database(namespace: str, target: str | None, plural: str, name: str,
                  blockers: tuple[str, ...], on_behalf_of: str | None = None) -> str | None:
    """Claim the database `target` for the Backup or Restore `plural`/`name`, unless one of
    the kinds in `blockers` runs on it or claimed it: then return that one ("Restore x").
    `on_behalf_of`: the Restore a safety Backup works for, which holds the database for it
    (and waits for it: blocking on it would wait forever)."""
    if target is None:
        return None
    with _claims_lock:
        moment = time.monotonic()
        claims = [cl for cl in _claims.get((namespace, target), []) if cl[2] > moment]
        for blocker in blockers:
            objects = kube.list_custom(namespace, blocker)
            exclude = name if blocker == plural else None
            if blocker == c.PLURAL_RESTORE and on_behalf_of:
                exclude = on_behalf_of
            found = _running_in(objects, target, exclude)
            if found:
                return f"{_KINDS[blocker]} {found}"
            # A claim counts while its object is still at work: one that already finished
            # (or is gone) releases the database at once, not when the claim expires.
            at_work = {str(o["metadata"]["name"]) for o in objects
                       if (o.get("status") or {}).get("phase") not in TERMINAL_PHASES}
            for claim_plural, claim_name, _expiry in claims:
                if claim_plural == blocker and claim_name in at_work \
                        and (claim_plural, claim_name) != (plural, name) \
                        and (claim_plural, claim_name) != (c.PLURAL_RESTORE, on_behalf_of):
                    return f"{_KINDS[claim_plural]} {claim_name}"
        claims = [cl for cl in claims if (cl[0], cl[1]) != (plural, name)]
        _claims[(namespace, target)] = [*claims, (plural, name, moment + CLAIM_SECONDS)]
        return None


@dataclass(frozen=True)
class ClaimUsers:
    """Who uses the uploads claim: the app's pods and pod templates (for the Job's identity)
    and the node a running one is on (a ReadWriteOnce volume can only be attached there)."""

    observed: list[identity.Observed]
    node: str | None


def claim_users(namespace: str, claim: str | None) -> ClaimUsers:
    if not claim:
        return ClaimUsers([], None)
    observed: list[identity.Observed] = []
    node = None
    for pod in kube.pods_using_claim(namespace, claim):
        labels = (pod.get("metadata") or {}).get("labels") or {}
        phase = (pod.get("status") or {}).get("phase")
        if labels.get(c.LABEL_MANAGED_BY) == c.MANAGED_BY or phase not in ("Running", "Pending"):
            continue  # our own agent pods, and pods that already ended
        observed.append(identity.Observed(f"pod {pod['metadata']['name']}", pod.get("spec") or {}))
        node = node or (pod.get("spec") or {}).get("nodeName")
    for deployment in kube.deployments_using_claim(namespace, claim):
        template = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
        observed.append(identity.Observed(f"Deployment {deployment['metadata']['name']}",
                                          template))
    return ClaimUsers(observed, str(node) if node else None)


def job_identity(body: Mapping[str, Any], explicit: Mapping[str, Any] | None,
                 claim: str | None, users: ClaimUsers) -> identity.Identity:
    """Decide the Job's identity and say it in an Event (a warning when it cannot be the
    app's own)."""
    chosen = identity.choose(explicit, claim, users.observed)
    if chosen.warning:
        post_event(body, "Warning", "IdentityNotApp", chosen.warning)
    elif claim:
        post_event(body, "Normal", "Identity", f"the Job runs as {chosen.description}")
    return chosen
