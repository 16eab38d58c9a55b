"""Key layout of a backup in the bucket."""

from __future__ import annotations

import pytest

from timesheet_backup.errors import ConfigError, ManifestError
from timesheet_backup.storage import layout

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("", "ns/daily/manifest.json"),
        ("backups", "backups/ns/daily/manifest.json"),
        ("/backups/", "backups/ns/daily/manifest.json"),
        ("a//b/", "a/b/ns/daily/manifest.json"),
    ],
)
def test_manifest_key_never_has_empty_segments(prefix: str, expected: str) -> None:
    assert layout.manifest_key(prefix, "ns", "daily") == expected


def test_backup_dir_ends_with_slash() -> None:
    assert layout.backup_dir("p", "ns", "b-1") == "p/ns/b-1/"


@pytest.mark.parametrize("prefix", ["a/../b", "./x", "a/./b"])
def test_prefix_with_dot_segments_is_refused(prefix: str) -> None:
    with pytest.raises(ConfigError):
        layout.normalize_prefix(prefix)


@pytest.mark.parametrize("name", ["", "Upper", "a/b", "..", "-x", "x" * 254])
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError):
        layout.backup_dir("", "ns", name)


@pytest.mark.parametrize(
    ("fmt", "compression", "encrypted", "expected"),
    [
        ("custom", "zstd", False, "database.dump.zst"),
        ("custom", "none", False, "database.dump"),
        ("plain", "gzip", False, "database.sql.gz"),
        ("plain", "zstd", True, "database.sql.zst.age"),
        ("directory", "zstd", False, "database.dir.tar.zst"),
        ("directory", "none", True, "database.dir.tar.age"),
    ],
)
def test_database_artifact_names(
    fmt: str, compression: str, encrypted: bool, expected: str
) -> None:
    assert layout.database_artifact_name(fmt, compression, encrypted) == expected


@pytest.mark.parametrize(
    ("compression", "encrypted", "expected"),
    [
        ("zstd", False, "uploads.tar.zst"),
        ("gzip", True, "uploads.tar.gz.age"),
        ("none", False, "uploads.tar"),
    ],
)
def test_uploads_artifact_names(compression: str, encrypted: bool, expected: str) -> None:
    assert layout.uploads_artifact_name(compression, encrypted) == expected


def test_roles_artifact_names() -> None:
    assert layout.roles_artifact_name("zstd", True) == "roles.sql.zst.age"
    assert layout.roles_artifact_name("none", False) == "roles.sql"


def test_unknown_format_or_compression() -> None:
    with pytest.raises(ConfigError):
        layout.database_artifact_name("tar", "zstd", False)
    with pytest.raises(ConfigError):
        layout.uploads_artifact_name("bzip2", False)


def test_dir_of_manifest() -> None:
    assert layout.dir_of_manifest("p/ns/b/manifest.json") == "p/ns/b/"
    assert layout.dir_of_manifest("manifest.json") == ""
    with pytest.raises(ManifestError):
        layout.dir_of_manifest("p/ns/b/database.dump")
    with pytest.raises(ManifestError):
        layout.dir_of_manifest("p/ns/b/xmanifest.json")


def test_artifact_key_inside_its_directory_is_accepted() -> None:
    key = "p/ns/b/database.dump.zst"
    assert layout.check_artifact_key("p/ns/b/manifest.json", key) == key


@pytest.mark.parametrize(
    "key",
    [
        "p/ns/other/database.dump.zst",  # another backup
        "p/ns/b/../other/database.dump",  # climbs out
        "p/ns/b/sub/database.dump",  # deeper
        "p/ns/b/",  # the directory itself
        "p/ns/b/manifest.json",  # the manifest
        "/etc/passwd",
        "database.dump",
    ],
)
def test_artifact_key_outside_its_directory_is_hostile(key: str) -> None:
    with pytest.raises(ManifestError, match="outside its directory"):
        layout.check_artifact_key("p/ns/b/manifest.json", key)


def test_split_backup_dir() -> None:
    assert layout.split_backup_dir("p/ns/b/manifest.json", "p") == ("ns", "b")
    assert layout.split_backup_dir("ns/b/manifest.json", "") == ("ns", "b")
    assert layout.split_backup_dir("q/ns/b/manifest.json", "p") is None
    assert layout.split_backup_dir("p/x/ns/b/manifest.json", "p") is None


def test_listing_prefix() -> None:
    assert layout.listing_prefix("") == ""
    assert layout.listing_prefix("/a/b/") == "a/b/"
