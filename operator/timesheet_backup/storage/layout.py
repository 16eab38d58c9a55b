"""Where a backup's objects live in the bucket (pure).

    <prefix>/<namespace>/<name>/manifest.json
    <prefix>/<namespace>/<name>/database.<format ext>[.zst|.gz][.age]
    <prefix>/<namespace>/<name>/uploads.tar[.zst|.gz][.age]

The prefix may be empty and may carry leading/trailing slashes; keys never hold empty
segments. A manifest may only name artifacts inside its own backup directory.
"""

from __future__ import annotations

import re
from typing import Final

from timesheet_backup.constants import MANIFEST_NAME
from timesheet_backup.errors import ConfigError, ManifestError

DATABASE_FORMAT_EXTENSIONS: Final = {
    "custom": "dump",
    "plain": "sql",
    "directory": "dir.tar",
}
COMPRESSION_EXTENSIONS: Final = {"zstd": ".zst", "gzip": ".gz", "none": ""}
ENCRYPTION_EXTENSION: Final = ".age"

# Kubernetes names (RFC 1123 subdomain for namespaces is stricter; this is the union we need).
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_UNSAFE_SEGMENTS: Final = frozenset({"", ".", ".."})


def normalize_prefix(prefix: str) -> str:
    """`"/a//b/"` -> `"a/b"`; `""` stays empty. Refuses `.` and `..` segments."""
    segments = [s for s in prefix.split("/") if s]
    for segment in segments:
        if segment in _UNSAFE_SEGMENTS:
            raise ConfigError(f"storage prefix {prefix!r} contains a {segment!r} segment")
    return "/".join(segments)


def _check_name(kind: str, value: str) -> None:
    if not _NAME.match(value):
        raise ConfigError(
            f"{kind} {value!r} is not a valid Kubernetes name (lowercase letters, digits, '-', '.')"
        )


def backup_dir(prefix: str, namespace: str, name: str) -> str:
    """The directory of one backup, with a trailing slash: `"<prefix>/<ns>/<name>/"`."""
    _check_name("namespace", namespace)
    _check_name("backup name", name)
    parts = [p for p in (normalize_prefix(prefix), namespace, name) if p]
    return "/".join(parts) + "/"


def manifest_key(prefix: str, namespace: str, name: str) -> str:
    return backup_dir(prefix, namespace, name) + MANIFEST_NAME


def database_artifact_name(fmt: str, compression: str, encrypted: bool) -> str:
    try:
        ext = DATABASE_FORMAT_EXTENSIONS[fmt]
    except KeyError:
        raise ConfigError(f"unknown database format {fmt!r}") from None
    return f"database.{ext}{_suffix(compression, encrypted)}"


def uploads_artifact_name(compression: str, encrypted: bool) -> str:
    return f"uploads.tar{_suffix(compression, encrypted)}"


def roles_artifact_name(compression: str, encrypted: bool) -> str:
    """The roles and memberships (database.globals): SQL, packed like the dump beside it."""
    return f"roles.sql{_suffix(compression, encrypted)}"


def _suffix(compression: str, encrypted: bool) -> str:
    try:
        ext = COMPRESSION_EXTENSIONS[compression]
    except KeyError:
        raise ConfigError(f"unknown compression {compression!r}") from None
    return ext + (ENCRYPTION_EXTENSION if encrypted else "")


def dir_of_manifest(key: str) -> str:
    """`"a/b/manifest.json"` -> `"a/b/"`. Refuses keys that are not a manifest's."""
    if key != MANIFEST_NAME and not key.endswith("/" + MANIFEST_NAME):
        raise ManifestError(f"{key!r} is not a manifest key (must end with /{MANIFEST_NAME})")
    return key[: -len(MANIFEST_NAME)]


def check_artifact_key(manifest_key_: str, artifact_key: str) -> str:
    """Return `artifact_key` if it lies directly in the manifest's directory, else raise.

    A manifest that names an object elsewhere in the bucket (another backup, `..`, an
    absolute-looking key) is treated as hostile: restoring it could read data the backup
    never contained.
    """
    directory = dir_of_manifest(manifest_key_)
    if not artifact_key.startswith(directory):
        raise ManifestError(
            f"manifest {manifest_key_!r} names artifact {artifact_key!r} outside its directory"
        )
    rest = artifact_key[len(directory) :]
    if rest in _UNSAFE_SEGMENTS or "/" in rest or rest == MANIFEST_NAME:
        raise ManifestError(
            f"manifest {manifest_key_!r} names artifact {artifact_key!r} outside its directory"
        )
    return artifact_key


def split_backup_dir(manifest_key_: str, prefix: str) -> tuple[str, str] | None:
    """(namespace, name) of a manifest key under `prefix`, or None if it is not laid out so."""
    directory = dir_of_manifest(manifest_key_).rstrip("/")
    base = normalize_prefix(prefix)
    if base:
        if not directory.startswith(base + "/"):
            return None
        directory = directory[len(base) + 1 :]
    parts = directory.split("/")
    if len(parts) != 2 or not all(_NAME.match(p) for p in parts):
        return None
    return parts[0], parts[1]


def listing_prefix(prefix: str) -> str:
    """The S3 ListObjects prefix for everything under `prefix` (empty or ending in `/`)."""
    base = normalize_prefix(prefix)
    return base + "/" if base else ""
