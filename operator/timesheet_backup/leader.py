"""Leader election decisions over a `coordination.k8s.io/v1` Lease (pure).

Only the replica holding the Lease runs the handlers. The rules are client-go's (what
controller-runtime managers use):

- a Lease with no holder, or held by this replica, can be taken at once;
- a Lease held by another replica can be taken only when its record has not changed for
  `leaseDurationSeconds`, measured on *this* replica's clock from when it first saw that
  record: the holder's `renewTime` comes from another machine's clock and is not compared
  with ours (clock skew between nodes cannot make a live leader look expired);
- taking a Lease from another holder counts a transition; renewing keeps `acquireTime`.

The API calls live in kube.py; the loop that drives them in election.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class Timing:
    """controller-runtime's defaults: a dead leader is replaced within about
    `lease_duration` + `retry_period`; a leader that cannot renew for `renew_deadline` stops
    acting, before anyone else may take over (renew_deadline < lease_duration)."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def check(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("leader election needs 0 < retryPeriod < renewDeadline < "
                             f"leaseDuration, got {self.retry_period}, {self.renew_deadline}, "
                             f"{self.lease_duration}")


@dataclass(frozen=True)
class Record:
    """The part of a Lease's spec the election reads."""

    holder: str | None
    duration_seconds: int | None
    acquire_time: str | None
    renew_time: str | None
    transitions: int

    @classmethod
    def of(cls, lease: Mapping[str, Any] | None) -> Record | None:
        if lease is None:
            return None
        spec = lease.get("spec") or {}
        return cls(
            holder=spec.get("holderIdentity") or None,
            duration_seconds=spec.get("leaseDurationSeconds"),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
        )


@dataclass(frozen=True)
class Observation:
    """A record and the local (monotonic) time at which it was first seen unchanged."""

    record: Record
    seen_at: float


def observe(previous: Observation | None, record: Record, now: float) -> Observation:
    """Keep the first-seen time while the record stays the same; restart it on any change
    (a renewal by the holder changes `renewTime`)."""
    if previous is not None and previous.record == record:
        return previous
    return Observation(record, now)


def may_take(observation: Observation, identity: str, now: float,
             default_duration: float) -> bool:
    """Whether `identity` may write itself into the Lease now."""
    record = observation.record
    if record.holder is None or record.holder == identity:
        return True
    duration = record.duration_seconds or default_duration
    return now - observation.seen_at >= duration


def micro_time(now: datetime) -> str:
    """A `MicroTime` as the API server writes it."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def claimed_spec(record: Record | None, identity: str, now: datetime,
                 timing: Timing) -> dict[str, Any]:
    """The Lease spec with `identity` as holder: a renewal of its own record, or a takeover
    (new acquireTime, one more transition when someone else held it)."""
    stamp = micro_time(now)
    spec: dict[str, Any] = {
        "holderIdentity": identity,
        "leaseDurationSeconds": max(1, round(timing.lease_duration)),
        "renewTime": stamp,
    }
    if record is not None and record.holder == identity and record.acquire_time:
        spec["acquireTime"] = record.acquire_time
        spec["leaseTransitions"] = record.transitions
    else:
        spec["acquireTime"] = stamp
        changed = record is not None and record.holder not in (None, identity)
        spec["leaseTransitions"] = (record.transitions if record else 0) + int(changed)
    return spec


def released_spec(record: Record) -> dict[str, Any]:
    """What a leader that stops cleanly writes, so a successor need not wait for expiry
    (client-go's ReleaseOnCancel: no holder, a one-second duration)."""
    spec: dict[str, Any] = {"holderIdentity": None, "leaseDurationSeconds": 1,
                            "leaseTransitions": record.transitions}
    if record.acquire_time:
        spec["acquireTime"] = record.acquire_time
    if record.renew_time:
        spec["renewTime"] = record.renew_time
    return spec
