"""Retention's batched delete against a real S3 server (versitygw, tests/support/s3server.py):
the objects of many backups go in few DeleteObjects requests (counted at the client, up to
1,000 keys each), manifests first; a key the store refuses (Object Lock) is reported per key,
its backup is reported as not deleted and stays whole, the others go."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.support.s3server import S3Server
from timesheet_backup.actions.bucket import delete_many_backups
from timesheet_backup.storage.s3 import S3Settings, S3Store

PREFIX = "backups/ns"


def counted_store(server: S3Server, bucket: str) -> tuple[S3Store, dict[str, int]]:
    """A store whose client counts its requests by operation (botocore's event hooks)."""
    client = server.client(retries=0)
    calls: dict[str, int] = {}

    def count(model: Any, **_: Any) -> None:
        calls[model.name] = calls.get(model.name, 0) + 1

    client.meta.events.register("before-call.s3", count)
    store = S3Store(S3Settings(bucket=bucket, endpoint=server.endpoint, force_path_style=True),
                    client=client)
    return store, calls


def put_backup(client: Any, bucket: str, name: str, files: int, **lock: Any) -> str:
    manifest = f"{PREFIX}/{name}/manifest.json"
    for i in range(files):
        client.put_object(Bucket=bucket, Key=f"{PREFIX}/{name}/part-{i}", Body=b"x", **lock)
    client.put_object(Bucket=bucket, Key=manifest, Body=b"{}", **lock)
    return manifest


def keys(client: Any, bucket: str) -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=PREFIX)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def test_many_backups_go_in_few_delete_requests(s3: S3Server) -> None:
    bucket = f"tsb-batch-{uuid.uuid4().hex[:12]}"
    client = s3.client()
    client.create_bucket(Bucket=bucket)
    # 400 backups of 3 objects each: 400 manifests (1 request), then 800 artifacts (1).
    manifests = [put_backup(client, bucket, f"b{i:03d}", 2) for i in range(400)]
    survivor = put_backup(client, bucket, "kept", 2)
    store, calls = counted_store(s3, bucket)
    assert delete_many_backups(store, manifests) == {}
    assert calls == {"ListObjectsV2": 400, "DeleteObjects": 2}
    assert keys(client, bucket) == {survivor, f"{PREFIX}/kept/part-0", f"{PREFIX}/kept/part-1"}


def test_more_than_a_thousand_keys_split_into_requests_of_a_thousand(s3: S3Server) -> None:
    bucket = f"tsb-batch-{uuid.uuid4().hex[:12]}"
    client = s3.client()
    client.create_bucket(Bucket=bucket)
    manifests = [put_backup(client, bucket, "big", 1500)]
    store, calls = counted_store(s3, bucket)
    assert delete_many_backups(store, manifests) == {}
    assert calls["DeleteObjects"] == 1 + 2  # the manifest, then 1,500 artifacts in two
    assert keys(client, bucket) == set()


def test_a_locked_backup_is_reported_per_key_and_stays_whole(s3: S3Server) -> None:
    bucket = f"tsb-batch-{uuid.uuid4().hex[:12]}"
    client = s3.client()
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    locked = put_backup(client, bucket, "locked", 2, ObjectLockMode="COMPLIANCE",
                        ObjectLockRetainUntilDate=until)
    free = [put_backup(client, bucket, f"free{i}", 2) for i in range(3)]
    store, calls = counted_store(s3, bucket)
    failed = delete_many_backups(store, [free[0], locked, *free[1:]])
    assert list(failed) == [locked]
    assert failed[locked].startswith(f"could not delete s3://{bucket}/{locked}: AccessDenied")
    # The locked backup's manifest was refused: its artifacts were not even tried.
    assert keys(client, bucket) == {locked, f"{PREFIX}/locked/part-0",
                                    f"{PREFIX}/locked/part-1"}
    # versitygw refuses the whole manifests' request for the one locked key (AWS would
    # report the key): the four manifests are then tried one by one, the rest in one batch.
    assert calls["DeleteObjects"] == 2 and calls["DeleteObject"] == 4


def test_delete_each_reports_every_refused_key(s3: S3Server) -> None:
    bucket = f"tsb-batch-{uuid.uuid4().hex[:12]}"
    client = s3.client()
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    for key in ("a", "b"):
        client.put_object(Bucket=bucket, Key=key, Body=b"x", ObjectLockMode="COMPLIANCE",
                          ObjectLockRetainUntilDate=until)
    client.put_object(Bucket=bucket, Key="c", Body=b"x")
    store, _ = counted_store(s3, bucket)
    result = store.delete_each([{"Key": "a"}, {"Key": "b"}, {"Key": "c"}])
    assert set(result) == {"a", "b"}
    assert all(why.startswith("AccessDenied:") for why in result.values())
    left = {o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert left == {"a", "b"}
