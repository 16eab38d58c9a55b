"""`catalog import`: bring backups made by hand with the guide's commands
(`pg_dump | gzip > db.sql.gz`, `pg_dump -Fc > db.dump`, `tar -czf uploads.tar.gz uploads/`)
into the bucket, byte for byte, with a manifest, so `agent restore` and Restore objects can
use them like any other backup.

The files are uploaded unchanged (still restorable by hand); compression and format are
detected from their first bytes unless given.
"""

from __future__ import annotations

import gzip
import logging
import os
import tarfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import zstandard

from timesheet_backup import __version__
from timesheet_backup.agent import streams
from timesheet_backup.api.enums import DUMP_FORMATS
from timesheet_backup.constants import COMPONENT_DATABASE, COMPONENT_UPLOADS
from timesheet_backup.errors import ConfigError, FilesystemError, StorageError
from timesheet_backup.storage import layout
from timesheet_backup.storage import manifest as mf
from timesheet_backup.storage.s3 import S3Store

log = logging.getLogger(__name__)

AGE_MAGIC: Final = b"age-encryption.org/v1"
GZIP_MAGIC: Final = b"\x1f\x8b"
ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
PGDMP_MAGIC: Final = b"PGDMP"


@dataclass(frozen=True)
class ImportRequest:
    namespace: str
    name: str
    backup_id: str
    database_file: Path | None = None
    database_format: str = "auto"
    database_compression: str = "auto"
    database_name: str | None = None
    uploads_file: Path | None = None
    uploads_compression: str = "auto"
    strip_components: int = 0
    source_path: str | None = None
    recipients: tuple[str, ...] = ()
    time: datetime | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


def detect_compression(head: bytes) -> tuple[str | None, bool]:
    """(compression or None if unknown, encrypted) from a file's first bytes (pure)."""
    if head.startswith(AGE_MAGIC):
        return None, True
    if head.startswith(GZIP_MAGIC):
        return "gzip", False
    if head.startswith(ZSTD_MAGIC):
        return "zstd", False
    return "none", False


def detect_database_format(plain_head: bytes) -> str:
    """custom (`PGDMP` header), directory (a tar of a pg_dump -Fd directory) or plain."""
    if plain_head.startswith(PGDMP_MAGIC):
        return "custom"
    if len(plain_head) >= 262 and plain_head[257:262] == b"ustar":
        return "directory"
    return "plain"


def _plain_head(path: Path, compression: str, size: int = 512) -> bytes:
    with open(path, "rb") as raw:
        reader = streams.decompressor(compression, raw)
        try:
            return reader.read(size)
        except (zstandard.ZstdError, gzip.BadGzipFile, zlib.error, EOFError, OSError) as exc:
            raise ConfigError(f"{path} is not valid {compression} data: {exc}") from None


def _resolve(path: Path, compression: str) -> tuple[str, bool]:
    try:
        with open(path, "rb") as file:
            head = file.read(64)
    except OSError as exc:
        raise FilesystemError(f"cannot read {path}: {exc}") from None
    detected, encrypted = detect_compression(head)
    if compression != "auto":
        streams.check_level(compression, None)
        return compression, encrypted
    if detected is None:
        raise ConfigError(
            f"{path} is age-encrypted: give its compression (and the database format) explicitly"
        )
    return detected, encrypted


def _upload_file(store: S3Store, path: Path, key: str) -> tuple[int, str, tuple[str, ...]]:
    with store.uploader(key) as uploader, open(path, "rb") as file:
        streams.copy(file, uploader)
        result = uploader.finish()
    verified = store.verify(result)
    log.info("imported %s as s3://%s/%s (%d bytes)", path, store.bucket, key, result.size)
    return result.size, result.sha256, verified


