"""The per-database lock between Backups and Restores (actions.common.lock_database): the API
shows what runs; in-process claims cover decisions whose status patch has not landed yet."""

from __future__ import annotations

from typing import Any

import pytest

from timesheet_backup.actions import common

pytestmark = pytest.mark.unit

TARGET = "db:5432/timesheet"


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[dict[str, Any]]]:
    """What the API server lists, by plural (a stand-in for kube.list_custom)."""
    objects: dict[str, list[dict[str, Any]]] = {"backups": [], "restores": []}
    monkeypatch.setattr(common.kube, "list_custom", lambda ns, plural: objects[plural])
    monkeypatch.setattr(common, "_claims", {})
    return objects


def running(name: str, target: str = TARGET) -> dict[str, Any]:
    return {"metadata": {"name": name},
            "status": {"phase": "Running", "databaseTarget": target}}


def test_a_claim_blocks_the_other_kind_before_its_status_lands(
        api: dict[str, list[dict[str, Any]]]) -> None:
    api["backups"] += [{"metadata": {"name": "b1"}}, {"metadata": {"name": "b2"}}]
    assert common.lock_database("ns", TARGET, "backups", "b1", ("restores",)) is None
    blocker = common.lock_database("ns", TARGET, "restores", "r1", ("backups", "restores"))
    assert blocker == "Backup b1"
    # Backups do not wait for each other; a claim does not block its owner.
    assert common.lock_database("ns", TARGET, "backups", "b2", ("restores",)) is None
    assert common.lock_database("ns", TARGET, "backups", "b1", ("restores",)) is None


def test_a_claim_of_a_finished_or_deleted_object_does_not_block(
        api: dict[str, list[dict[str, Any]]]) -> None:
    api["backups"].append({"metadata": {"name": "b1"}})
    api["restores"].append({"metadata": {"name": "r1"}})
    assert common.lock_database("ns", TARGET, "backups", "b1", ("restores",)) is None
    api["backups"][0]["status"] = {"phase": "Succeeded"}
    assert common.lock_database("ns", TARGET, "restores", "r1", ("backups", "restores")) is None
    assert common.lock_database("ns", TARGET, "backups", "b2", ("restores",)) == "Restore r1"
    api["restores"].clear()  # r1 deleted before its status landed
    assert common.lock_database("ns", TARGET, "backups", "b2", ("restores",)) is None


def test_a_restore_blocks_backups_and_other_restores(
        api: dict[str, list[dict[str, Any]]]) -> None:
    api["restores"] += [{"metadata": {"name": "r1"}}, {"metadata": {"name": "r2"}}]
    assert common.lock_database("ns", TARGET, "restores", "r1", ("backups", "restores")) is None
    assert common.lock_database("ns", TARGET, "backups", "b1", ("restores",)) == "Restore r1"
    assert common.lock_database("ns", TARGET, "restores", "r2",
                                ("backups", "restores")) == "Restore r1"


def test_running_objects_block_and_a_restore_does_not_block_itself(
        api: dict[str, list[dict[str, Any]]]) -> None:
    api["restores"].append(running("r1"))
    assert common.lock_database("ns", TARGET, "backups", "b1", ("restores",)) == "Restore r1"
    assert common.lock_database("ns", TARGET, "restores", "r1", ("backups", "restores")) is None


def test_other_targets_and_namespaces_do_not_block(
        api: dict[str, list[dict[str, Any]]]) -> None:
    api["restores"].append(running("r1", target="other:5432/db"))
    assert common.lock_database("ns", TARGET, "backups", "b1", ("restores",)) is None
    assert common.lock_database("other-ns", TARGET, "restores", "r1",
                                ("backups", "restores")) is None
    assert common.lock_database("ns", None, "restores", "r2", ("backups",)) is None


def test_a_claim_expires_after_claim_seconds(
        api: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch) -> None:
    # b1 is still at work (no status yet), so only the claim's age can release the database.
    api["backups"].append({"metadata": {"name": "b1"}})
    clock = [1000.0]
    monkeypatch.setattr(common.time, "monotonic", lambda: clock[0])
    assert common.lock_database("ns", TARGET, "backups", "b1", ("restores",)) is None
    clock[0] += common.CLAIM_SECONDS - 1
    assert common.lock_database("ns", TARGET, "restores", "r1",
                                ("backups", "restores")) == "Backup b1"
    clock[0] += 1
    assert common.lock_database("ns", TARGET, "restores", "r1",
                                ("backups", "restores")) is None


def test_a_safety_backup_runs_inside_its_restores_hold(
        api: dict[str, list[dict[str, Any]]]) -> None:
    """The Restore r1 waits for its safety Backup: that Backup must not wait for r1 (running or
    only claimed), while any other Restore of the database still blocks it."""
    api["restores"].append({"metadata": {"name": "r1"}})
    assert common.lock_database("ns", TARGET, "restores", "r1", ("backups", "restores")) is None
    assert common.lock_database("ns", TARGET, "backups", "r1-safety", ("restores",),
                                on_behalf_of="r1") is None
    api["restores"][0] = running("r1")
    assert common.lock_database("ns", TARGET, "backups", "r1-safety", ("restores",),
                                on_behalf_of="r1") is None
    assert common.lock_database("ns", TARGET, "backups", "b1", ("restores",)) == "Restore r1"
    assert common.lock_database("ns", TARGET, "backups", "r2-safety", ("restores",),
                                on_behalf_of="r2") == "Restore r1"


def test_a_missing_secret_is_one_problem_whatever_number_of_keys_is_needed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def read(namespace: str, name: str, key: str) -> str:
        if name == "gone":
            raise LookupError(f"Secret {namespace}/{name} not found")
        if key == "absent":
            raise LookupError(f"Secret {namespace}/{name} has no key {key}")
        return "value"

    monkeypatch.setattr(common.kube, "read_secret_key", read)
    refs = [("gone", "AWS_ACCESS_KEY_ID"), ("gone", "AWS_SECRET_ACCESS_KEY"),
            ("here", "password"), ("here", "absent")]
    assert common.missing_secrets("ns", refs) == [
        "Secret ns/gone not found", "Secret ns/here has no key absent"]
