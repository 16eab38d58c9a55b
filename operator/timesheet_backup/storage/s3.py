"""The object store as the agent and the catalog use it: one bucket, one client.

Credentials are never passed in: boto3's default chain reads AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN from the environment (a Secret), or the pod's web
identity (IRSA) when those are absent.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from urllib3.exceptions import HTTPError as Urllib3HTTPError
from urllib3.exceptions import InsecureRequestWarning

from timesheet_backup import constants
from timesheet_backup.api.enums import OBJECT_LOCK_MODES, SSE_TYPES
from timesheet_backup.errors import ConfigError, IntegrityError, StorageError
from timesheet_backup.storage import checksums, s3errors
from timesheet_backup.storage.uploader import MultipartUploader, UploadResult

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

RETRY_MODES: Final = ("standard", "adaptive", "legacy")
DEFAULT_PART_SIZE: Final = constants.DEFAULT_PART_SIZE
DEFAULT_CONCURRENCY: Final = 4
READ_CHUNK: Final = 1024 * 1024
# Download interruptions we resume with a Range request instead of failing the restore.
_STREAM_ERRORS = (
    ResponseStreamingError,
    ReadTimeoutError,
    ConnectionClosedError,
    IncompleteReadError,
    Urllib3HTTPError,
    ConnectionError,
)


@dataclass(frozen=True)
class S3Settings:
    bucket: str
    prefix: str = ""
    region: str | None = None
    endpoint: str | None = None
    force_path_style: bool = False
    storage_class: str | None = None
    sse: str | None = None
    sse_kms_key_id: str | None = None
    part_size: int = DEFAULT_PART_SIZE
    concurrency: int = DEFAULT_CONCURRENCY
    max_attempts: int = 5
    retry_mode: str = "standard"
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    checksums: bool = True
    # TLS: a PEM file of CA certificates to trust instead of the system's (a private CA);
    # verify_tls False turns verification off (storage.insecureSkipTLSVerify, labs only).
    ca_bundle: str | None = None
    verify_tls: bool = True

    def validate(self) -> None:
        if not self.bucket:
            raise ConfigError("a bucket is required (--bucket)")
        if self.ca_bundle and not self.verify_tls:
            raise ConfigError("--ca-bundle and --insecure-skip-tls-verify contradict each other")
        if self.ca_bundle:
            check_ca_bundle(self.ca_bundle)
        if self.sse is not None and self.sse not in SSE_TYPES:
            raise ConfigError(f"--sse must be one of {', '.join(SSE_TYPES)}, not {self.sse!r}")
        if self.sse_kms_key_id and self.sse != "aws:kms":
            raise ConfigError("--sse-kms-key-id requires --sse aws:kms")
        if self.retry_mode not in RETRY_MODES:
            raise ConfigError(f"--retry-mode must be one of {', '.join(RETRY_MODES)}")
        if self.max_attempts < 1:
            raise ConfigError("--max-attempts must be at least 1")
        if not 5 * 1024 * 1024 <= self.part_size <= 5 * 1024 * 1024 * 1024:
            raise ConfigError("--part-size must be between 5 MiB and 5 GiB")
        if not 1 <= self.concurrency <= 64:
            raise ConfigError("--concurrency must be between 1 and 64")


PEM_CERTIFICATE: Final = "-----BEGIN CERTIFICATE-----"
# The operator's copies of CA bundles read from Secrets (ca_bundle_file): one private
# directory per process, one file per distinct bundle.
_ca_dir: str | None = None


def check_ca_bundle(path: str) -> None:
    """A readable file with at least one PEM certificate, or a ConfigError saying which."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        raise ConfigError(f"cannot read the S3 CA bundle {path}: {exc.strerror}") from None
    if PEM_CERTIFICATE not in text:
        raise ConfigError(f"the S3 CA bundle {path} holds no PEM certificate "
                          f"({PEM_CERTIFICATE} ...)")


