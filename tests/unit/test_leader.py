"""Leader election: its decisions (timesheet_backup.leader), its settings, and the renewal
loop (timesheet_backup.election) losing leadership, with a fake Lease API and clock."""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from timesheet_backup import election, leader, settings
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


# --- renew-loss: the leader exits (election.Elector with a fake Lease API and clock) -------


class FakeLeases:
    """An in-memory Lease API: `down` makes every call fail like an unreachable API server."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False
        self.calls = 0
        self.changed = threading.Condition()

    def _call(self) -> None:
        with self.changed:
            self.calls += 1
            self.changed.notify_all()
        if self.down:
            raise ConnectionError("API server unreachable")

    def wait_calls(self, more: int) -> None:
        """Block until the renewal loop made `more` further calls."""
        with self.changed:
            target = self.calls + more
            if not self.changed.wait_for(lambda: self.calls >= target, timeout=10):
                raise AssertionError("the renewal loop stopped calling the API")

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._call()
        return copy.deepcopy(self.lease)

    def _write(self, spec: Mapping[str, Any]) -> None:
        self.version += 1
        self.lease = {"metadata": {"resourceVersion": str(self.version)}, "spec": dict(spec)}

    def create_lease(self, namespace: str, name: str, spec: Mapping[str, Any]) -> bool:
        self._call()
        if self.lease is not None:
            return False
        self._write(spec)
        return True

    def replace_lease(self, namespace: str, name: str, resource_version: str,
                      spec: Mapping[str, Any]) -> bool:
        self._call()
        if self.lease is None or self.lease["metadata"]["resourceVersion"] != resource_version:
            return False
        self._write(spec)
        return True

    def steal(self, holder: str) -> None:
        assert self.lease is not None
        self._write({**self.lease["spec"], "holderIdentity": holder})


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# Real seconds only pace the loop (10 ms); every deadline is judged on the fake clock.
FAST = leader.Timing(lease_duration=15, renew_deadline=10, retry_period=0.01)


def leading(leases: FakeLeases, clock: FakeClock) -> tuple[election.Elector, list[str],
                                                            threading.Event]:
    elector = election.Elector("tsb-system", "tsb", "me", FAST, clock=clock, leases=leases)
    elector.acquire()
    assert leases.lease is not None and leases.lease["spec"]["holderIdentity"] == "me"
    lost: list[str] = []
    fired = threading.Event()

    def on_lost(reason: str) -> None:
        lost.append(reason)
        fired.set()

    elector.keep_renewing(on_lost=on_lost)
    return elector, lost, fired


def test_renewals_past_the_renew_deadline_lose_leadership() -> None:
    leases, clock = FakeLeases(), FakeClock()
    elector, lost, fired = leading(leases, clock)
    try:
        leases.wait_calls(6)  # healthy renewals
        leases.down = True
        leases.wait_calls(2)  # any renewal in flight has finished
        clock.now += 9.9  # failing, but still within renewDeadline (10 s)
        leases.wait_calls(5)
        assert not fired.is_set()
        clock.now += 0.2  # 10.1 s since the last renewal
        assert fired.wait(10), "on_lost never fired"
        assert lost == ["could not renew the Lease for 10s"]
    finally:
        elector.release()


def test_a_failure_shorter_than_the_deadline_is_survived() -> None:
    leases, clock = FakeLeases(), FakeClock()
    elector, lost, fired = leading(leases, clock)
    try:
        leases.down = True
        clock.now += 8
        leases.wait_calls(5)
        leases.down = False  # back before the deadline: the next renewal resets it
        leases.wait_calls(6)
        clock.now += 8  # 16 s after the first renewal, 8 s after the last one
        leases.wait_calls(6)
        assert not fired.is_set() and lost == []
    finally:
        elector.release()


def test_another_holder_in_the_lease_loses_leadership_at_once() -> None:
    leases, clock = FakeLeases(), FakeClock()
    elector, lost, fired = leading(leases, clock)
    try:
        leases.steal("other")  # no time passes on the fake clock
        assert fired.wait(10), "on_lost never fired"
        assert lost == ["the Lease is now held by other"]
    finally:
        elector.release()


def test_exit_on_lost_ends_the_process_with_status_1(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    exits: list[int] = []
    monkeypatch.setattr(os, "_exit", exits.append)
    monkeypatch.setattr(logging, "shutdown", lambda: None)  # pytest's handlers stay
    with caplog.at_level(logging.ERROR, logger="timesheet_backup.election"):
        election.exit_on_lost("could not renew the Lease for 11s")
    assert exits == [1]
    assert "lost leadership: could not renew the Lease for 11s; exiting" in caplog.text


# The whole chain in a real process: the renewal thread's exit_on_lost ends the process
# with status 1 while the main thread is busy (kopf would be running there).
RENEW_LOSS_SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
from timesheet_backup import election
from tests.unit.test_leader import FAST, FakeClock, FakeLeases

leases, clock = FakeLeases(), FakeClock()
elector = election.Elector("ns", "tsb", "me", FAST, clock=clock, leases=leases)
elector.acquire()
elector.keep_renewing(on_lost=election.exit_on_lost)
leases.down = True
clock.now += 11
time.sleep(30)
print("still leading")
"""


def test_renew_loss_exits_the_leader_process() -> None:
    script = RENEW_LOSS_SCRIPT.format(tests=str(Path(__file__).resolve().parents[2]))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 1, done
    assert "still leading" not in done.stdout
    assert "lost leadership: could not renew the Lease for 11s; exiting" in done.stderr
