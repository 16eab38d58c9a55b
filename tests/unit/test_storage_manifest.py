"""The manifest: round trip, strict parsing, the status summary."""

from __future__ import annotations

import ast
import copy
import json
import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from timesheet_backup.errors import ManifestError, StorageError
from timesheet_backup.storage import manifest as mf

pytestmark = pytest.mark.unit

T0 = datetime(2024, 1, 15, 2, 0, 0, tzinfo=UTC)
T1 = datetime(2024, 1, 15, 2, 3, 4, tzinfo=UTC)
SHA = "ab" * 32
KEY = "p/ns/daily/manifest.json"


def sample() -> mf.Manifest:
    return mf.Manifest(
        backup_id="uid-1",
        namespace="ns",
        name="daily",
        start_time=T0,
        completion_time=T1,
        agent_version="0.1.0",
        labels={"backup.northstar.io/schedule": "nightly"},
        artifacts=(
            mf.Artifact(
                component="database",
                key="p/ns/daily/database.dump.zst.age",
                size_bytes=1234,
                sha256=SHA,
                format="custom",
                compression="zstd",
                compression_level=3,
                encryption="age",
                recipients=("age1xyz",),
                verified=("size", "checksum-sha256"),
                database="timesheet_db",
                pg_dump_version="15.18",
                server_version="15.18",
                tables=("public.timesheets",),
                no_owner=True,
                row_counts={"public.timesheets": 42, 'public."Odd.Name"': 0},
            ),
            mf.Artifact(
                component="uploads",
                key="p/ns/daily/uploads.tar.zst.age",
                size_bytes=99,
                sha256="cd" * 32,
                format="tar",
                compression="zstd",
                compression_level=3,
                encryption="age",
                recipients=("age1xyz",),
                file_count=7,
                content_bytes=4096,
                exclude=("*.tmp",),
                source_path="/data/uploads",
            ),
        ),
    )


def as_dict() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(mf.dumps(sample()))
    return data


def test_round_trip() -> None:
    manifest = sample()
    assert mf.loads(mf.dumps(manifest)) == manifest


def test_json_shape() -> None:
    data = as_dict()
    assert data["apiVersion"] == "backup.northstar.io/manifest/v1"
    assert data["kind"] == "BackupManifest"
    assert data["startTime"] == "2024-01-15T02:00:00Z"
    db, up = data["artifacts"]
    assert db["sizeBytes"] == 1234 and db["serverVersion"] == "15.18" and "fileCount" not in db
    assert up["fileCount"] == 7 and "serverVersion" not in up


def test_accessors() -> None:
    manifest = sample()
    assert manifest.components == ("database", "uploads")
    assert manifest.size_bytes == 1333
    assert manifest.artifact("uploads") is manifest.artifacts[1]
    assert manifest.artifact("nothing") is None
    assert manifest.artifacts[0].encrypted


def test_check_keys_refuses_foreign_keys() -> None:
    sample().check_keys(KEY)
    with pytest.raises(ManifestError):
        sample().check_keys("q/ns/daily/manifest.json")


