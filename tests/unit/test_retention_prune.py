"""Retention in few requests (issue 13): which Backups carry the finalizer
(decisions/backups.py owns_objects), the bounded pass, how each pruned Backup goes and the
pass's one Event (decisions/schedules.py), and the requests a pass makes, counted at the IO
boundary (actions/schedules.py prune with kube, bucket and Events faked)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from botocore.exceptions import ClientError

from timesheet_backup import constants as c
from timesheet_backup.actions import schedules as act
from timesheet_backup.api import models
from timesheet_backup.decisions.backups import owns_objects
from timesheet_backup.decisions.schedules import (
    PRUNE_BATCH,
    RetentionPass,
    another_pass,
    bucket_groups,
    prune_report,
    prune_targets,
    retention_pass,
)
from timesheet_backup.errors import StorageError
from timesheet_backup.storage.s3 import S3Settings, S3Store

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)
STORAGE = {"bucket": "b", "credentialsSecretRef": {"name": "writer"}}
DELETER = {**STORAGE, "deleteCredentialsSecretRef": {"name": "deleter"}}


def backup(name: str, hours_ago: int = 1, *, policy: str = "Delete",
           storage: dict[str, Any] | None = None, started: bool = True,
           finalizer: bool = True, locked_until: str | None = None,
           annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "resourceVersion": "7",
                            "creationTimestamp": "2026-11-01T00:00:00Z"}
    if finalizer:
        meta["finalizers"] = ["other/keep", c.FINALIZER]
    if annotations:
        meta["annotations"] = annotations
    st: dict[str, Any] = {"phase": "Succeeded",
                          "completionTime": (NOW - timedelta(hours=hours_ago)).isoformat()}
    if started:
        st["manifestKey"] = f"p/ns/{name}/manifest.json"
        st["resolved"] = {"storage": storage or STORAGE, "deletionPolicy": policy,
                          "components": ["database"]}
    if locked_until:
        st["lockedUntil"] = locked_until
    return {"metadata": meta, "status": st}


# --- which Backups carry the finalizer ----------------------------------------------------


@pytest.mark.parametrize(("body", "owns"), [
    (backup("a"), True),
    (backup("a", policy="Retain"), False),
    (backup("a", started=False), False),  # never started: nothing in the bucket
    (backup("a", annotations={c.ANNOTATION_OBJECTS_DELETED: "true"}), False),
    ({"metadata": {"name": "a"}, "status": {"manifestKey": "k", "resolved": {
        "deletionPolicy": "Delete"}}}, False),  # no storage
    ({"metadata": {"name": "a"}}, False),
])
def test_only_a_backup_that_owns_objects_needs_the_finalizer(body: dict[str, Any],
                                                             owns: bool) -> None:
    assert owns_objects(body) is owns


# --- the bounded pass ---------------------------------------------------------------------


def test_a_backlog_goes_in_bounded_passes_oldest_first() -> None:
    many = [backup(f"db-{i:04d}", hours_ago=i) for i in range(1, PRUNE_BATCH + 151)]
    result = retention_pass("db", many, [], models.RetentionSpec(keep_last=1), NOW,
                            ZoneInfo("UTC"), None)
    assert len(result.prune) == PRUNE_BATCH and result.deferred == 149
    assert result.prune[0] == f"db-{PRUNE_BATCH + 150:04d}"  # the oldest
    assert result.event is not None and result.event.endswith("; 149 more in the next passes")


def test_a_pass_within_the_bound_defers_nothing() -> None:
    result = retention_pass("db", [backup("a", 2), backup("b", 1)], [],
                            models.RetentionSpec(keep_last=1), NOW, ZoneInfo("UTC"), None)
    assert result.prune == ["a"] and result.deferred == 0
    assert result.event is not None and "next passes" not in result.event


# --- how each pruned Backup goes ----------------------------------------------------------


def test_prune_targets() -> None:
    backups = [backup("del"), backup("ret", policy="Retain", finalizer=False),
               backup("new", started=False, finalizer=False),
               backup("old-lock", locked_until="2026-11-01T00:00:00Z"),
               backup("old-retain", policy="Retain")]
    got = {t.name: t for t in prune_targets(backups, [b["metadata"]["name"] for b in backups])}
    assert (got["del"].manifest_key, got["del"].finalizer, got["del"].all_versions) == \
        ("p/ns/del/manifest.json", True, False)
    assert got["del"].storage is not None and got["del"].storage.bucket == "b"
    assert got["del"].resource_version == "7"
    assert (got["ret"].storage, got["ret"].manifest_key, got["ret"].finalizer) == \
        (None, None, False)
    assert (got["new"].storage, got["new"].finalizer) == (None, False)
    assert got["old-lock"].all_versions  # the lock's date passed: every version goes
    # A Retain Backup from before the upgrade still carries the finalizer: released too.
    assert got["old-retain"].finalizer and got["old-retain"].manifest_key is None


def test_bucket_groups_split_by_bucket_and_delete_credentials() -> None:
    backups = [backup("a"), backup("b", storage=DELETER), backup("c"),
               backup("d", policy="Retain")]
    groups = bucket_groups(prune_targets(backups, ["a", "b", "c", "d"]))
    assert [[t.name for t in g] for g in groups] == [["a", "c"], ["b"]]


# --- the pass's one Event -----------------------------------------------------------------


def decided(names: list[str], deferred: int = 0) -> RetentionPass:
    return RetentionPass(prune=names, event="retention deleted ...", deferred=deferred,
                         status={"pruned": [{"name": n, "reason": "keepLast"} for n in names]})


def test_nothing_pruned_no_event() -> None:
    assert prune_report(RetentionPass(), {}) is None


def test_all_pruned_the_normal_event() -> None:
    assert prune_report(decided(["a", "b"]), {}) == ("Normal", "retention deleted ...")


def test_failures_are_named_in_a_warning_and_in_the_status() -> None:
    d = decided(["a", "b", "c"], deferred=4)
    report = prune_report(d, {"b": "AccessDenied"})
    assert report == ("Warning", "retention deleted 2 of 3 Backup(s); 1 could not be deleted "
                                 "and stay: b (AccessDenied); 4 more in the next passes")
    assert d.status is not None
    assert d.status["pruned"][1] == {"name": "b", "reason":
                                     "not deleted, retried next pass: AccessDenied"}
    assert d.status["pruned"][0]["reason"] == "keepLast"


def test_many_failures_are_cut_short() -> None:
    names = [f"b{i}" for i in range(8)]
    report = prune_report(decided(names), {n: "why" for n in names})
    assert report is not None and report[1].endswith(" ...") and report[1].count("(why)") == 5


# --- the requests of a pass ---------------------------------------------------------------


class Recorder:
    """The IO boundary of a pruning pass, counting its calls."""

    def __init__(self, refused: dict[str, str] | None = None) -> None:
        self.calls: dict[str, int] = {}
        self.patched: list[tuple[str, dict[str, Any]]] = []
        self.deleted: list[str] = []
        self.events: list[tuple[str, str]] = []
        self.stores: list[str | None] = []
        self.batches: list[list[str]] = []
        self.refused = refused or {}

    def count(self, what: str) -> None:
        self.calls[what] = self.calls.get(what, 0) + 1

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def open_store(storage: models.StorageSpec, namespace: str, *,
                       deleting: bool = False) -> Any:
            assert deleting  # deletes use the delete credentials when set
            self.count("open_store")
            ref = storage.delete_credentials_secret_ref or storage.credentials_secret_ref
            self.stores.append(ref.name if ref else None)
            return object()

        def delete_many(store: Any, keys: list[str], *, all_versions: Any = ()
                        ) -> dict[str, str]:
            self.count("delete_many_backups")
            self.batches.append(list(keys))
            return {k: v for k, v in self.refused.items() if k in keys}

        def patch(namespace: str, plural: str, name: str, metadata: dict[str, Any]) -> bool:
            self.count("patch")
            self.patched.append((name, metadata))
            return True

        def delete(namespace: str, plural: str, name: str) -> None:
            self.count("delete")
            self.deleted.append(name)

        monkeypatch.setattr(act.bucket, "open_store", open_store)
        monkeypatch.setattr(act.bucket, "delete_many_backups", delete_many)
        monkeypatch.setattr(act.kube, "patch_custom_metadata", patch)
        monkeypatch.setattr(act.kube, "delete_custom", delete)
        monkeypatch.setattr(act, "post_event", lambda body, kind, reason, message:
                            self.events.append((kind, message)))


SCHEDULE = {"metadata": {"name": "db", "namespace": "ns"}}


def test_a_pass_over_thousands_makes_few_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder()
    rec.install(monkeypatch)
    # Oldest first: 100 never started, 300 Delete and the rest Retain (no finalizer) fill
    # the pass; 2,000 newer Delete Backups wait for the next passes.
    backups = ([backup(f"n{i}", 9000 + i, started=False, finalizer=False) for i in range(100)]
               + [backup(f"d{i}", 5000 + i) for i in range(300)]
               + [backup(f"r{i}", 3000 + i, policy="Retain", finalizer=False)
                  for i in range(PRUNE_BATCH - 400)]
               + [backup(f"later{i}", 100 + i) for i in range(2000)]
               + [backup("newest", 1)])
    result = retention_pass("db", backups, [], models.RetentionSpec(keep_last=1), NOW,
                            ZoneInfo("UTC"), None)
    act.prune(SCHEDULE, result, backups)
    assert len(result.prune) == PRUNE_BATCH and result.deferred == 2000
    # One client and one batched delete for the bucket, one write to release each Backup
    # with a finalizer, one DELETE each, one Event in all.
    assert rec.calls["open_store"] == rec.calls["delete_many_backups"] == 1
    assert len(rec.batches[0]) == 300
    assert rec.calls["patch"] == 300
    # (PRUNE_WORKERS at a time: in any order)
    assert rec.calls["delete"] == PRUNE_BATCH and sorted(rec.deleted) == sorted(result.prune)
    assert len(rec.events) == 1 and rec.events[0][0] == "Normal"


def test_objects_first_then_the_backups_released_and_deleted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder()
    rec.install(monkeypatch)
    backups = [backup("a", 5), backup("b", 4, storage=DELETER), backup("c", 3),
               backup("r", 2, policy="Retain", finalizer=False), backup("keep", 1)]
    result = retention_pass("db", backups, [], models.RetentionSpec(keep_last=1), NOW,
                            ZoneInfo("UTC"), None)
    act.prune(SCHEDULE, result, backups)
    assert rec.batches == [["p/ns/a/manifest.json", "p/ns/c/manifest.json"],
                           ["p/ns/b/manifest.json"]]
    assert rec.stores == ["writer", "deleter"]  # deleteCredentialsSecretRef when set
    assert sorted(n for n, _ in rec.patched) == ["a", "b", "c"]
    assert dict(rec.patched)["a"] == {"annotations": {c.ANNOTATION_OBJECTS_DELETED: "true"},
                                 "finalizers": ["other/keep"], "resourceVersion": "7"}
    assert sorted(rec.deleted) == ["a", "b", "c", "r"]
    assert rec.events == [("Normal", result.event)]


def test_a_backup_whose_objects_stay_is_kept_and_reported(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder(refused={"p/ns/b/manifest.json": "could not delete s3://b/...: AccessDenied"})
    rec.install(monkeypatch)
    backups = [backup("a", 3), backup("b", 2), backup("keep", 1)]
    result = retention_pass("db", backups, [], models.RetentionSpec(keep_last=1), NOW,
                            ZoneInfo("UTC"), None)
    act.prune(SCHEDULE, result, backups)
    assert rec.deleted == ["a"] and [n for n, _ in rec.patched] == ["a"]
    assert len(rec.events) == 1 and rec.events[0][0] == "Warning"
    assert "b (could not delete s3://b/...: AccessDenied)" in rec.events[0][1]
    assert result.status is not None
    assert result.status["pruned"][1]["reason"].startswith("not deleted, retried next pass")


def test_a_missing_delete_secret_keeps_its_group(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder()
    rec.install(monkeypatch)

    real = act.bucket.open_store

    def no_secret(storage: models.StorageSpec, namespace: str, *,
                  deleting: bool = False) -> Any:
        if storage.delete_credentials_secret_ref is not None:
            raise LookupError("Secret ns/deleter not found")
        return real(storage, namespace, deleting=deleting)

    monkeypatch.setattr(act.bucket, "open_store", no_secret)
    backups = [backup("a", 3, storage=DELETER), backup("b", 2), backup("keep", 1)]
    result = retention_pass("db", backups, [], models.RetentionSpec(keep_last=1), NOW,
                            ZoneInfo("UTC"), None)
    act.prune(SCHEDULE, result, backups)
    assert rec.deleted == ["b"]
    assert "a (Secret ns/deleter not found)" in rec.events[0][1]


def test_a_backup_changed_since_the_list_is_left_to_the_next_pass(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder()
    rec.install(monkeypatch)
    monkeypatch.setattr(act.kube, "patch_custom_metadata", lambda *a: False)
    backups = [backup("a", 2), backup("keep", 1)]
    result = retention_pass("db", backups, [], models.RetentionSpec(keep_last=1), NOW,
                            ZoneInfo("UTC"), None)
    act.prune(SCHEDULE, result, backups)
    assert rec.deleted == []
    assert rec.events == []  # no failure: the next pass takes it


def test_a_pass_where_some_changed_says_how_many_went() -> None:
    assert prune_report(decided(["a", "b", "c"]), {}, ["b"]) == \
        ("Normal", "retention deleted 2 Backup(s); 1 more in the next passes")
    assert prune_report(decided(["a", "b", "c"], deferred=2), {"a": "why"}, ["b"]) == \
        ("Warning", "retention deleted 1 of 2 Backup(s); 1 could not be deleted and stay: "
                    "a (why); 3 more in the next passes")


# --- a store that refuses a whole batch for one locked key --------------------------------


class RefusingClient:
    """DeleteObjects refused as a whole (versitygw with a locked key); DeleteObject per key
    refused for `locked` (or for every key: no right to delete)."""

    def __init__(self, locked: set[str] | None) -> None:
        self.locked = locked
        self.single: list[str] = []

    def delete_objects(self, **_: Any) -> dict[str, Any]:
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "locked"}},
                          "DeleteObjects")

    def delete_object(self, Key: str, **_: Any) -> None:
        self.single.append(Key)
        if self.locked is None or Key in self.locked:
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "locked"}},
                              "DeleteObject")


def test_a_refused_batch_is_retried_key_by_key() -> None:
    client = RefusingClient({"k1"})
    store = S3Store(S3Settings(bucket="b"), client=client)  # type: ignore[arg-type]
    assert store.delete_each([{"Key": f"k{i}"} for i in range(3)]) == \
        {"k1": "AccessDenied: locked"}
    assert client.single == ["k0", "k1", "k2"]


def test_a_batch_refused_key_after_key_is_the_credentials() -> None:
    client = RefusingClient(None)
    store = S3Store(S3Settings(bucket="b"), client=client)  # type: ignore[arg-type]
    with pytest.raises(StorageError, match="access denied"):
        store.delete_each([{"Key": f"k{i}"} for i in range(50)])
    assert len(client.single) == S3Store.ONE_BY_ONE_PROBE


def test_a_small_batch_refused_key_after_key_is_the_credentials_too() -> None:
    client = RefusingClient(None)
    store = S3Store(S3Settings(bucket="b"), client=client)  # type: ignore[arg-type]
    with pytest.raises(StorageError, match="access denied"):
        store.delete_each([{"Key": "k0"}, {"Key": "k1"}])
    assert client.single == ["k0", "k1"]


@pytest.mark.parametrize(("deferred", "clean", "elapsed", "again"), [
    (2000, True, 5.0, True),      # a backlog: the next pass at once
    (0, True, 5.0, False),        # nothing left
    (2000, False, 5.0, False),    # a failure or a change: the next tick, not a tight loop
    (2000, True, 30.0, False),    # the tick spent its share: the next tick goes on
])
def test_a_backlog_goes_on_in_the_same_tick(deferred: int, clean: bool, elapsed: float,
                                            again: bool) -> None:
    decided = RetentionPass(prune=["a"], deferred=deferred)
    assert another_pass(decided, clean, elapsed) is again


def test_prune_says_whether_every_backup_went(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder()
    rec.install(monkeypatch)
    backups = [backup("a", 3), backup("b", 2), backup("keep", 1)]
    result = retention_pass("db", backups, [], models.RetentionSpec(keep_last=1), NOW,
                            ZoneInfo("UTC"), None)
    assert act.prune(SCHEDULE, result, backups) is True
    rec = Recorder(refused={"p/ns/b/manifest.json": "AccessDenied"})
    rec.install(monkeypatch)
    assert act.prune(SCHEDULE, result, backups) is False
