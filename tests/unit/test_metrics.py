"""Metrics computed from object facts: series, counters, forgetting deleted objects."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from timesheet_backup import constants as c
from timesheet_backup.metrics import Store, StoreCollector, expected_interval

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def backup(name: str, phase: str | None, *, schedule: str = "nightly",
           components: str = "database,uploads", done: str = "2026-11-26T02:05:00Z",
           sizes: tuple[int, int] = (1000, 2000)) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if phase:
        status = {"phase": phase, "startTime": "2026-11-26T02:00:00Z"}
    if phase in ("Succeeded", "Failed"):
        status["completionTime"] = done
    if phase == "Succeeded":
        status["components"] = components
        status["artifacts"] = [
            {"component": "database", "key": "k1", "sizeBytes": sizes[0]},
            {"component": "uploads", "key": "k2", "sizeBytes": sizes[1]},
        ]
    labels = {c.LABEL_SCHEDULE: schedule} if schedule else {}
    return {"metadata": {"namespace": "app", "name": name, "labels": labels},
            "spec": {"components": ["database", "uploads"]}, "status": status}


def schedule(name: str = "nightly", cron: str = "0 2 * * *", suspend: bool = False,
             verification: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if verification:
        status["lastVerification"] = {"name": "v1", "time": "2026-11-26T03:00:00Z",
                                      "result": verification, "message": "m"}
    return {"metadata": {"namespace": "app", "name": name,
                         "creationTimestamp": "2026-11-01T00:00:00Z"},
            "spec": {"schedule": cron, "suspend": suspend,
                     "template": {"spec": {"components": ["database"]}}},
            "status": status}


def restore(name: str, phase: str, verification_of: str | None = None) -> dict[str, Any]:
    labels = ({c.LABEL_VERIFICATION: "true", c.LABEL_SCHEDULE: verification_of}
              if verification_of else {})
    return {"metadata": {"namespace": "app", "name": name, "labels": labels},
            "status": {"phase": phase, "completionTime": "2026-11-26T04:00:00Z"}}


def scrape(store: Store) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """What Prometheus would read, parsed back from the exposition format."""
    registry = CollectorRegistry()
    registry.register(StoreCollector(store))
    text = generate_latest(registry).decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def series(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
           **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_newest_success_and_failure_per_schedule_and_component() -> None:
    store = Store()
    store.observe_backup(("app", "b1"), backup("b1", "Succeeded", done="2026-11-24T02:05:00Z",
                                               sizes=(10, 20)))
    store.observe_backup(("app", "b2"), backup("b2", "Succeeded", sizes=(11, 21)))
    store.observe_backup(("app", "b3"), backup("b3", "Failed", done="2026-11-25T02:05:00Z"))
    store.observe_backup(("app", "b4"), backup("b4", "Running"))
    store.observe_backup(("app", "once"), backup("once", "Failed", schedule=""))
    got = scrape(store)
    for component, size in (("database", 11), ("uploads", 21)):
        key = {"namespace": "app", "schedule": "nightly", "component": component}
        assert series(got, "tsb_backup_last_success_timestamp_seconds", **key) == ts(
            "2026-11-26T02:05:00Z")
        assert series(got, "tsb_backup_last_failure_timestamp_seconds", **key) == ts(
            "2026-11-25T02:05:00Z")
        assert series(got, "tsb_backup_last_duration_seconds", **key) == 300
        assert series(got, "tsb_backup_last_size_bytes", **key) == size
    one_off = {"namespace": "app", "schedule": "", "component": "database"}
    assert series(got, "tsb_backup_last_failure_timestamp_seconds", **one_off) is not None
    assert series(got, "tsb_backup_last_success_timestamp_seconds", **one_off) is None


def test_suspicious_is_the_newest_success_of_each_schedule() -> None:
    store = Store()
    shrunk = backup("b2", "Succeeded")
    shrunk["status"]["conditions"] = [{"type": "Suspicious", "status": "True"}]
    store.observe_backup(("app", "b1"), backup("b1", "Succeeded", done="2026-11-24T02:05:00Z"))
    store.observe_backup(("app", "b2"), shrunk)
    store.observe_backup(("app", "w1"), backup("w1", "Succeeded", schedule="weekly"))
    store.observe_backup(("app", "once"), backup("once", "Succeeded", schedule=""))
    got = scrape(store)
    assert series(got, "tsb_backup_suspicious", namespace="app", schedule="nightly") == 1
    assert series(got, "tsb_backup_suspicious", namespace="app", schedule="weekly") == 0
    assert series(got, "tsb_backup_suspicious", namespace="app", schedule="") is None
    store.observe_backup(("app", "b3"), backup("b3", "Succeeded", done="2026-11-27T02:05:00Z"))
    assert series(scrape(store), "tsb_backup_suspicious", namespace="app",
                  schedule="nightly") == 0


def test_counters_count_transitions_seen_not_objects_listed_at_start() -> None:
    store = Store()
    # Listed at start-up already finished: not counted (whoever saw it finish counted it).
    store.observe_backup(("app", "old"), backup("old", "Succeeded"))
    store.observe_backup(("app", "b1"), backup("b1", None))
    store.observe_backup(("app", "b1"), backup("b1", "Running"))
    store.observe_backup(("app", "b1"), backup("b1", "Succeeded"))
    store.observe_backup(("app", "b1"), backup("b1", "Succeeded"))  # a later status edit
    store.observe_backup(("app", "b2"), backup("b2", "Running"))
    store.observe_backup(("app", "b2"), backup("b2", "Failed"))
    store.observe_restore(("app", "r1"), restore("r1", "Running"))
    store.observe_restore(("app", "r1"), restore("r1", "Failed"))
    store.observe_restore(("app", "v1"), restore("v1", "Running", verification_of="nightly"))
    store.observe_restore(("app", "v1"), restore("v1", "Succeeded", verification_of="nightly"))
    got = scrape(store)
    assert series(got, "tsb_backups_total", namespace="app", schedule="nightly",
                  result="Succeeded") == 1
    assert series(got, "tsb_backups_total", namespace="app", schedule="nightly",
                  result="Failed") == 1
    assert series(got, "tsb_restores_total", namespace="app", result="Failed") == 1
    assert series(got, "tsb_verifications_total", namespace="app", schedule="nightly",
                  result="Succeeded") == 1
    # A failed user Restore is an alertable object; a restore test is not (it has its own).
    assert series(got, "tsb_restore_failed", namespace="app", restore="r1") == 1
    assert not [k for k in got if k[0] == "tsb_restore_failed" and ("restore", "v1") in k[1]]


def test_schedule_series_and_forgetting_a_deleted_schedule() -> None:
    store = Store()
    store.observe_schedule(("app", "nightly"), schedule(verification="Failed"), NOW)
    store.observe_schedule(("app", "paused"), schedule("paused", suspend=True), NOW)
    store.observe_backup(("app", "b1"), backup("b1", "Running"))
    store.observe_backup(("app", "b1"), backup("b1", "Succeeded"))
    got = scrape(store)
    key = {"namespace": "app", "schedule": "nightly", "component": "database"}
    assert series(got, "tsb_backup_expected_interval_seconds", **key) == 86400
    assert series(got, "tsb_schedule_created_timestamp_seconds", **key) == ts(
        "2026-11-01T00:00:00Z")
    assert series(got, "tsb_verification_last_succeeded", namespace="app",
                  schedule="nightly") == 0
    paused = {"namespace": "app", "schedule": "paused", "component": "database"}
    assert series(got, "tsb_backup_expected_interval_seconds", **paused) is None

    store.forget(c.KIND_SCHEDULE, ("app", "nightly"))
    store.forget(c.KIND_BACKUP, ("app", "b1"))
    left = scrape(store)
    assert not [k for k in left if ("schedule", "nightly") in k[1]]


@pytest.mark.parametrize(("expr", "zone", "seconds"), [
    ("0 2 * * *", None, 86400),
    ("0 3 * * 0", None, 7 * 86400),
    ("*/15 * * * *", None, 900),
    ("0 2 * * 1-5", None, 3 * 86400),  # the weekend gap, so Monday does not page
    ("0 2 * * *", "Europe/Berlin", 86400),
])
def test_expected_interval_is_the_longest_gap(expr: str, zone: str | None,
                                              seconds: int) -> None:
    assert expected_interval(expr, zone, NOW) == seconds


def test_expected_interval_of_an_invalid_expression_is_none() -> None:
    assert expected_interval("not cron", None, NOW) is None
