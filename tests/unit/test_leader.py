"""Leader election decisions (timesheet_backup.leader) and their settings."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from timesheet_backup import leader, settings
from timesheet_backup.api.fields import SpecError
from timesheet_backup.operator_cli import DEFAULT_PROBE_URL

pytestmark = pytest.mark.unit

TIMING = leader.Timing(lease_duration=15, renew_deadline=10, retry_period=2)
WALL = datetime(2026, 11, 26, 8, 0, 0, 123456, tzinfo=UTC)


def record(holder: str | None, renew: str = "t1", transitions: int = 0,
           duration: int | None = 15) -> leader.Record:
    return leader.Record(holder=holder, duration_seconds=duration, acquire_time="t0",
                         renew_time=renew, transitions=transitions)


def test_record_of_a_lease() -> None:
    lease = {"spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 15,
                      "acquireTime": "a", "renewTime": "r", "leaseTransitions": 3}}
    assert leader.Record.of(lease) == leader.Record("pod-a", 15, "a", "r", 3)
    assert leader.Record.of({"spec": {"holderIdentity": ""}}) == \
        leader.Record(None, None, None, None, 0)
    assert leader.Record.of(None) is None


@pytest.mark.parametrize("holder", [None, "me"])
def test_free_or_own_lease_is_taken_at_once(holder: str | None) -> None:
    seen = leader.observe(None, record(holder), now=100.0)
    assert leader.may_take(seen, "me", 100.0, 15)


def test_another_holder_is_waited_out_on_the_local_clock() -> None:
    seen = leader.observe(None, record("other"), now=100.0)
    assert not leader.may_take(seen, "me", 114.9, 15)
    assert leader.may_take(seen, "me", 115.0, 15)


def test_a_renewal_restarts_the_wait() -> None:
    seen = leader.observe(None, record("other", renew="t1"), now=100.0)
    same = leader.observe(seen, record("other", renew="t1"), now=110.0)
    assert same is seen  # unchanged record: the first-seen time stays
    renewed = leader.observe(same, record("other", renew="t2"), now=112.0)
    assert renewed.seen_at == 112.0
    assert not leader.may_take(renewed, "me", 120.0, 15)
    assert leader.may_take(renewed, "me", 127.0, 15)


def test_the_holders_duration_wins_over_ours() -> None:
    seen = leader.observe(None, record("other", duration=60), now=0.0)
    assert not leader.may_take(seen, "me", 30.0, 15)
    missing = leader.observe(None, record("other", duration=None), now=0.0)
    assert leader.may_take(missing, "me", 15.0, 15)


def test_claim_of_a_new_lease() -> None:
    spec = leader.claimed_spec(None, "me", WALL, TIMING)
    assert spec == {"holderIdentity": "me", "leaseDurationSeconds": 15,
                    "acquireTime": "2026-11-26T08:00:00.123456Z",
                    "renewTime": "2026-11-26T08:00:00.123456Z", "leaseTransitions": 0}


def test_renewal_keeps_acquire_time_and_transitions() -> None:
    spec = leader.claimed_spec(record("me", transitions=4), "me", WALL, TIMING)
    assert spec["acquireTime"] == "t0" and spec["leaseTransitions"] == 4
    assert spec["renewTime"] == "2026-11-26T08:00:00.123456Z"


def test_takeover_counts_a_transition() -> None:
    spec = leader.claimed_spec(record("other", transitions=4), "me", WALL, TIMING)
    assert spec["holderIdentity"] == "me"
    assert spec["acquireTime"] == spec["renewTime"] == "2026-11-26T08:00:00.123456Z"
    assert spec["leaseTransitions"] == 5
    released = leader.claimed_spec(record(None, transitions=4), "me", WALL, TIMING)
    assert released["leaseTransitions"] == 4


def test_release_clears_the_holder() -> None:
    spec = leader.released_spec(record("me", transitions=2))
    assert spec["holderIdentity"] is None and spec["leaseDurationSeconds"] == 1
    assert spec["leaseTransitions"] == 2 and spec["acquireTime"] == "t0"


@pytest.mark.parametrize("values", [(15, 10, 2), (3, 2, 0.5)])
def test_timing_accepts_ordered_values(values: tuple[float, float, float]) -> None:
    leader.Timing(*values).check()


@pytest.mark.parametrize("values", [(10, 10, 2), (15, 10, 0), (15, 20, 2), (15, 10, 12)])
def test_timing_refuses_unordered_values(values: tuple[float, float, float]) -> None:
    with pytest.raises(ValueError, match="leaseDuration"):
        leader.Timing(*values).check()


def test_settings_from_the_environment() -> None:
    election = settings.leader_election({
        "TSB_LEADER_ELECTION": "true", "POD_NAMESPACE": "tsb-system", "POD_NAME": "op-1",
        "TSB_LEADER_ELECTION_LEASE": "tsb", "TSB_LEASE_DURATION": "30"})
    assert election == settings.LeaderElection(
        enabled=True, namespace="tsb-system", lease_name="tsb", identity="op-1",
        lease_duration=30.0, renew_deadline=10.0, retry_period=2.0)
    off = settings.leader_election({})
    assert not off.enabled and off.lease_name == settings.DEFAULT_LEASE_NAME
    assert settings.leader_election({"POD_NAMESPACE": "x"}, enabled=True).enabled


@pytest.mark.parametrize("env", [
    {"TSB_LEADER_ELECTION": "true"},  # no namespace for the Lease
    {"TSB_LEADER_ELECTION": "maybe", "POD_NAMESPACE": "x"},
    {"TSB_LEADER_ELECTION": "true", "POD_NAMESPACE": "x", "TSB_RETRY_PERIOD": "soon"},
])
def test_bad_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(SpecError):
        settings.leader_election(env)


def test_probe_listens_on_every_address_of_the_pod() -> None:
    assert DEFAULT_PROBE_URL == "http://0.0.0.0:8081/healthz"
