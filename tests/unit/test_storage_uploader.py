"""The multipart uploader against a fake S3 client: parts, hashing, bounded memory, abort."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError

from timesheet_backup.errors import StorageError
from timesheet_backup.storage import checksums
from timesheet_backup.storage.uploader import MIN_PART_SIZE, MultipartUploader

pytestmark = pytest.mark.unit

PART = MIN_PART_SIZE


def client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, "Op")


class FakeS3:
    """Records calls; optionally fails a part or refuses checksums."""

    def __init__(self, fail_part: int | None = None, refuse_checksums: bool = False) -> None:
        self.fail_part = fail_part
        self.refuse_checksums = refuse_checksums
        self.parts: dict[int, bytes] = {}
        self.calls: list[str] = []
        self.aborted = False
        self.completed: dict[str, Any] | None = None
        self.create_args: dict[str, Any] = {}

    def create_multipart_upload(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append("create")
        if self.refuse_checksums and "ChecksumAlgorithm" in kwargs:
            raise client_error("NotImplemented")
        self.create_args = kwargs
        return {"UploadId": "u1"}

    def upload_part(self, **kwargs: Any) -> dict[str, Any]:
        number = kwargs["PartNumber"]
        if number == self.fail_part:
            raise client_error("InternalError")
        body = bytes(kwargs["Body"])
        assert kwargs["ContentMD5"] == checksums.b64(hashlib.md5(body).digest())
        self.parts[number] = body
        return {"ETag": f'"{hashlib.md5(body).hexdigest()}"'}

    def complete_multipart_upload(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append("complete")
        self.completed = kwargs
        return {}

    def abort_multipart_upload(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append("abort")
        self.aborted = True
        return {}

    def body(self) -> bytes:
        return b"".join(self.parts[n] for n in sorted(self.parts))


def upload(fake: FakeS3, chunks: list[bytes], **kwargs: Any) -> Any:
    options: dict[str, Any] = {"part_size": PART, "concurrency": 2, **kwargs}
    with MultipartUploader(fake, "bucket", "key", **options) as uploader:  # type: ignore[arg-type]
        for chunk in chunks:
            uploader.write(chunk)
        return uploader.finish()


def test_parts_hash_and_completion() -> None:
    data = bytes(range(256)) * (PART * 2 // 256 + 1000)
    fake = FakeS3()
    result = upload(fake, [data[i : i + 777_777] for i in range(0, len(data), 777_777)])
    assert fake.body() == data
    assert [len(fake.parts[n]) for n in sorted(fake.parts)] == [PART, PART, len(data) - 2 * PART]
    assert result.size == len(data)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert fake.calls == ["create", "complete"]
    assert fake.create_args["ChecksumAlgorithm"] == "SHA256"
    parts = fake.completed["MultipartUpload"]["Parts"]  # type: ignore[index]
    assert [p["PartNumber"] for p in parts] == [1, 2, 3]
    assert all("ChecksumSHA256" in p for p in parts)
    assert result.expected_etag == checksums.multipart_etag(
        [hashlib.md5(fake.parts[n]).digest() for n in (1, 2, 3)]
    )
    assert result.expected_composite_sha256 is not None
    assert result.expected_composite_sha256.endswith("-3")


def test_the_part_size_doubles_every_parts_per_size_parts() -> None:
    # S3 allows 10,000 parts: a stream larger than its first parts allow gets larger parts
    # (and only then larger buffers), so an 8 MiB start still reaches 8 TB.
    data = os.urandom(PART * 9 + 123)
    fake = FakeS3()
    result = upload(fake, [data[i:i + 1_000_003] for i in range(0, len(data), 1_000_003)],
                    parts_per_size=2)
    sizes = [len(fake.parts[n]) for n in sorted(fake.parts)]
    assert sizes == [PART, PART, 2 * PART, 2 * PART, 3 * PART + 123]
    assert fake.body() == data and result.size == len(data)
    assert result.expected_etag == checksums.multipart_etag(
        [hashlib.md5(fake.parts[n]).digest() for n in sorted(fake.parts)])
    uploader = MultipartUploader(FakeS3(), "b", "k", part_size=PART, concurrency=1)  # type: ignore[arg-type]
    assert [uploader.part_size_of(n) for n in (1, 1000, 1001, 2001, 9999)] == [
        PART, PART, 2 * PART, 4 * PART, 512 * PART]


def test_empty_stream_uploads_one_empty_part() -> None:
    fake = FakeS3()
    result = upload(fake, [])
    assert result.size == 0 and fake.parts == {1: b""}
    assert result.sha256 == hashlib.sha256(b"").hexdigest()


def test_failed_part_aborts_the_upload() -> None:
    fake = FakeS3(fail_part=2)
    with pytest.raises(StorageError, match="upload part 2"):
        upload(fake, [b"x" * PART] * 5)
    assert fake.aborted
    assert "complete" not in fake.calls


def test_producer_failure_aborts_the_upload() -> None:
    fake = FakeS3()
    with (
        pytest.raises(RuntimeError),
        MultipartUploader(fake, "b", "k", part_size=PART, concurrency=2) as uploader,  # type: ignore[arg-type]
    ):
        uploader.write(b"y" * (PART + 1))
        raise RuntimeError("pg_dump died")
    assert fake.aborted and "complete" not in fake.calls


class GatedS3(FakeS3):
    """Each part waits until `width` parts are in flight (or `patience` ran out), then stays
    a little longer: a part the uploader starts beyond its bound arrives while they wait."""

    def __init__(self, width: int, patience: float = 2.0) -> None:
        super().__init__()
        self.width = width
        self.patience = patience
        self.gate = threading.Condition()
        self.in_flight = 0
        self.max_in_flight = 0

    def upload_part(self, **kwargs: Any) -> dict[str, Any]:
        with self.gate:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.gate.notify_all()
            self.gate.wait_for(lambda: self.in_flight >= self.width, timeout=self.patience)
        time.sleep(0.1)
        try:
            return super().upload_part(**kwargs)
        finally:
            with self.gate:
                self.in_flight -= 1


def test_in_flight_parts_are_bounded_by_concurrency() -> None:
    fake = GatedS3(width=3)
    # Nine parts, a multiple of 3: no part is left waiting for company until `patience` ends.
    upload(fake, [b"z" * PART] * 9, concurrency=3)
    # Exactly the bound: parts do run side by side, and never more than 3 at once.
    assert fake.max_in_flight == 3
    assert len(fake.parts) == 9


def test_store_without_checksums_falls_back() -> None:
    fake = FakeS3(refuse_checksums=True)
    result = upload(fake, [b"q" * 10])
    assert fake.calls[:2] == ["create", "create"]
    assert not result.checksummed and result.expected_composite_sha256 is None
    parts = fake.completed["MultipartUpload"]["Parts"]  # type: ignore[index]
    assert "ChecksumSHA256" not in parts[0]


def test_create_failure_is_a_storage_error() -> None:
    class NoBucket(FakeS3):
        def create_multipart_upload(self, **kwargs: Any) -> dict[str, Any]:
            raise client_error("NoSuchBucket")

    with pytest.raises(StorageError, match="does not exist"):
        upload(NoBucket(), [b"x"])


def test_too_many_parts() -> None:
    fake = FakeS3()
    with MultipartUploader(fake, "b", "k", part_size=PART, concurrency=1,  # type: ignore[arg-type]
                           parts_per_size=20_000) as uploader:
        uploader._next_part = 10_001
        with pytest.raises(StorageError, match="--part-size"):
            uploader.write(b"x" * PART)
    assert fake.aborted


@pytest.mark.parametrize(("part_size", "concurrency"), [(1024, 1), (PART, 0)])
def test_bad_settings(part_size: int, concurrency: int) -> None:
    with pytest.raises(ValueError):
        MultipartUploader(FakeS3(), "b", "k", part_size=part_size, concurrency=concurrency)  # type: ignore[arg-type]