class FakeStore:
    """What `mf.read` asks of a store, with the reads it made."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.reads: list[tuple[str, int]] = []

    bucket = "b"

    def read_bytes(self, key: str, limit: int) -> bytes:
        self.reads.append((key, limit))
        return self.objects[key]

    def exists(self, key: str) -> bool:
        return key in self.objects


def test_read_is_the_one_reader() -> None:
    """Every reader of a manifest in a bucket (operator, agent restore and retried backup,
    catalog) gets the same checks from `mf.read`: bounded read, strict parse, own keys."""
    store = FakeStore({KEY: mf.dumps(sample()), "q/ns/daily/manifest.json": mf.dumps(sample())})
    assert mf.read(store, KEY) == sample()
    assert store.reads == [(KEY, mf.MAX_MANIFEST_BYTES)]
    with pytest.raises(ManifestError, match="outside its directory"):
        mf.read(store, "q/ns/daily/manifest.json")
    store.reads.clear()
    with pytest.raises(ManifestError, match="not a manifest key"):
        mf.read(store, "p/ns/daily/database.dump.zst.age")
    assert store.reads == []  # refused before reading


def test_a_retried_backup_reads_the_manifest_it_may_have_written() -> None:
    """A retried Job finds its own finished backup through `mf.read`, with its checks."""
    from timesheet_backup.agent.backup import _check_existing

    assert _check_existing(FakeStore({}), KEY, "uid-1") is None  # type: ignore[arg-type]
    store = FakeStore({KEY: mf.dumps(sample())})
    assert _check_existing(store, KEY, "uid-1") == sample()  # type: ignore[arg-type]
    with pytest.raises(StorageError, match="already holds backup 'uid-1'"):
        _check_existing(store, KEY, "uid-2")  # type: ignore[arg-type]
    moved = FakeStore({"q/ns/daily/manifest.json": mf.dumps(sample())})
    with pytest.raises(ManifestError, match="outside its directory"):
        _check_existing(moved, "q/ns/daily/manifest.json", "uid-1")  # type: ignore[arg-type]


def test_no_other_module_parses_a_manifest() -> None:
    """Outside storage/manifest.py nothing in the package calls its `loads` or `from_dict`:
    a second reader would drift from `read`'s checks (the operator's skipped the key check
    and had its own size limit)."""
    root = Path(mf.__file__).resolve().parents[1]
    callers = []
    for path in sorted(root.rglob("*.py")):
        if path == Path(mf.__file__).resolve():
            continue
        tree = ast.parse(path.read_text())
        modules, names = set(), set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "timesheet_backup.storage":
                modules |= {a.asname or a.name for a in node.names if a.name == "manifest"}
            if isinstance(node, ast.ImportFrom) and node.module == mf.__name__:
                names |= {a.asname or a.name for a in node.names
                          if a.name in ("loads", "from_dict")}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if (isinstance(func, ast.Attribute) and func.attr in ("loads", "from_dict")
                    and isinstance(func.value, ast.Name) and func.value.id in modules) or (
                    isinstance(func, ast.Name) and func.id in names):
                callers.append(f"{path.relative_to(root)}:{node.lineno}")
    assert callers == []


def mutate(path: list[Any], value: Any) -> bytes:
    data = as_dict()
    target: Any = data
    for step in path[:-1]:
        target = target[step]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["apiVersion"], "backup.northstar.io/manifest/v2", "unsupported apiVersion"),
        (["apiVersion"], KeyError, "apiVersion is required"),
        (["kind"], "Backup", "kind"),
        (["backupId"], "", "backupId"),
        (["backupId"], 5, "backupId"),
        (["startTime"], "yesterday", "ISO 8601"),
        (["startTime"], "2024-01-15T02:00:00", "time zone"),
        (["source"], "elsewhere", "source"),
        (["artifacts"], [], "non-empty list"),
        (["artifacts"], {}, "non-empty list"),
        (["unexpected"], 1, "unknown field unexpected"),
        (["labels"], {"a": 1}, "labels"),
        (["artifacts", 0, "sha256"], "AB" * 32, "sha256"),
        (["artifacts", 0, "sha256"], "ab", "sha256"),
        (["artifacts", 0, "sizeBytes"], -1, "sizeBytes"),
        (["artifacts", 0, "sizeBytes"], True, "sizeBytes"),
        (["artifacts", 0, "sizeBytes"], "12", "sizeBytes"),
        (["artifacts", 0, "component"], "logs", "component"),
        (["artifacts", 0, "compression"], "bzip2", "compression"),
        (["artifacts", 0, "encryption"], "gpg", "encryption"),
        (["artifacts", 0, "recipients"], [], "recipients is empty"),
        (["artifacts", 0, "format"], "tar", "format"),
        (["artifacts", 1, "format"], "custom", "format"),
        (["artifacts", 0, "noOwner"], "yes", "noOwner"),
        (["artifacts", 0, "tables"], "public.x", "tables"),
        (["artifacts", 0, "verified"], ["trust-me"], "verified"),
        (["artifacts", 0, "surprise"], 1, "unknown field artifacts[0].surprise"),
        (["artifacts", 0, "key"], KeyError, "artifacts[0].key is required"),
        (["artifacts", 0, "rowCounts"], [1], "rowCounts must map"),
        (["artifacts", 0, "rowCounts"], {"public.t": -1}, "rowCounts must map"),
        (["artifacts", 0, "rowCounts"], {"public.t": True}, "rowCounts must map"),
        (["artifacts", 0, "rowCounts"], {"public.t": 1.5}, "rowCounts must map"),
        (["artifacts", 0, "tableCount"], 3, "tableCount is 3 but rowCounts has 2"),
        (["artifacts", 0, "tableCount"], -1, "tableCount"),
    ],
)
def test_strict_parsing(path: list[Any], value: Any, message: str) -> None:
    with pytest.raises(ManifestError, match=message.replace("[", r"\[").replace("]", r"\]")):
        mf.loads(mutate(path, value))


def test_duplicate_components_are_refused() -> None:
    data = as_dict()
    data["artifacts"][1] = copy.deepcopy(data["artifacts"][0])
    with pytest.raises(ManifestError, match="twice"):
        mf.from_dict(data)


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe", b"[]", b"null"])
def test_garbage_is_refused(raw: bytes) -> None:
    with pytest.raises(ManifestError):
        mf.loads(raw)


def test_oversized_manifest_is_refused() -> None:
    with pytest.raises(ManifestError, match="larger"):
        mf.loads(b" " * (mf.MAX_MANIFEST_BYTES + 1))


def test_row_counts_json_shape() -> None:
    db = as_dict()["artifacts"][0]
    assert db["tableCount"] == 2
    assert db["rowCounts"] == {"public.timesheets": 42, 'public."Odd.Name"': 0}
    assert sample().artifacts[0].table_count == 2


def test_a_manifest_without_row_counts_is_read_and_written_as_before() -> None:
    """Manifests written before the agent counted rows have neither field."""
    data = as_dict()
    del data["artifacts"][0]["rowCounts"]
    del data["artifacts"][0]["tableCount"]
    manifest = mf.from_dict(data)
    assert manifest.artifacts[0].row_counts is None
    assert manifest.artifacts[0].table_count is None
    assert "rowCounts" not in json.loads(mf.dumps(manifest))["artifacts"][0]


def test_table_count_needs_row_counts() -> None:
    data = as_dict()
    del data["artifacts"][0]["rowCounts"]
    with pytest.raises(ManifestError, match="tableCount without rowCounts"):
        mf.from_dict(data)


def test_an_empty_dump_has_zero_tables() -> None:
    data = as_dict()
    data["artifacts"][0]["rowCounts"] = {}
    data["artifacts"][0]["tableCount"] = 0
    assert mf.from_dict(data).artifacts[0].table_count == 0


def test_optional_fields_may_be_null_or_absent() -> None:
    data = as_dict()
    data["artifacts"][0]["serverVersion"] = None
    del data["artifacts"][0]["pgDumpVersion"]
    del data["labels"]
    manifest = mf.from_dict(data)
    assert manifest.artifacts[0].server_version is None
    assert manifest.labels == {}


def test_naive_times_cannot_be_written() -> None:
    manifest = sample()
    naive = mf.Manifest(**{**manifest.__dict__, "start_time": datetime(2024, 1, 1)})
    with pytest.raises(ValueError):
        mf.dumps(naive)


def test_times_are_normalized_to_utc() -> None:
    data = as_dict()
    data["startTime"] = "2024-01-15T03:00:00+01:00"
    assert mf.from_dict(data).start_time == T0


def test_summary_has_the_status_shape() -> None:
    summary = mf.summary(sample(), KEY)
    assert summary["manifestKey"] == KEY
    assert summary["backupId"] == "uid-1"
    assert summary["sizeBytes"] == 1333
    db, up = summary["artifacts"]
    assert db == {
        "component": "database",
        "key": "p/ns/daily/database.dump.zst.age",
        "sizeBytes": 1234,
        "sha256": SHA,
        "compression": "zstd",
        "encrypted": True,
        "format": "custom",
        "serverVersion": "15.18",
    }
    assert up["fileCount"] == 7 and "serverVersion" not in up


def test_a_manifest_without_content_bytes_is_read_and_written_as_before() -> None:
    """Manifests written before the agent recorded the uploads' bytes lack the field."""
    data = as_dict()
    del data["artifacts"][1]["contentBytes"]
    manifest = mf.from_dict(data)
    assert manifest.artifacts[1].content_bytes is None
    assert "contentBytes" not in json.loads(mf.dumps(manifest))["artifacts"][1]


