"""S3Store against a fake client: verification after upload, resumable reads, settings."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from botocore.exceptions import ClientError, ReadTimeoutError

from timesheet_backup.errors import ConfigError, IntegrityError, StorageError
from timesheet_backup.storage import checksums
from timesheet_backup.storage.s3 import Credentials, S3Settings, S3Store, make_client
from timesheet_backup.storage.uploader import UploadedPart, UploadResult

pytestmark = pytest.mark.unit

DATA = bytes(range(256)) * 4000


class Body:
    """A response body that breaks after `fail_after` bytes."""

    def __init__(self, data: bytes, fail_after: int | None) -> None:
        self.data, self.pos, self.fail_after = data, 0, fail_after

    def read(self, n: int) -> bytes:
        if self.fail_after is not None and self.pos >= self.fail_after:
            raise ReadTimeoutError(endpoint_url="http://x")
        end = self.pos + n
        if self.fail_after is not None:
            end = min(end, self.fail_after)
        chunk = self.data[self.pos : end]
        self.pos += len(chunk)
        return chunk

    def close(self) -> None:
        pass


class FakeClient:
    def __init__(self, head: dict[str, Any] | None = None, cut_every: int | None = None) -> None:
        self.head = head or {}
        self.cut_every = cut_every
        self.gets: list[dict[str, Any]] = []

    def head_object(self, **kwargs: Any) -> dict[str, Any]:
        return self.head

    def get_object(self, **kwargs: Any) -> dict[str, Any]:
        self.gets.append(kwargs)
        start = int(kwargs.get("Range", "bytes=0-")[6:-1])
        if kwargs.get("IfMatch", '"v1"') != '"v1"':
            raise ClientError({"Error": {"Code": "PreconditionFailed"}}, "GetObject")
        rest = DATA[start:]
        return {"Body": Body(rest, self.cut_every), "ContentLength": len(rest), "ETag": '"v1"'}


def store(client: Any, **settings: Any) -> S3Store:
    return S3Store(S3Settings(bucket="b", **settings), client=client)


def result(parts: list[bytes], checksummed: bool = True) -> UploadResult:
    uploaded = tuple(
        UploadedPart(i + 1, "", len(p), hashlib.md5(p).digest(), hashlib.sha256(p).digest())
        for i, p in enumerate(parts)
    )
    return UploadResult("k", sum(map(len, parts)), "x", uploaded, checksummed)


PARTS = [b"a" * 100, b"b" * 50]


def test_verify_by_composite_checksum() -> None:
    res = result(PARTS)
    good = {"ContentLength": 150, "ChecksumSHA256": res.expected_composite_sha256}
    assert store(FakeClient(good)).verify(res) == ("size", "checksum-sha256")
    bad = {"ContentLength": 150, "ChecksumSHA256": "AAAA-2"}
    with pytest.raises(IntegrityError, match="SHA-256"):
        store(FakeClient(bad)).verify(res)


def test_verify_by_etag_when_no_checksum() -> None:
    res = result(PARTS, checksummed=False)
    good = {"ContentLength": 150, "ETag": f'"{res.expected_etag}"'}
    assert store(FakeClient(good)).verify(res) == ("size", "etag-md5")
    bad = {"ContentLength": 150, "ETag": '"0123456789abcdef0123456789abcdef-2"'}
    with pytest.raises(IntegrityError, match="ETag"):
        store(FakeClient(bad)).verify(res)


def test_verify_size_only_for_opaque_etags() -> None:
    res = result(PARTS, checksummed=False)
    assert store(FakeClient({"ContentLength": 150, "ETag": '"opaque"'})).verify(res) == ("size",)
    kms = {"ContentLength": 150, "ETag": f'"{res.expected_etag}"'}
    assert store(FakeClient(kms), sse="aws:kms").verify(res) == ("size",)


def test_verify_size_mismatch() -> None:
    with pytest.raises(IntegrityError, match="149 bytes, 150 were sent"):
        store(FakeClient({"ContentLength": 149})).verify(result(PARTS))


def test_reader_resumes_with_range_and_if_match() -> None:
    client = FakeClient(cut_every=100_000)
    reader = store(client).open_reader("k")
    data = reader.read()
    assert data == DATA
    assert reader.resumes == len(DATA) // 100_000
    assert client.gets[1] == {
        "Bucket": "b",
        "Key": "k",
        "Range": "bytes=100000-",
        "IfMatch": '"v1"',
    }


def test_reader_gives_up_without_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("timesheet_backup.storage.s3.time.sleep", lambda s: None)
    reader = store(FakeClient(cut_every=0)).open_reader("k")
    with pytest.raises(StorageError, match="times in a row at byte 0"):
        reader.read()


def test_reader_pinned_to_another_version() -> None:
    with pytest.raises(IntegrityError, match="changed while it was being read"):
        store(FakeClient()).open_reader("k", etag='"v0"')


@pytest.mark.parametrize(
    "settings",
    [
        {"bucket": ""},
        {"bucket": "b", "sse": "aws:nope"},
        {"bucket": "b", "sse_kms_key_id": "k"},
        {"bucket": "b", "part_size": 1024},
        {"bucket": "b", "concurrency": 0},
        {"bucket": "b", "retry_mode": "forever"},
        {"bucket": "b", "max_attempts": 0},
    ],
)
def test_settings_validation(settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        S3Settings(**settings).validate()


def test_client_configuration() -> None:
    client = make_client(
        S3Settings(bucket="b", endpoint="http://minio:9000", force_path_style=True, max_attempts=7)
    )
    config: Any = client.meta.config
    assert config.s3 == {"addressing_style": "path"}
    assert config.retries["total_max_attempts"] == 7  # attempts, not retries
    assert client.meta.region_name  # an endpoint without a region still signs
    assert client.meta.endpoint_url == "http://minio:9000"


def test_explicit_credentials_are_not_printed() -> None:
    creds = Credentials("AKIAEXAMPLE", "very-secret")
    assert "very-secret" not in repr(creds)
    client = make_client(S3Settings(bucket="b", region="eu-west-1"), creds)
    assert client._request_signer._credentials.secret_key == "very-secret"  # type: ignore[attr-defined]


def test_write_bytes_checks_size_and_etag() -> None:
    class Client(FakeClient):
        def put_object(self, **kwargs: Any) -> dict[str, Any]:
            self.put = kwargs
            return {"ETag": f'"{hashlib.md5(kwargs["Body"]).hexdigest()}"'}

    client = Client({"ContentLength": 3})
    store(client, storage_class="STANDARD_IA", sse="AES256").write_bytes(
        "m", b"abc", "application/json"
    )
    assert (
        client.put["StorageClass"] == "STANDARD_IA"
        and client.put["ServerSideEncryption"] == "AES256"
    )
    assert client.put["ContentMD5"] == checksums.b64(hashlib.md5(b"abc").digest())
    with pytest.raises(IntegrityError):
        store(Client({"ContentLength": 2})).write_bytes("m", b"abc", "application/json")


def test_uploads_carry_storage_class_and_encryption() -> None:
    s = store(FakeClient(), storage_class="GLACIER_IR", sse="aws:kms", sse_kms_key_id="key-1")
    uploader = s.uploader("k")
    assert uploader.create_args == {
        "ContentType": "application/octet-stream",
        "StorageClass": "GLACIER_IR",
        "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": "key-1",
    }
    assert uploader.part_size == 8 * 1024 * 1024 and uploader.concurrency == 4
