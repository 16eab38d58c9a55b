"""Turn botocore exceptions into one-line StorageErrors a person can act on."""

from __future__ import annotations

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from timesheet_backup.errors import MissingBucket, StorageError

_ACCESS_DENIED = frozenset({"AccessDenied", "AllAccessDisabled", "403", "Forbidden"})
_BAD_CREDENTIALS = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}
)
_MISSING_BUCKET = frozenset({"NoSuchBucket"})
_MISSING_KEY = frozenset({"NoSuchKey", "404", "NotFound"})


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def describe(exc: BaseException, action: str, bucket: str, key: str | None = None) -> StorageError:
    """A StorageError for `exc`, raised while doing `action` on s3://bucket[/key]."""
    where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
    if isinstance(exc, ClientError):
        code = error_code(exc)
        if code in _MISSING_BUCKET or (code in _MISSING_KEY and key is None):
            return MissingBucket(f"bucket {bucket!r} does not exist")
        if code in _MISSING_KEY:
            return StorageError(f"{where} does not exist ({action})")
        if code in _ACCESS_DENIED:
            return StorageError(
                f"access denied to {where} while trying to {action}: "
                "check the credentials and the bucket policy"
            )
        if code in _BAD_CREDENTIALS:
            return StorageError(f"the object store refused the credentials ({code}) for {where}")
        message = exc.response.get("Error", {}).get("Message") or code or "error"
        return StorageError(f"could not {action} {where}: {code}: {message}")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return StorageError(
            "no S3 credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (in a Backup "
            "or Restore: storage.credentialsSecretRef)"
        )
    if isinstance(exc, EndpointConnectionError):
        return StorageError(f"cannot reach the object store to {action} {where}: {exc}")
    if isinstance(exc, ConnectionClosedError | ReadTimeoutError):
        return StorageError(f"connection to the object store lost while trying to {action} {where}")
    if isinstance(exc, BotoCoreError):
        return StorageError(f"could not {action} {where}: {exc}")
    return StorageError(f"could not {action} {where}: {type(exc).__name__}: {exc}")