def test_content_bytes_must_be_a_non_negative_int() -> None:
    data = as_dict()
    data["artifacts"][1]["contentBytes"] = -1
    with pytest.raises(ManifestError, match="contentBytes"):
        mf.from_dict(data)


UPLOADS = sample().artifacts[1]  # 7 files, 4096 bytes


def test_uploads_that_match_have_no_mismatch() -> None:
    assert mf.uploads_mismatches(UPLOADS, 7, 4096) == []


def test_a_different_file_count_is_named_with_both_numbers() -> None:
    assert mf.uploads_mismatches(UPLOADS, 6, 4096) == ["file count: expected 7, found 6"]


def test_different_bytes_are_named_with_both_numbers() -> None:
    assert mf.uploads_mismatches(UPLOADS, 7, 4000) == [
        "bytes of regular files: expected 4096, found 4000"]


def test_every_difference_is_named() -> None:
    assert len(mf.uploads_mismatches(UPLOADS, 1, 1)) == 2


def test_an_old_manifest_compares_what_it_has() -> None:
    from dataclasses import replace

    no_bytes = replace(UPLOADS, content_bytes=None)
    assert mf.uploads_mismatches(no_bytes, 7, 1) == []
    assert mf.uploads_mismatches(no_bytes, 8, 1) == ["file count: expected 7, found 8"]
    nothing = replace(UPLOADS, content_bytes=None, file_count=None)
    assert mf.uploads_mismatches(nothing, 0, 0) == []