def ca_bundle_file(pem: str) -> str:
    """A private file holding `pem` (read from a Secret by the operator) for botocore's
    `verify=`, which takes a path: in a 0700 directory of its own, mode 0600, named by the
    content's hash so every bucket with the same CA shares one file and nothing piles up."""
    global _ca_dir
    if PEM_CERTIFICATE not in pem:
        raise ConfigError(f"the S3 CA bundle holds no PEM certificate ({PEM_CERTIFICATE} ...)")
    if _ca_dir is None or not os.path.isdir(_ca_dir):
        _ca_dir = tempfile.mkdtemp(prefix="tsb-s3-ca-")
    path = os.path.join(_ca_dir, hashlib.sha256(pem.encode()).hexdigest()[:32] + ".pem")
    if not os.path.exists(path):
        staging = f"{path}.{os.getpid()}.{threading.get_ident()}"
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(pem)
        os.replace(staging, path)  # atomic: a concurrent reader never sees half a bundle
    return path


@dataclass(frozen=True)
class Credentials:
    """Explicit keys (the operator reading a Secret). The agent never uses this: it gets
    its keys from the environment or the pod identity through boto3's default chain."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:
        return f"Credentials(access_key_id={self.access_key_id!r}, secret_access_key=***)"


def make_client(settings: S3Settings, credentials: Credentials | None = None) -> S3Client:
    region = (
        settings.region
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or ("us-east-1" if settings.endpoint else None)
    )
    config = Config(
        region_name=region,
        retries=cast(
            Any, {"mode": settings.retry_mode, "total_max_attempts": settings.max_attempts}
        ),
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        max_pool_connections=max(10, settings.concurrency + 2),
        s3={"addressing_style": "path" if settings.force_path_style else "auto"},
        # We send and check our own checksums (Content-MD5 and SHA-256 per part); botocore's
        # default CRC trailers are not understood by every S3-compatible store.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = (
        boto3.session.Session(
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_access_key,
            aws_session_token=credentials.session_token,
        )
        if credentials is not None
        else boto3.session.Session()
    )
    verify: str | bool | None = None  # botocore's default: the system's CAs
    if settings.ca_bundle:
        verify = settings.ca_bundle
    elif not settings.verify_tls:
        verify = False
        _warn_insecure(settings.endpoint)
    try:
        client: S3Client = session.client(
            "s3", endpoint_url=settings.endpoint or None, config=config, verify=verify
        )
    except (BotoCoreError, ValueError) as exc:
        raise StorageError(f"cannot create an S3 client: {exc}") from exc
    return client


def _warn_insecure(endpoint: str | None) -> None:
    """Once per client, not urllib3's warning on every request."""
    warnings.filterwarnings("ignore", category=InsecureRequestWarning)
    log.warning("TLS verification of %s is OFF (insecureSkipTLSVerify): anyone on the path "
                "can read and alter backups and capture the S3 credentials", endpoint or "S3")


@dataclass(frozen=True)
class ObjectLock:
    """S3 Object Lock retention written with every object of a backup."""

    mode: str
    retain_until: datetime

    def __post_init__(self) -> None:
        if self.mode not in OBJECT_LOCK_MODES:
            raise ConfigError(f"object lock mode must be one of {', '.join(OBJECT_LOCK_MODES)}")
        if self.retain_until.tzinfo is None:
            raise ValueError("the retain-until date must be timezone-aware")

    def args(self) -> dict[str, Any]:
        """The headers of PutObject / CreateMultipartUpload."""
        return {"ObjectLockMode": self.mode, "ObjectLockRetainUntilDate": self.retain_until}


def no_object_lock_message(bucket: str) -> str:
    return (f"bucket {bucket} has no Object Lock configuration; create it with object lock "
            "enabled or remove storage.objectLock")


# How stores refuse object-lock headers for a bucket without Object Lock: AWS and versitygw
# answer InvalidRequest "Bucket is missing ObjectLockConfiguration" (or "Object Lock
# configuration"), GetObjectLockConfiguration ObjectLockConfigurationNotFoundError.
_NO_LOCK_CONFIG = "ObjectLockConfigurationNotFoundError"


def _is_missing_lock_config(exc: BaseException) -> bool:
    if not isinstance(exc, ClientError):
        return False
    if s3errors.error_code(exc) == _NO_LOCK_CONFIG:
        return True
    message = str(exc.response.get("Error", {}).get("Message", "")).lower().replace(" ", "")
    return s3errors.error_code(exc) == "InvalidRequest" and "objectlock" in message


@dataclass(frozen=True)
class ObjectVersion:
    """One version (or delete marker) of an object; `version_id` "null" on stores or
    buckets without versioning."""

    key: str
    version_id: str
    delete_marker: bool = False


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: datetime | None