def _count_tar_files(path: Path, compression: str) -> tuple[int, int]:
    """Regular files (hard links included) and their bytes, counted as the agent's own
    archives count them (tarstream.TarStats), so a restore compares an imported archive too."""
    count = size = 0
    with open(path, "rb") as raw:
        try:
            with tarfile.open(fileobj=streams.decompressor(compression, raw), mode="r|") as tar:
                for member in tar:
                    if member.isreg() or member.islnk():
                        count += 1
                    if member.isreg():
                        size += member.size
        except (tarfile.TarError, zstandard.ZstdError, EOFError, OSError, zlib.error) as exc:
            raise ConfigError(f"{path} is not a readable tar archive: {exc}") from None
    return count, size


def run_import(
    request: ImportRequest, store: S3Store, clock: Callable[[], datetime]
) -> tuple[mf.Manifest, str]:
    if request.database_file is None and request.uploads_file is None:
        raise ConfigError("nothing to import: give --database-file and/or --uploads-file")
    prefix = store.settings.prefix
    manifest_key = layout.manifest_key(prefix, request.namespace, request.name)
    directory = layout.backup_dir(prefix, request.namespace, request.name)
    store.check_bucket()
    if store.exists(manifest_key):
        raise StorageError(f"s3://{store.bucket}/{manifest_key} exists; choose another --name")
    recipients = request.recipients

    plans: list[tuple[str, Path, str, bool, str]] = []  # component, path, compression, enc, fmt
    if request.database_file is not None:
        compression, encrypted = _resolve(request.database_file, request.database_compression)
        fmt = request.database_format
        if fmt == "auto":
            if encrypted:
                raise ConfigError("the database file is age-encrypted: give --database-format")
            fmt = detect_database_format(_plain_head(request.database_file, compression))
        if fmt not in DUMP_FORMATS:
            raise ConfigError(f"--database-format must be auto or one of {DUMP_FORMATS}")
        plans.append((COMPONENT_DATABASE, request.database_file, compression, encrypted, fmt))
    if request.uploads_file is not None:
        compression, encrypted = _resolve(request.uploads_file, request.uploads_compression)
        plans.append((COMPONENT_UPLOADS, request.uploads_file, compression, encrypted, "tar"))
    if any(p[3] for p in plans) and not recipients:
        raise ConfigError("an imported file is age-encrypted: name its --age-recipient(s)")

    oldest = min(os.stat(p[1]).st_mtime for p in plans)
    when = request.time or datetime.fromtimestamp(oldest, UTC)
    artifacts: list[mf.Artifact] = []
    written: list[str] = []
    try:
        for component, path, compression, encrypted, fmt in plans:
            if component == COMPONENT_DATABASE:
                key = directory + layout.database_artifact_name(fmt, compression, encrypted)
            else:
                key = directory + layout.uploads_artifact_name(compression, encrypted)
            # An encrypted archive cannot be read without the key: nothing is counted.
            file_count, content_bytes = (
                _count_tar_files(path, compression)
                if component == COMPONENT_UPLOADS and not encrypted
                else (None, None)
            )
            written.append(key)
            size, sha256, verified = _upload_file(store, path, key)
            artifacts.append(
                mf.Artifact(
                    component=component,
                    key=key,
                    size_bytes=size,
                    sha256=sha256,
                    format=fmt,
                    compression=compression,
                    encryption="age" if encrypted else "none",
                    recipients=recipients if encrypted else (),
                    verified=verified,
                    database=request.database_name if component == COMPONENT_DATABASE else None,
                    file_count=file_count,
                    content_bytes=content_bytes,
                    strip_components=request.strip_components,
                    source_path=request.source_path,
                )
            )
        manifest = mf.Manifest(
            backup_id=request.backup_id,
            namespace=request.namespace,
            name=request.name,
            start_time=when,
            completion_time=when,
            agent_version=__version__,
            artifacts=tuple(artifacts),
            source="import",
            labels={"importedAt": mf.format_time(clock()), **request.labels},
        )
        written.append(manifest_key)
        store.write_bytes(manifest_key, mf.dumps(manifest), "application/json")
    except BaseException:
        try:
            store.delete(written)
        except Exception as exc:
            log.warning("could not delete the partial import: %s", exc)
        raise
    return manifest, manifest_key
