"""The backup manifest: versioned JSON, the commit marker of a backup (pure).

An artifact without a manifest is never a backup. The manifest alone is enough to restore
without the cluster, by the agent or by hand (docs/manual-restore.md).

Parsing is strict: unknown versions, unknown or missing fields and wrong types are refused
with a message naming the field, because a manifest is read from a bucket that someone else
may have written to.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from timesheet_backup.api.enums import COMPRESSIONS, DUMP_FORMATS, OBJECT_LOCK_MODES
from timesheet_backup.constants import (
    COMPONENT_DATABASE,
    COMPONENT_UPLOADS,
    COMPONENTS,
    ROW_COUNTS_STATUS_MAX,
)
from timesheet_backup.errors import ManifestError
from timesheet_backup.status import human_size
from timesheet_backup.storage import layout

API_VERSION: Final = "backup.northstar.io/manifest/v1"
KIND: Final = "BackupManifest"
MAX_MANIFEST_BYTES: Final = 1 << 20

ENCRYPTIONS: Final = ("age", "none")
UPLOADS_FORMAT: Final = "tar"
SOURCES: Final = ("agent", "import")
# What was confirmed from the store's side after the upload.
VERIFICATIONS: Final = ("size", "checksum-sha256", "etag-md5")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Roles:
    """The roles and memberships dumped with a database (pg_dumpall --roles-only): one more
    object, compressed and encrypted like the dump it belongs to."""

    key: str
    size_bytes: int
    sha256: str
    verified: tuple[str, ...] = ("size",)
    # Whether the password hashes are in it (database.globalsPasswords).
    passwords: bool = False


@dataclass(frozen=True)
class Artifact:
    component: str
    key: str
    size_bytes: int
    sha256: str
    format: str
    compression: str
    compression_level: int | None = None
    encryption: str = "none"
    recipients: tuple[str, ...] = ()
    verified: tuple[str, ...] = ("size",)
    # database only
    database: str | None = None
    pg_dump_version: str | None = None
    server_version: str | None = None
    tables: tuple[str, ...] = ()
    exclude_tables: tuple[str, ...] = ()
    no_owner: bool = False
    # Exact rows per dumped table ("schema.table"), counted in the dump's own snapshot;
    # None in manifests written before the agent counted.
    row_counts: Mapping[str, int] | None = None
    roles: Roles | None = None
    # uploads only
    file_count: int | None = None
    # Bytes of the regular files' contents; None in manifests written before the agent
    # recorded it (a restore then compares what the manifest has).
    content_bytes: int | None = None
    strip_components: int = 0
    exclude: tuple[str, ...] = ()
    source_path: str | None = None

    @property
    def encrypted(self) -> bool:
        return self.encryption != "none"

    @property
    def table_count(self) -> int | None:
        return None if self.row_counts is None else len(self.row_counts)

    def roles_object(self) -> Artifact | None:
        """The roles object as an artifact of its own (its key, size and hash; this dump's
        compression and encryption), so it is read and verified like any artifact."""
        if self.roles is None:
            return None
        return replace(self, key=self.roles.key, size_bytes=self.roles.size_bytes,
                       sha256=self.roles.sha256, verified=self.roles.verified, format="sql",
                       roles=None, row_counts=None)


@dataclass(frozen=True)
class Manifest:
    backup_id: str
    namespace: str
    name: str
    start_time: datetime
    completion_time: datetime
    agent_version: str
    artifacts: tuple[Artifact, ...]
    source: str = "agent"
    labels: Mapping[str, str] = field(default_factory=dict)
    # S3 Object Lock of every object of the backup (manifest included), when asked for.
    lock_mode: str | None = None
    locked_until: datetime | None = None

    def artifact(self, component: str) -> Artifact | None:
        for artifact in self.artifacts:
            if artifact.component == component:
                return artifact
        return None

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(a.component for a in self.artifacts)

    @property
    def size_bytes(self) -> int:
        return sum(a.size_bytes + (a.roles.size_bytes if a.roles else 0)
                   for a in self.artifacts)

    def check_keys(self, manifest_key: str) -> None:
        """Refuse a manifest that names objects outside its own directory."""
        for artifact in self.artifacts:
            layout.check_artifact_key(manifest_key, artifact.key)
            if artifact.roles is not None:
                layout.check_artifact_key(manifest_key, artifact.roles.key)


# --- writing -------------------------------------------------------------------------


def format_time(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("manifest times must be timezone-aware")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def artifact_to_dict(artifact: Artifact) -> dict[str, Any]:
    out: dict[str, Any] = {
        "component": artifact.component,
        "key": artifact.key,
        "sizeBytes": artifact.size_bytes,
        "sha256": artifact.sha256,
        "format": artifact.format,
        "compression": artifact.compression,
        "compressionLevel": artifact.compression_level,
        "encryption": artifact.encryption,
        "recipients": list(artifact.recipients),
        "verified": list(artifact.verified),
    }
    if artifact.component == COMPONENT_DATABASE:
        out |= {
            "database": artifact.database,
            "pgDumpVersion": artifact.pg_dump_version,
            "serverVersion": artifact.server_version,
            "tables": list(artifact.tables),
            "excludeTables": list(artifact.exclude_tables),
            "noOwner": artifact.no_owner,
        }
        if artifact.row_counts is not None:
            # Only when counted: a manifest without counts stays as older agents wrote it.
            out["tableCount"] = len(artifact.row_counts)
            out["rowCounts"] = dict(artifact.row_counts)
        if artifact.roles is not None:
            # Only when dumped: older agents read the manifests without roles as before.
            out["roles"] = {"key": artifact.roles.key, "sizeBytes": artifact.roles.size_bytes,
                            "sha256": artifact.roles.sha256,
                            "verified": list(artifact.roles.verified),
                            "passwords": artifact.roles.passwords}
    else:
        out |= {
            "fileCount": artifact.file_count,
            "stripComponents": artifact.strip_components,
            "exclude": list(artifact.exclude),
            "sourcePath": artifact.source_path,
        }
        if artifact.content_bytes is not None:
            # Only when recorded: older manifests stay as older agents wrote them.
            out["contentBytes"] = artifact.content_bytes
    return out


def to_dict(manifest: Manifest) -> dict[str, Any]:
    out = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "backupId": manifest.backup_id,
        "namespace": manifest.namespace,
        "name": manifest.name,
        "source": manifest.source,
        "startTime": format_time(manifest.start_time),
        "completionTime": format_time(manifest.completion_time),
        "agentVersion": manifest.agent_version,
        "labels": dict(manifest.labels),
        "artifacts": [artifact_to_dict(a) for a in manifest.artifacts],
    }
    if manifest.locked_until is not None:
        # Only when set: a manifest without a lock stays readable by older agents.
        out["objectLock"] = {"mode": manifest.lock_mode,
                             "retainUntil": format_time(manifest.locked_until)}
    return out


def dumps(manifest: Manifest) -> bytes:
    return (json.dumps(to_dict(manifest), indent=2, sort_keys=False) + "\n").encode()


# --- reading -------------------------------------------------------------------------


class _Fields:
    """Typed, strict access to one JSON object, naming the path of a bad field."""

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, dict):
            raise ManifestError(f"manifest: {path or 'the document'} must be an object")
        self.data: dict[str, Any] = data
        self.path = path
        self.seen: set[str] = set()

    def _at(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def _get(self, name: str, required: bool) -> Any:
        self.seen.add(name)
        if name not in self.data:
            if required:
                raise ManifestError(f"manifest: {self._at(name)} is required")
            return None
        return self.data[name]

    def opt_str(self, name: str) -> str | None:
        value = self._get(name, False)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise ManifestError(f"manifest: {self._at(name)} must be a non-empty string")
        return value

    def req_str(self, name: str, choices: Sequence[str] = ()) -> str:
        value = self._get(name, True)
        if not isinstance(value, str) or not value:
            raise ManifestError(f"manifest: {self._at(name)} must be a non-empty string")
        if choices and value not in choices:
            raise ManifestError(
                f"manifest: {self._at(name)} is {value!r}, expected one of {', '.join(choices)}"
            )
        return value

    def opt_int(self, name: str, minimum: int = 0) -> int | None:
        value = self._get(name, False)
        if value is None:
            return None
        return self._int(name, value, minimum)

    def req_int(self, name: str, minimum: int = 0) -> int:
        return self._int(name, self._get(name, True), minimum)

    def _int(self, name: str, value: object, minimum: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ManifestError(f"manifest: {self._at(name)} must be an integer >= {minimum}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self._get(name, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ManifestError(f"manifest: {self._at(name)} must be true or false")
        return value

    def strs(self, name: str) -> tuple[str, ...]:
        value = self._get(name, False)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ManifestError(f"manifest: {self._at(name)} must be a list of strings")
        return tuple(value)

    def time(self, name: str) -> datetime:
        raw = self.req_str(name)
        try:
            value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise ManifestError(f"manifest: {self._at(name)} is not an ISO 8601 time") from None
        if value.tzinfo is None:
            raise ManifestError(f"manifest: {self._at(name)} must carry a time zone")
        return value.astimezone(UTC)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise ManifestError(f"manifest: unknown field {self._at(unknown[0])}")


def _row_counts(f: _Fields) -> Mapping[str, int] | None:
    """`rowCounts` (table -> rows) and `tableCount` (its size, for a reader that wants only
    the number): both absent in older manifests, both present and consistent otherwise."""
    raw = f._get("rowCounts", False)
    table_count = f.opt_int("tableCount")
    if raw is None:
        if table_count is not None:
            raise ManifestError(f"manifest: {f.path}.tableCount without rowCounts")
        return None
    if not isinstance(raw, dict) or not all(
            isinstance(k, str) and k and isinstance(v, int) and not isinstance(v, bool)
            and v >= 0 for k, v in raw.items()):
        raise ManifestError(
            f"manifest: {f.path}.rowCounts must map table names to integers >= 0")
    if table_count is not None and table_count != len(raw):
        raise ManifestError(
            f"manifest: {f.path}.tableCount is {table_count} but rowCounts has {len(raw)} tables")
    return dict(raw)


def _sha256(f: _Fields, name: str = "sha256") -> str:
    value = f.req_str(name)
    if not _SHA256.match(value):
        raise ManifestError(f"manifest: {f.path}.{name} must be 64 lowercase hex digits")
    return value


def _verified(f: _Fields) -> tuple[str, ...]:
    verified = f.strs("verified")
    for item in verified:
        if item not in VERIFICATIONS:
            raise ManifestError(f"manifest: {f.path}.verified has unknown entry {item!r}")
    return verified


def _roles(f: _Fields) -> Roles | None:
    raw = f._get("roles", False)
    if raw is None:
        return None
    r = _Fields(raw, f"{f.path}.roles")
    roles = Roles(key=r.req_str("key"), size_bytes=r.req_int("sizeBytes"), sha256=_sha256(r),
                  verified=_verified(r), passwords=r.flag("passwords", False))
    r.done()
    return roles


def _parse_artifact(data: object, index: int) -> Artifact:
    f = _Fields(data, f"artifacts[{index}]")
    component = f.req_str("component", COMPONENTS)
    sha = _sha256(f)
    encryption = f.req_str("encryption", ENCRYPTIONS)
    recipients = f.strs("recipients")
    if encryption == "age" and not recipients:
        raise ManifestError(f"manifest: {f.path}.recipients is empty for an encrypted artifact")
    verified = _verified(f)
    common: dict[str, Any] = {
        "component": component,
        "key": f.req_str("key"),
        "size_bytes": f.req_int("sizeBytes"),
        "sha256": sha,
        "compression": f.req_str("compression", COMPRESSIONS),
        "compression_level": f.opt_int("compressionLevel", minimum=-131072),
        "encryption": encryption,
        "recipients": recipients,
        "verified": verified,
    }
    if component == COMPONENT_DATABASE:
        artifact = Artifact(
            **common,
            format=f.req_str("format", DUMP_FORMATS),
            database=f.opt_str("database"),
            pg_dump_version=f.opt_str("pgDumpVersion"),
            server_version=f.opt_str("serverVersion"),
            tables=f.strs("tables"),
            exclude_tables=f.strs("excludeTables"),
            no_owner=f.flag("noOwner", False),
            row_counts=_row_counts(f),
            roles=_roles(f),
        )
    else:
        artifact = Artifact(
            **common,
            format=f.req_str("format", (UPLOADS_FORMAT,)),
            file_count=f.opt_int("fileCount"),
            content_bytes=f.opt_int("contentBytes"),
            strip_components=f.opt_int("stripComponents") or 0,
            exclude=f.strs("exclude"),
            source_path=f.opt_str("sourcePath"),
        )
    f.done()
    return artifact


def from_dict(data: object) -> Manifest:
    f = _Fields(data, "")
    api_version = f._get("apiVersion", True)
    if api_version != API_VERSION:
        raise ManifestError(
            f"manifest: unsupported apiVersion {api_version!r} (this agent reads {API_VERSION})"
        )
    f.req_str("kind", (KIND,))
    raw_artifacts = f._get("artifacts", True)
    if not isinstance(raw_artifacts, list) or not raw_artifacts:
        raise ManifestError("manifest: artifacts must be a non-empty list")
    artifacts = tuple(_parse_artifact(a, i) for i, a in enumerate(raw_artifacts))
    components = [a.component for a in artifacts]
    if len(set(components)) != len(components):
        raise ManifestError("manifest: a component appears twice in artifacts")
    lock_mode = locked_until = None
    if f._get("objectLock", False) is not None:
        lock = _Fields(f.data["objectLock"], "objectLock")
        lock_mode = lock.req_str("mode", OBJECT_LOCK_MODES)
        locked_until = lock.time("retainUntil")
        lock.done()
    labels = f._get("labels", False) or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ManifestError("manifest: labels must map strings to strings")
    manifest = Manifest(
        backup_id=f.req_str("backupId"),
        namespace=f.req_str("namespace"),
        name=f.req_str("name"),
        source=f.req_str("source", SOURCES),
        start_time=f.time("startTime"),
        completion_time=f.time("completionTime"),
        agent_version=f.req_str("agentVersion"),
        labels=labels,
        artifacts=artifacts,
        lock_mode=lock_mode,
        locked_until=locked_until,
    )
    f.done()
    return manifest


def loads(raw: bytes) -> Manifest:
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest: larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"manifest: not valid JSON ({exc})") from None
    return from_dict(data)


class ObjectReader(Protocol):
    """What `read` needs of a store (S3Store has it): this module stays free of boto3."""

    def read_bytes(self, key: str, limit: int) -> bytes: ...


def read(store: ObjectReader, key: str) -> Manifest:
    """The manifest at `key`, the one way every part reads one from a bucket (the operator,
    the agent's restore and retried backup, the catalog): a key that is not a manifest's is
    refused before any read, at most MAX_MANIFEST_BYTES are read, parsing is strict, and a
    manifest naming objects outside its own directory is refused (ManifestError)."""
    layout.dir_of_manifest(key)
    manifest = loads(store.read_bytes(key, MAX_MANIFEST_BYTES))
    manifest.check_keys(key)
    return manifest


def summary(manifest: Manifest, manifest_key: str) -> dict[str, Any]:
    """What the operator copies into Backup.status (camelCase, status.artifacts[] shape)."""
    artifacts = []
    for a in manifest.artifacts:
        item: dict[str, Any] = {
            "component": a.component,
            "key": a.key,
            "sizeBytes": a.size_bytes,
            "sha256": a.sha256,
            "compression": a.compression,
            "encrypted": a.encrypted,
            "format": a.format,
        }
        if a.component == COMPONENT_DATABASE:
            item["serverVersion"] = a.server_version
            if a.roles is not None:
                item["rolesKey"] = a.roles.key
        elif a.component == COMPONENT_UPLOADS:
            item["fileCount"] = a.file_count
            if a.content_bytes is not None:
                item["contentBytes"] = a.content_bytes
        artifacts.append(item)
    out: dict[str, Any] = {
        "backupId": manifest.backup_id,
        "manifestKey": manifest_key,
        "startTime": format_time(manifest.start_time),
        "completionTime": format_time(manifest.completion_time),
        "sizeBytes": manifest.size_bytes,
        "artifacts": artifacts,
    }
    if manifest.locked_until is not None:
        out["lockedUntil"] = format_time(manifest.locked_until)
    database = manifest.artifact(COMPONENT_DATABASE)
    if database is not None and database.row_counts is not None:
        out["tableCount"] = len(database.row_counts)
        if len(database.row_counts) <= ROW_COUNTS_STATUS_MAX:
            out["rowCounts"] = dict(database.row_counts)
    return out


def uploads_mismatches(artifact: Artifact, file_count: int, content_bytes: int) -> list[str]:
    """What an extracted uploads archive has that its manifest does not say: one
    "what: expected X, found Y" per difference, empty when everything recorded matches.
    The archive's sha256 (checked while it is read) covers the content; this covers
    what the tar stream holds against what the agent saw at backup time. Old manifests
    without a field compare only what they have."""
    found: list[str] = []
    if artifact.file_count is not None and artifact.file_count != file_count:
        found.append(f"file count: expected {artifact.file_count}, found {file_count}")
    if artifact.content_bytes is not None and artifact.content_bytes != content_bytes:
        found.append(f"bytes of regular files: expected {artifact.content_bytes}, "
                     f"found {content_bytes}")
    return found


def uploads_comparison(artifact: Artifact, file_count: int, content_bytes: int) -> str:
    """What a restore that found no mismatch (uploads_mismatches) can say it compared, for
    the Restore's message: "uploads: 12 files, 3.4 MiB as the manifest records, archive
    sha256 checked". Old manifests without the counts: only the sha256 was compared."""
    recorded = []
    if artifact.file_count is not None:
        recorded.append(f"{file_count} files")
    if artifact.content_bytes is not None:
        recorded.append(human_size(content_bytes))
    if not recorded:
        return "uploads: archive sha256 checked (the manifest records no file count or bytes)"
    return f"uploads: {', '.join(recorded)} as the manifest records, archive sha256 checked"