class S3Store:
    def __init__(
        self,
        settings: S3Settings,
        client: S3Client | None = None,
        *,
        credentials: Credentials | None = None,
    ) -> None:
        settings.validate()
        self.settings = settings
        self.bucket = settings.bucket
        self.client = client if client is not None else make_client(settings, credentials)

    def _error(self, exc: BaseException, action: str, key: str | None = None) -> StorageError:
        return s3errors.describe(exc, action, self.bucket, key)

    def _write_args(self, content_type: str) -> dict[str, Any]:
        args: dict[str, Any] = {"ContentType": content_type}
        if self.settings.storage_class:
            args["StorageClass"] = self.settings.storage_class
        if self.settings.sse:
            args["ServerSideEncryption"] = self.settings.sse
        if self.settings.sse_kms_key_id:
            args["SSEKMSKeyId"] = self.settings.sse_kms_key_id
        return args

    # --- checks and small objects ------------------------------------------------------

    def check_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "access the bucket") from exc

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if s3errors.error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._error(exc, "look up", key) from exc
        except BotoCoreError as exc:
            raise self._error(exc, "look up", key) from exc
        return True

    def read_bytes(self, key: str, limit: int) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            if response["ContentLength"] > limit:
                raise StorageError(f"s3://{self.bucket}/{key} is larger than {limit} bytes")
            return response["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "read", key) from exc

    def check_object_lock(self) -> None:
        """Refuse, before anything is uploaded, a bucket without Object Lock. A key that may
        not read the bucket's lock configuration (a write-only key) is not refused here: the
        first upload then fails with the same message if the bucket has none."""
        try:
            self.client.get_object_lock_configuration(Bucket=self.bucket)
        except ClientError as exc:
            if _is_missing_lock_config(exc):
                raise StorageError(no_object_lock_message(self.bucket)) from exc
            if s3errors.error_code(exc) in ("AccessDenied", "403", "Forbidden"):
                log.info("may not read the Object Lock configuration of %s; the uploads "
                         "will show whether it has one", self.bucket)
                return
            raise self._error(exc, "read the Object Lock configuration of") from exc
        except BotoCoreError as exc:
            raise self._error(exc, "read the Object Lock configuration of") from exc

    def _write_error(self, exc: BaseException, action: str, key: str) -> StorageError:
        if _is_missing_lock_config(exc):
            return StorageError(no_object_lock_message(self.bucket))
        return self._error(exc, action, key)

    def write_bytes(self, key: str, data: bytes, content_type: str,
                    lock: ObjectLock | None = None) -> None:
        """Put a small object and confirm its size (and retention) from the store's side."""
        md5 = checksums.md5_digest(data)
        try:
            response = self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentMD5=checksums.b64(md5),
                **self._write_args(content_type),
                **(lock.args() if lock else {}),
            )
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise self._write_error(exc, "write", key) from exc
        self._check_lock(head, lock, key)
        if head["ContentLength"] != len(data):
            raise IntegrityError(
                f"s3://{self.bucket}/{key}: the store reports {head['ContentLength']} bytes "
                f"after writing {len(data)}"
            )
        etag = response.get("ETag", "")
        if (
            checksums.is_md5_etag(etag)
            and "-" not in etag
            and self.settings.sse != "aws:kms"
            and not checksums.same_etag(etag, md5.hex())
        ):
            raise IntegrityError(f"s3://{self.bucket}/{key}: ETag does not match what was sent")

    def delete(self, keys: list[str]) -> None:
        self._delete_objects([{"Key": k} for k in keys], "delete objects in")

    def _delete_objects(self, objects: list[dict[str, str]], what: str) -> None:
        """DeleteObjects in batches of 1,000 (the API's limit); the first error is raised,
        naming the key (and version, when one was given)."""
        refused = self.delete_each(objects, what)
        if refused:
            key, error = next(iter(refused.items()))
            raise StorageError(f"could not delete s3://{self.bucket}/{key}: {error}")

    def delete_each(self, objects: list[dict[str, str]], what: str = "delete objects in"
                    ) -> dict[str, str]:
        """DeleteObjects in batches of 1,000 (the API's limit), reporting per key: the keys
        the store refused (e.g. under Object Lock) with why, as {key (and " (version v)"
        when one was given): "Code: Message"}. A failed request (not a per-key refusal)
        raises StorageError: then nothing is known of the keys it carried; so does a batch
        whose keys are all refused one by one (the credentials, not a lock)."""
        refused: dict[str, str] = {}
        for start in range(0, len(objects), 1000):
            batch = objects[start : start + 1000]
            try:
                response = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": batch, "Quiet": True},  # type: ignore[typeddict-item]
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "AccessDenied":
                    raise self._error(exc, what) from exc
                # Some stores (versitygw) refuse the whole request when one key is under
                # Object Lock, where AWS reports the key: find the refused keys one by one.
                refused.update(self._delete_one_by_one(batch, what, exc))
                continue
            except BotoCoreError as exc:
                raise self._error(exc, what) from exc
            for error in response.get("Errors", []):
                version = f" (version {error['VersionId']})" if error.get("VersionId") else ""
                refused[f"{error.get('Key')}{version}"] = \
                    f"{error.get('Code')}: {error.get('Message')}"
        return refused

    # Keys tried one by one before a refusal of them all is taken for the credentials' (no
    # right to delete at all), not a lock's: that fails fast instead of 1,000 refusals, with
    # the message that names the credentials (so does a batch whose keys were all refused).
    ONE_BY_ONE_PROBE = 10

    def _delete_one_by_one(self, objects: list[dict[str, str]], what: str,
                           batch_error: ClientError) -> dict[str, str]:
        refused: dict[str, str] = {}
        for tried, obj in enumerate(objects, start=1):
            try:
                self.client.delete_object(Bucket=self.bucket, **obj)  # type: ignore[arg-type]
            except ClientError as exc:
                error = exc.response.get("Error", {})
                version = f" (version {obj['VersionId']})" if obj.get("VersionId") else ""
                refused[f"{obj['Key']}{version}"] = f"{error.get('Code')}: {error.get('Message')}"
            except BotoCoreError as exc:
                raise self._error(exc, what) from exc
            if len(refused) == tried and tried in (self.ONE_BY_ONE_PROBE, len(objects)):
                raise self._error(batch_error, what) from batch_error
        return refused

    def list_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield ObjectInfo(item["Key"], item["Size"], item.get("LastModified"))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "list") from exc

    def list_multipart_uploads(self, prefix: str = "") -> list[tuple[str, str]]:
        """(key, upload id) of incomplete multipart uploads under `prefix`."""
        try:
            response = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "list multipart uploads in") from exc
        return [(u["Key"], u["UploadId"]) for u in response.get("Uploads", [])]

    # --- streaming ---------------------------------------------------------------------

    def delete_versions(self, versions: list[ObjectVersion]) -> None:
        """Delete these versions for good (delete markers included). The "null" version
        (a store or bucket without versioning) is deleted by key: some stores (versitygw
        without versioning) refuse the id "null" that AWS accepts."""
        self._delete_objects([{"Key": v.key} if v.version_id == "null"
                              else {"Key": v.key, "VersionId": v.version_id}
                              for v in versions], "delete object versions in")

    def list_versions(self, prefix: str) -> list[ObjectVersion]:
        """Every version and delete marker under `prefix`."""
        found: list[ObjectVersion] = []
        paginator = self.client.get_paginator("list_object_versions")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                found += [ObjectVersion(v["Key"], v.get("VersionId") or "null")
                          for v in page.get("Versions", [])]
                found += [ObjectVersion(m["Key"], m.get("VersionId") or "null", True)
                          for m in page.get("DeleteMarkers", [])]
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "list object versions in") from exc
        return found

    def uploader(
        self, key: str, content_type: str = "application/octet-stream",
        lock: ObjectLock | None = None,
    ) -> MultipartUploader:
        return MultipartUploader(
            self.client,
            self.bucket,
            key,
            part_size=self.settings.part_size,
            concurrency=self.settings.concurrency,
            create_args={**self._write_args(content_type), **(lock.args() if lock else {})},
            checksums=self.settings.checksums,
            describe_error=self._write_error,
        )

    def _check_lock(self, head: Any, lock: ObjectLock | None, key: str) -> None:
        """A store that accepted the headers but did not apply them must not pass for a
        locked backup."""
        if lock is None:
            return
        until = head.get("ObjectLockRetainUntilDate")
        if head.get("ObjectLockMode") != lock.mode or until is None or \
                until < lock.retain_until.replace(microsecond=0):
            raise IntegrityError(
                f"s3://{self.bucket}/{key}: the store reports Object Lock "
                f"{head.get('ObjectLockMode') or 'none'} until {until or 'never'}, "
                f"{lock.mode} until {lock.retain_until.isoformat()} was asked for")

    def verify(self, result: UploadResult, lock: ObjectLock | None = None) -> tuple[str, ...]:
        """Confirm an uploaded object from the store's side (size, checksum, and with `lock`
        its retention); return what was checked."""
        key = result.key
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "verify", key) from exc
        self._check_lock(head, lock, key)
        where = f"s3://{self.bucket}/{key}"
        if head["ContentLength"] != result.size:
            raise IntegrityError(
                f"{where}: the store reports {head['ContentLength']} bytes, {result.size} were sent"
            )
        expected_sha = result.expected_composite_sha256
        reported_sha = head.get("ChecksumSHA256")
        if expected_sha and reported_sha:
            if not checksums.same_composite_sha256(reported_sha, expected_sha):
                raise IntegrityError(f"{where}: the store's SHA-256 checksum does not match")
            return ("size", "checksum-sha256")
        etag = head.get("ETag", "")
        if (
            checksums.is_md5_etag(etag)
            and etag.strip('"').endswith(f"-{len(result.parts)}")
            and self.settings.sse != "aws:kms"
        ):
            if not checksums.same_etag(etag, result.expected_etag):
                raise IntegrityError(f"{where}: the store's ETag does not match the parts sent")
            return ("size", "etag-md5")
        return ("size",)

    def open_reader(self, key: str, etag: str | None = None) -> RangedReader:
        """A stream of the object; with `etag`, only that version of it (412 otherwise)."""
        return RangedReader(self, key, etag=etag)