def test_what_a_matching_uploads_restore_compared_is_said() -> None:
    from dataclasses import replace

    assert mf.uploads_comparison(UPLOADS, 7, 4096) == (
        "uploads: 7 files, 4.0 KiB as the manifest records, archive sha256 checked")
    assert mf.uploads_comparison(replace(UPLOADS, content_bytes=None), 7, 4096) == (
        "uploads: 7 files as the manifest records, archive sha256 checked")
    nothing = replace(UPLOADS, content_bytes=None, file_count=None)
    assert mf.uploads_comparison(nothing, 7, 4096) == (
        "uploads: archive sha256 checked (the manifest records no file count or bytes)")


# --- the roles dumped with the database (database.globals) -------------------------------


ROLES = mf.Roles(key="p/ns/daily/roles.sql.zst.age", size_bytes=321, sha256="ef" * 32,
                 verified=("size", "checksum-sha256"), passwords=False)


def with_roles(roles: mf.Roles = ROLES) -> mf.Manifest:
    manifest = sample()
    database, uploads = manifest.artifacts
    return replace(manifest, artifacts=(replace(database, roles=roles), uploads))


def test_roles_round_trip_and_shape() -> None:
    manifest = with_roles()
    assert mf.loads(mf.dumps(manifest)) == manifest
    db = json.loads(mf.dumps(manifest))["artifacts"][0]
    assert db["roles"] == {"key": ROLES.key, "sizeBytes": 321, "sha256": "ef" * 32,
                           "verified": ["size", "checksum-sha256"], "passwords": False}
    # A manifest without roles is written as before (older agents read it).
    assert "roles" not in as_dict()["artifacts"][0]
    assert sample().artifacts[0].roles is None and sample().artifacts[0].roles_object() is None


def test_the_roles_object_is_read_as_an_artifact_of_the_dump() -> None:
    database = with_roles().artifacts[0]
    roles = database.roles_object()
    assert roles is not None
    assert (roles.key, roles.size_bytes, roles.sha256, roles.verified) == (
        ROLES.key, 321, "ef" * 32, ("size", "checksum-sha256"))
    # Packed like the dump it belongs to.
    assert (roles.compression, roles.encrypted, roles.recipients) == ("zstd", True, ("age1xyz",))
    assert roles.roles is None and roles.row_counts is None


def test_roles_count_in_the_size_and_the_keys_and_the_status() -> None:
    manifest = with_roles()
    assert manifest.size_bytes == 1333 + 321
    manifest.check_keys(KEY)
    with pytest.raises(ManifestError):
        with_roles(replace(ROLES, key="q/ns/daily/roles.sql")).check_keys(KEY)
    assert mf.summary(manifest, KEY)["artifacts"][0]["rolesKey"] == ROLES.key
    assert "rolesKey" not in mf.summary(sample(), KEY)["artifacts"][0]


@pytest.mark.parametrize(("field", "value", "message"), [
    ("key", KeyError, "roles.key is required"),
    ("sha256", "nope", "roles.sha256 must be 64"),
    ("sizeBytes", -1, "roles.sizeBytes"),
    ("passwords", "yes", "roles.passwords"),
    ("verified", ["trust-me"], "roles.verified"),
    ("extra", 1, "unknown field artifacts[0].roles.extra"),
])
def test_roles_are_parsed_strictly(field: str, value: Any, message: str) -> None:
    data = json.loads(mf.dumps(with_roles()))
    if value is KeyError:
        del data["artifacts"][0]["roles"][field]
    else:
        data["artifacts"][0]["roles"][field] = value
    with pytest.raises(ManifestError, match=re.escape(message)):
        mf.from_dict(data)
