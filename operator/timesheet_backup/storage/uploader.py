"""A writable sink that streams into one S3 multipart upload, hashing on the way.

Memory is bounded: one part being filled plus at most `concurrency` parts in flight, so about
`part_size * (concurrency + 1)` bytes whatever the size of the stream. `write` blocks while
all upload slots are busy, which back-pressures the producer (pg_dump waits on its pipe).
The part size doubles after every `parts_per_size` parts (1,000): S3 allows 10,000 parts, so
a first size of 8 MiB reaches 8 TB (past S3's 5 TiB object limit) while objects under 8 GiB,
nearly all backups here, keep 8 MiB buffers; a larger object's memory grows with its parts.

Any failure aborts the multipart upload (`__exit__`), immediately and once more after the
parts in flight settled, so no orphan parts are left behind; botocore retries the abort like
any other call.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from botocore.exceptions import BotoCoreError, ClientError

from timesheet_backup.errors import StorageError
from timesheet_backup.storage import checksums, s3errors

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

MIN_PART_SIZE: Final = 5 * 1024 * 1024
MAX_PART_SIZE: Final = 5 * 1024 * 1024 * 1024
MAX_PARTS: Final = 10_000
PARTS_PER_SIZE: Final = 1000
# Codes with which stores that lack flexible checksums refuse ChecksumAlgorithm.
_CHECKSUM_UNSUPPORTED: Final = frozenset({"NotImplemented", "InvalidArgument", "InvalidRequest"})


@dataclass(frozen=True)
class UploadedPart:
    number: int
    etag: str
    size: int
    md5: bytes
    sha256: bytes | None


@dataclass(frozen=True)
class UploadResult:
    key: str
    size: int
    sha256: str
    parts: tuple[UploadedPart, ...]
    checksummed: bool

    @property
    def expected_etag(self) -> str:
        return checksums.multipart_etag([p.md5 for p in self.parts])

    @property
    def expected_composite_sha256(self) -> str | None:
        if not self.checksummed:
            return None
        return checksums.composite_sha256([p.sha256 for p in self.parts if p.sha256])


class MultipartUploader:
    """Use as a context manager; call `finish()` inside it to complete the upload."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        key: str,
        *,
        part_size: int,
        concurrency: int,
        create_args: Mapping[str, Any] | None = None,
        checksums: bool = True,
        abort_wait: float = 20.0,
        describe_error: Callable[[BaseException, str, str], StorageError] | None = None,
        parts_per_size: int = PARTS_PER_SIZE,
    ) -> None:
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ValueError(f"part size must be between {MIN_PART_SIZE} and {MAX_PART_SIZE}")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.client = client
        self.bucket = bucket
        self.key = key
        self.part_size = part_size  # of the first parts: see part_size_of
        self.parts_per_size = parts_per_size
        self.concurrency = concurrency
        self.create_args = dict(create_args or {})
        self.checksums = checksums
        self.abort_wait = abort_wait
        # How a refused CreateMultipartUpload is told (the store knows e.g. Object Lock).
        self.describe_error = describe_error or (
            lambda exc, action, key: s3errors.describe(exc, action, self.bucket, key))
        self.upload_id: str | None = None
        self.completed = False
        self.size = 0
        self._sha256 = hashlib.sha256()
        self._buffer = bytearray()
        self._next_part = 1
        self._futures: list[Future[UploadedPart]] = []
        self._slots = threading.BoundedSemaphore(concurrency)
        self._failure: BaseException | None = None
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="s3-part")

    # --- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> MultipartUploader:
        self._create()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.completed:
            self.abort()
        # Parts still running after abort_wait are not waited for: their upload is gone.
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _create(self) -> None:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key, **self.create_args}
        if self.checksums:
            try:
                response = self.client.create_multipart_upload(**args, ChecksumAlgorithm="SHA256")
            except ClientError as exc:
                if s3errors.error_code(exc) not in _CHECKSUM_UNSUPPORTED or \
                        "objectlock" in str(exc).lower().replace(" ", ""):
                    raise self.describe_error(exc, "start an upload to", self.key) from exc
                log.info("the store refused SHA-256 checksums; verifying by size and ETag")
                self.checksums = False
            except BotoCoreError as exc:
                raise self.describe_error(exc, "start an upload to", self.key) from exc
            else:
                self.upload_id = response["UploadId"]
                return
        try:
            response = self.client.create_multipart_upload(**args)
        except (ClientError, BotoCoreError) as exc:
            raise self.describe_error(exc, "start an upload to", self.key) from exc
        self.upload_id = response["UploadId"]

    def abort(self) -> None:
        """Abort the upload; logs, never raises.

        The abort is sent at once (an interrupted agent has a grace period to stop), then
        sent again once the parts still in flight have settled, since a part that completes
        after the first abort would otherwise linger (S3's documented behaviour)."""
        if self.upload_id is None or self.completed:
            return
        for future in self._futures:
            future.cancel()
        self._send_abort(final=False)
        wait(self._futures, timeout=self.abort_wait)
        self._send_abort(final=True)
        self.upload_id = None

    def _send_abort(self, final: bool) -> None:
        try:
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id or ""
            )
        except ClientError as exc:
            if s3errors.error_code(exc) in ("NoSuchUpload", "404"):
                return  # already gone: aborted the first time
            self._abort_failed(exc, final)
        except BotoCoreError as exc:
            self._abort_failed(exc, final)
        else:
            if final:
                log.info("aborted multipart upload of s3://%s/%s", self.bucket, self.key)

    def _abort_failed(self, exc: BaseException, final: bool) -> None:
        if not final:
            return
        log.error(
            "could not abort multipart upload %s of s3://%s/%s (%s); a bucket lifecycle "
            "rule AbortIncompleteMultipartUpload removes it",
            self.upload_id,
            self.bucket,
            self.key,
            s3errors.describe(exc, "abort the upload of", self.bucket, self.key),
        )

    # --- writing -----------------------------------------------------------------------

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._raise_failure()
        view = memoryview(data).cast("B")
        n = len(view)
        if not n:
            return 0
        self._sha256.update(view)
        self.size += n
        while view:
            size = self.part_size_of(self._next_part)
            room = size - len(self._buffer)
            self._buffer += view[:room]
            view = view[room:]
            if len(self._buffer) >= size:
                self._submit(self._buffer)
                self._buffer = bytearray()
        return n

    def part_size_of(self, number: int) -> int:
        """The size of part `number` (from 1): the first size, doubled after every
        `parts_per_size` parts, at most S3's 5 GiB."""
        doublings = min((number - 1) // self.parts_per_size, 16)
        return min(self.part_size << doublings, MAX_PART_SIZE)

    def flush(self) -> None:
        """Nothing to do: parts are sent when full, the last one by `finish`."""

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _submit(self, data: bytearray) -> None:
        number = self._next_part
        if number > MAX_PARTS:
            raise StorageError(
                f"s3://{self.bucket}/{self.key} needs more than {MAX_PARTS} parts (the "
                f"first {self.parts_per_size} of {self.part_size} bytes, doubling): raise "
                "--part-size"
            )
        self._next_part += 1
        self._slots.acquire()
        self._raise_failure_releasing()
        future = self._executor.submit(self._upload_part, number, data)
        future.add_done_callback(self._part_done)
        self._futures.append(future)

    def _raise_failure_releasing(self) -> None:
        if self._failure is not None:
            self._slots.release()
            raise self._failure

    def _part_done(self, future: Future[UploadedPart]) -> None:
        self._slots.release()
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None and self._failure is None:
            self._failure = exc

    def _upload_part(self, number: int, data: bytearray) -> UploadedPart:
        md5 = checksums.md5_digest(data)
        sha256 = hashlib.sha256(data).digest() if self.checksums else None
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self.key,
            "UploadId": self.upload_id,
            "PartNumber": number,
            "Body": data,
            "ContentMD5": checksums.b64(md5),
            "ContentLength": len(data),
        }
        if sha256 is not None:
            args["ChecksumSHA256"] = checksums.b64(sha256)
        try:
            response = self.client.upload_part(**args)
        except (ClientError, BotoCoreError) as exc:
            raise s3errors.describe(exc, f"upload part {number} of", self.bucket, self.key) from exc
        return UploadedPart(number, response["ETag"], len(data), md5, sha256)

    def finish(self) -> UploadResult:
        """Send the last part, wait for all parts, complete the upload."""
        self._raise_failure()
        if self._buffer or self._next_part == 1:
            self._submit(self._buffer)
            self._buffer = bytearray()
        parts = [future.result() for future in self._futures]
        self._raise_failure()
        completed_parts: list[dict[str, Any]] = []
        for part in parts:
            entry: dict[str, Any] = {"PartNumber": part.number, "ETag": part.etag}
            if part.sha256 is not None:
                entry["ChecksumSHA256"] = checksums.b64(part.sha256)
            completed_parts.append(entry)
        try:
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id or "",
                MultipartUpload={"Parts": completed_parts},  # type: ignore[typeddict-item]
            )
        except (ClientError, BotoCoreError) as exc:
            raise s3errors.describe(exc, "complete the upload of", self.bucket, self.key) from exc
        self.completed = True
        return UploadResult(
            key=self.key,
            size=self.size,
            sha256=self._sha256.hexdigest(),
            parts=tuple(parts),
            checksummed=self.checksums,
        )