class RangedReader(io.RawIOBase):
    """A readable stream of one object that resumes with a Range request after a broken
    connection, pinned to the object's ETag so it never splices two versions together."""

    def __init__(
        self, store: S3Store, key: str, *, etag: str | None = None, max_resumes: int = 5
    ) -> None:
        super().__init__()
        self.store = store
        self.key = key
        self.position = 0
        self.max_resumes = max_resumes  # in a row without progress
        self.resumes = 0
        self._failed_at = -1
        self._stalls = 0
        self.etag = etag
        self.size: int | None = None
        self._body: Any = None
        self._open()

    def _open(self) -> None:
        args: dict[str, Any] = {"Bucket": self.store.bucket, "Key": self.key}
        if self.position:
            args["Range"] = f"bytes={self.position}-"
        if self.etag:
            args["IfMatch"] = self.etag
        try:
            response = self.store.client.get_object(**args)
        except ClientError as exc:
            if s3errors.error_code(exc) in ("PreconditionFailed", "412"):
                raise IntegrityError(
                    f"s3://{self.store.bucket}/{self.key} changed while it was being read"
                ) from exc
            raise self.store._error(exc, "read", self.key) from exc
        except BotoCoreError as exc:
            raise self.store._error(exc, "read", self.key) from exc
        if self.etag is None:
            self.etag = response.get("ETag")
        if self.size is None:
            self.size = self.position + response["ContentLength"]
        self._body = response["Body"]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while True:
            try:
                data = self._body.read(min(len(view), READ_CHUNK))
            except _STREAM_ERRORS as exc:
                self._resume(exc)
                continue
            if not data and self.size is not None and self.position < self.size:
                self._resume(ConnectionError("connection closed early"))
                continue
            n = len(data)
            view[:n] = data
            self.position += n
            return n

    def _resume(self, exc: BaseException) -> None:
        self.resumes += 1
        self._stalls = self._stalls + 1 if self.position == self._failed_at else 1
        self._failed_at = self.position
        if self._stalls > self.max_resumes:
            raise StorageError(
                f"reading s3://{self.store.bucket}/{self.key} failed {self._stalls} times in a "
                f"row at byte {self.position}; last error: {exc}"
            ) from exc
        log.warning(
            "download of %s interrupted at byte %d (%s); resuming", self.key, self.position, exc
        )
        with contextlib.suppress(Exception):  # the connection is already broken
            self._body.close()
        time.sleep(min(0.1 * 2**self._stalls, 5.0))  # back off while no progress is made
        self._open()

    def close(self) -> None:
        if self._body is not None:
            self._body.close()
        super().close()
