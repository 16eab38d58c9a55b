"""Choosing the backup by intent (spec.latest) and restoring part of it (database tables,
schemas, data or schema only; uploads paths): the decisions row by row, the pg_restore
arguments, the agent's refusals, and extraction of selected paths."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from timesheet_backup import constants as c
from timesheet_backup.agent import pgtools, tarstream
from timesheet_backup.agent.pgtools import Connection, RestoreOptions, Selection
from timesheet_backup.agent.restore import RestoreRequest
from timesheet_backup.api import models
from timesheet_backup.api.defaults import Defaults
from timesheet_backup.api.fields import dump, parse
from timesheet_backup.decisions import restores as decide
from timesheet_backup.decisions.restores import RestoreFailed
from timesheet_backup.errors import ArchiveError, ConfigError

pytestmark = pytest.mark.unit

SCHEDULE = "nightly"
DB_SETTINGS = {"host": "db", "name": "app", "user": "u",
               "passwordSecretRef": {"name": "s", "key": "p"}}


def backup(name: str, completed: str | None, phase: str = "Succeeded", *,
           schedule: str = SCHEDULE, verified: bool = False, deleting: bool = False,
           manifest: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {c.LABEL_SCHEDULE: schedule}}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-26T12:00:00Z"
    status: dict[str, Any] = {"phase": phase,
                              "resolved": {"storage": {"bucket": "b"},
                                           "database": DB_SETTINGS,
                                           "uploads": {"claimName": "uploads"}}}
    if manifest:
        status["manifestKey"] = f"p/ns/{name}/manifest.json"
    if completed:
        status["completionTime"] = completed
    if verified:
        status["verification"] = {"restore": "t", "time": completed, "result": "Succeeded",
                                  "verifiedTime": completed}
    return {"metadata": meta, "status": status}


MON = backup("nightly-mon", "2026-11-23T02:05:00Z", verified=True)
TUE = backup("nightly-tue", "2026-11-24T02:05:00Z")
WED_FAILED = backup("nightly-wed", "2026-11-25T02:05:00Z", phase="Failed")
THU_RUNNING = backup("nightly-thu", None, phase="Running")
OTHER = backup("weekly-x", "2026-11-26T03:00:00Z", schedule="weekly")
GOING = backup("nightly-going", "2026-11-26T02:05:00Z", deleting=True)
NO_KEY = backup("nightly-nokey", "2026-11-26T02:06:00Z", manifest=False)
ALL = [MON, TUE, WED_FAILED, THU_RUNNING, OTHER, GOING, NO_KEY]


def latest(**fields: Any) -> models.RestoreLatest:
    return parse(models.RestoreLatest, {"scheduleName": SCHEDULE, **fields}, "latest")


@pytest.mark.parametrize(("fields", "backups", "chosen"), [
    ({}, ALL, "nightly-tue"),  # not failed, running, another schedule's, deleted or keyless
    ({"verifiedOnly": True}, ALL, "nightly-mon"),
    ({"before": "2026-11-24T00:00:00Z"}, ALL, "nightly-mon"),
    ({"before": "2026-11-24T02:05:00Z"}, ALL, "nightly-mon"),  # strictly before
    ({"before": "2026-11-24T02:05:01+00:00"}, ALL, "nightly-tue"),
    ({"before": "2026-11-24T03:05:00+01:00"}, ALL, "nightly-mon"),  # offsets compare as times
    ({"before": "2026-11-24T02:05:01"}, ALL, "nightly-tue"),  # no offset: UTC
    ({}, [backup("b", "2026-11-24T02:05:00Z"), backup("a", "2026-11-24T02:05:00Z")], "b"),
    ({}, [backup("naive", "2026-11-24T02:05:00")], "naive"),
])
def test_choose_latest(fields: dict[str, Any], backups: list[dict[str, Any]],
                       chosen: str) -> None:
    assert decide.choose_latest(latest(**fields), backups)["metadata"]["name"] == chosen


@pytest.mark.parametrize(("fields", "backups", "message"), [
    ({}, [], "no Succeeded Backup of schedule nightly"),
    ({}, [WED_FAILED, THU_RUNNING, OTHER, GOING, NO_KEY],
     "no Succeeded Backup of schedule nightly"),
    ({"before": "2026-11-01T00:00:00Z"}, ALL,
     "no Succeeded Backup of schedule nightly completed before 2026-11-01T00:00:00Z"),
    ({"verifiedOnly": True, "before": "2026-11-23T00:00:00Z"}, ALL,
     "no verified Succeeded Backup of schedule nightly completed before "
     "2026-11-23T00:00:00Z"),
])
def test_nothing_matches(fields: dict[str, Any], backups: list[dict[str, Any]],
                         message: str) -> None:
    with pytest.raises(RestoreFailed) as info:
        decide.choose_latest(latest(**fields), backups)
    assert (info.value.reason, str(info.value)) == ("NoMatchingBackup", message)


def test_a_before_that_is_no_time_is_an_invalid_spec() -> None:
    with pytest.raises(RestoreFailed) as info:
        decide.choose_latest(latest(before="yesterday"), ALL)
    assert info.value.reason == "InvalidSpec" and "yesterday" in str(info.value)


def test_locate_latest_records_the_choice() -> None:
    spec = parse(models.RestoreSpec, {"latest": {"scheduleName": SCHEDULE}})
    location = decide.locate(spec, None, Defaults(), ALL)
    assert location == decide.Location(
        storage={"bucket": "b"}, manifest_key="p/ns/nightly-tue/manifest.json",
        database=DB_SETTINGS, uploads={"claimName": "uploads"},
        backup_name="nightly-tue", completion_time="2026-11-24T02:05:00Z")
    found = decide.source(location, "id-tue", ["database"], [], Defaults(), "custom")
    assert (found.backup_name, found.completion_time, found.database_format) == (
        "nightly-tue", "2026-11-24T02:05:00Z", "custom")
    resolved = decide.resolve(spec, found)
    assert (resolved["backupName"], resolved["completionTime"]) == (
        "nightly-tue", "2026-11-24T02:05:00Z")
    assert dump(decide.restored_from(spec, resolved)) == {
        "backupName": "nightly-tue", "manifestKey": "p/ns/nightly-tue/manifest.json",
        "backupId": "id-tue", "completionTime": "2026-11-24T02:05:00Z"}


def test_a_newer_backup_does_not_change_a_recorded_choice() -> None:
    """What later steps use is status.resolved: restored_from reads the choice from there."""
    spec = parse(models.RestoreSpec, {"latest": {"scheduleName": SCHEDULE}})
    recorded = {"manifestKey": "p/ns/nightly-tue/manifest.json", "backupName": "nightly-tue"}
    assert decide.restored_from(spec, recorded).backup_name == "nightly-tue"


def test_locate_latest_without_a_match_fails() -> None:
    spec = parse(models.RestoreSpec, {"latest": {"scheduleName": "weekly",
                                                 "verifiedOnly": True}})
    with pytest.raises(RestoreFailed) as info:
        decide.locate(spec, None, Defaults(), [OTHER])
    assert info.value.reason == "NoMatchingBackup"


# --- the newest backup from the bucket alone (source.latest) ---------------------------


def _at(text: str) -> Any:
    from timesheet_backup.status import parse_time

    return parse_time(text)


IN_BUCKET = [
    decide.BucketEntry("p/prod/nightly-mon/manifest.json", "prod", {c.LABEL_SCHEDULE: SCHEDULE},
                       _at("2026-11-23T02:05:00Z")),
    decide.BucketEntry("p/prod/nightly-tue/manifest.json", "prod", {c.LABEL_SCHEDULE: SCHEDULE},
                       _at("2026-11-24T02:05:00Z")),
    decide.BucketEntry("p/prod/weekly-sun/manifest.json", "prod", {c.LABEL_SCHEDULE: "weekly"},
                       _at("2026-11-24T03:00:00Z")),
    decide.BucketEntry("p/prod/by-hand/manifest.json", "prod", {}, _at("2026-11-25T09:00:00Z")),
    decide.BucketEntry("p/prod/broken/manifest.json", error="manifest: not JSON"),
    # Under prod/ by key but written for another namespace: never chosen for prod.
    decide.BucketEntry("p/prod/stray/manifest.json", "staging", {}, _at("2026-11-26T00:00:00Z")),
]
STORAGE = {"bucket": "b", "prefix": "p"}


@pytest.mark.parametrize(("fields", "chosen"), [
    ({}, "p/prod/by-hand/manifest.json"),
    ({"scheduleName": SCHEDULE}, "p/prod/nightly-tue/manifest.json"),
    ({"scheduleName": SCHEDULE, "before": "2026-11-24T02:05:00Z"},
     "p/prod/nightly-mon/manifest.json"),
    ({"scheduleName": "weekly"}, "p/prod/weekly-sun/manifest.json"),
    ({"before": "2026-11-25T00:00:00Z"}, "p/prod/weekly-sun/manifest.json"),
])
def test_choose_latest_in_bucket(fields: dict[str, Any], chosen: str) -> None:
    latest = parse(models.BucketLatest, fields)
    assert decide.choose_latest_in_bucket(latest, "prod", IN_BUCKET, STORAGE).key == chosen


def test_a_tie_goes_to_the_later_key() -> None:
    same = _at("2026-11-24T02:05:00Z")
    entries = [decide.BucketEntry("p/a/x/manifest.json", "a", {}, same),
               decide.BucketEntry("p/a/y/manifest.json", "a", {}, same)]
    latest = models.BucketLatest()
    assert decide.choose_latest_in_bucket(latest, "a", entries, STORAGE).key == \
        "p/a/y/manifest.json"


def test_nothing_in_the_bucket_says_where_it_looked_and_what_it_skipped() -> None:
    latest = parse(models.BucketLatest, {"scheduleName": "hourly",
                                         "before": "2026-01-01T00:00:00Z"})
    with pytest.raises(RestoreFailed) as info:
        decide.choose_latest_in_bucket(latest, "prod", IN_BUCKET, STORAGE)
    assert info.value.reason == "NoMatchingBackup"
    assert str(info.value) == (
        "no backup of namespace prod and schedule hourly completed before "
        "2026-01-01T00:00:00Z in s3://b/p (1 unreadable manifest skipped)")
    with pytest.raises(RestoreFailed, match=r"^no backup of namespace dev in s3://b/p$"):
        decide.choose_latest_in_bucket(models.BucketLatest(), "dev", [], STORAGE)


def test_a_bucket_before_that_is_no_time_is_an_invalid_spec() -> None:
    with pytest.raises(RestoreFailed) as info:
        decide.choose_latest_in_bucket(models.BucketLatest(before="soon"), "prod", IN_BUCKET,
                                       STORAGE)
    assert info.value.reason == "InvalidSpec"


def test_locate_from_the_bucket_records_the_choice_and_its_time() -> None:
    spec = parse(models.RestoreSpec, {"source": {"storage": {"bucket": "b"},
                                                 "latest": {"scheduleName": SCHEDULE}}})
    defaults = Defaults(storage=parse(models.StorageSpec, {"prefix": "p", "bucket": "old"}))
    assert decide.bucket_namespace(spec, "prod") == "prod"
    location = decide.locate(spec, None, defaults, in_bucket=IN_BUCKET, namespace="prod")
    assert location == decide.Location(
        storage={"prefix": "p", "bucket": "b"}, manifest_key="p/prod/nightly-tue/manifest.json",
        database={}, uploads={}, completion_time="2026-11-24T02:05:00Z")
    with_db = Defaults(database=parse(models.DatabaseSpec, DB_SETTINGS))
    resolved = decide.resolve(spec, decide.source(location, "id", ["database"], [], with_db))
    assert dump(decide.restored_from(spec, resolved)) == {
        "manifestKey": "p/prod/nightly-tue/manifest.json", "backupId": "id",
        "completionTime": "2026-11-24T02:05:00Z"}


def test_the_bucket_namespace_is_the_one_named_else_the_restores() -> None:
    spec = parse(models.RestoreSpec, {"source": {"storage": {}, "latest": {"namespace": "old"}}})
    assert decide.bucket_namespace(spec, "new") == "old"
    by_key = parse(models.RestoreSpec,
                   {"source": {"storage": {}, "manifestKey": "k/manifest.json"}})
    assert decide.bucket_namespace(by_key, "new") == "new"
    assert decide.locate(by_key, None, Defaults()).manifest_key == "k/manifest.json"


def test_a_source_with_neither_key_nor_latest_is_refused() -> None:
    # The API server's CEL refuses it first; an object written before the rule still ends.
    spec = models.RestoreSpec(source=models.RestoreSource(storage=models.StorageSpec()))
    with pytest.raises(RestoreFailed, match="manifestKey or latest"):
        decide.locate(spec, None, Defaults())


# --- selective database restore --------------------------------------------------------


def source(fmt: str | None, components: tuple[str, ...] = ("database", "uploads")
           ) -> decide.Source:
    return decide.Source(
        storage={"bucket": "b"}, manifest_key="k", backup_id="id", components=list(components),
        encrypted=[], database={"host": "db", "name": "app", "user": "u",
                                "passwordSecretRef": {"name": "s", "key": "p"}},
        uploads={"claimName": "uploads"}, database_format=fmt)


@pytest.mark.parametrize(("target", "fields"), [
    (None, []),
    ({}, []),
    ({"tables": ["timesheets"]}, ["tables"]),
    ({"schemas": ["public"], "dataOnly": True}, ["schemas", "dataOnly"]),
    ({"tables": ["a"], "schemas": ["s"], "schemaOnly": True},
     ["tables", "schemas", "schemaOnly"]),
    ({"tables": []}, []),
])
def test_selection(target: dict[str, Any] | None, fields: list[str]) -> None:
    parsed = parse(models.RestoreDatabaseTarget, target, "database") if target is not None \
        else None
    assert decide.selection(parsed) == fields


@pytest.mark.parametrize(("database", "fmt", "components", "refused"), [
    ({"tables": ["timesheets"]}, "plain", None, True),
    ({"dataOnly": True, "clean": False}, "plain", None, True),
    ({"tables": ["timesheets"]}, "custom", None, False),
    ({"schemas": ["public"]}, "directory", None, False),
    ({}, "plain", None, False),  # a whole plain dump restores as before
    ({"tables": ["timesheets"]}, "plain", ["uploads"], False),  # the database is not restored
    ({"tables": ["timesheets"]}, None, None, False),  # format unknown: the agent checks
])
def test_a_plain_dump_is_not_restored_selectively(database: dict[str, Any], fmt: str | None,
                                                  components: list[str] | None,
                                                  refused: bool) -> None:
    spec = parse(models.RestoreSpec, {"backupName": "b", "database": database,
                                      **({"components": components} if components else {})})
    if not refused:
        decide.resolve(spec, source(fmt))
        return
    with pytest.raises(RestoreFailed) as info:
        decide.resolve(spec, source(fmt))
    assert info.value.reason == "SelectiveRestoreUnsupported"
    assert "plain SQL dump" in str(info.value) and "custom or directory" in str(info.value)
    assert str(info.value).startswith("database.")


# --- pg_restore arguments and the agent's own checks -------------------------------------


CONN = Connection(host="db", user="u", dbname="side")


@pytest.mark.parametrize(("selection", "args"), [
    (Selection(), []),
    (Selection(tables=("timesheets", "-x")), ["--table=timesheets", "--table=-x"]),
    (Selection(schemas=("public",), data_only=True), ["--schema=public", "--data-only"]),
    (Selection(schema_only=True), ["--schema-only"]),
])
def test_selection_args(selection: Selection, args: list[str]) -> None:
    assert pgtools.selection_args(selection) == args
    options = RestoreOptions("custom", clean=True, extra=tuple(args))
    restore = pgtools.pg_restore_args(CONN, options, None)
    assert restore[restore.index("--if-exists") + 1:restore.index("--dbname")] == args
    assert pgtools.pg_restore_script_args(options, None)[-len(args) or None:] == (
        args or pgtools.pg_restore_script_args(options, None)[-0:])


@pytest.mark.parametrize(("selection", "text"), [
    (Selection(), "everything"),
    (Selection(tables=("a",), schemas=("s",), data_only=True),
     "table a, schema s, data only"),
    (Selection(schema_only=True), "schema only"),
])
def test_selection_describe(selection: Selection, text: str) -> None:
    assert selection.describe() == text and bool(selection) is (text != "everything")


@pytest.mark.parametrize(("request_", "message"), [
    (RestoreRequest("k", selection=Selection(data_only=True, schema_only=True)),
     "exclude each other"),
    (RestoreRequest("k", clean=True, selection=Selection(data_only=True)), "not with --clean"),
    (RestoreRequest("k", selection=Selection(tables=("",))), "need a name"),
    (RestoreRequest("k", uploads_paths=("a/*",)), "--uploads-mode merge"),
    (RestoreRequest("k", uploads_mode="merge", uploads_paths=("./",)), "needs a pattern"),
])
def test_the_agent_refuses(request_: RestoreRequest, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        request_.validate()


def test_the_agent_accepts_a_selection() -> None:
    RestoreRequest("k", selection=Selection(data_only=True)).validate()
    RestoreRequest("k", clean=True, selection=Selection(tables=("a",))).validate()
    RestoreRequest("k", uploads_mode="merge", uploads_paths=("2024/*",)).validate()


# --- uploads paths ---------------------------------------------------------------------


@pytest.mark.parametrize(("path", "patterns", "selected"), [
    ("invoices/2024/a.pdf", ["invoices"], True),  # a directory brings its subtree
    ("x/invoices/a.pdf", ["invoices"], True),  # a name at any depth
    ("x/invoices/a.pdf", ["/invoices"], False),  # anchored at the root
    ("2024/03/a.pdf", ["2024/*"], True),
    ("2023/03/a.pdf", ["2024/*"], False),
    ("a/b.pdf", ["*.pdf"], True),
    ("a/b.txt", ["*.pdf", "c"], False),
    ("a", ["a/b"], False),  # a parent of a selection is not itself selected
])
def test_is_selected(path: str, patterns: list[str], selected: bool) -> None:
    assert tarstream.is_selected(path, patterns) is selected


def _member(tar: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE,
            data: bytes = b"", mode: int = 0o640, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.linkname = kind, mode, 1_700_000_000, link
    info.uid, info.gid = os.geteuid(), os.getegid()
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def archive() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _member(tar, ".", tarfile.DIRTYPE, mode=0o755)
        _member(tar, "2023", tarfile.DIRTYPE, mode=0o750)
        _member(tar, "2023/old.pdf", data=b"old")
        _member(tar, "2024", tarfile.DIRTYPE, mode=0o2750)
        _member(tar, "2024/03", tarfile.DIRTYPE, mode=0o2770)
        _member(tar, "2024/03/a.pdf", data=b"a")
        _member(tar, "2024/03/a-link.pdf", tarfile.LNKTYPE, link="2024/03/a.pdf")
        _member(tar, "2024/03/old-link.pdf", tarfile.LNKTYPE, link="2023/old.pdf")
        _member(tar, "2024/notes.txt", data=b"n")
    return buf.getvalue()


def test_only_selected_paths_are_extracted_with_their_parents_attributes(
        tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    result = tarstream.SafeExtractor(staging, include=("2024/03/*.pdf",)).extract(
        io.BytesIO(archive()))
    files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*"))
    assert files == ["2024", "2024/03", "2024/03/a-link.pdf", "2024/03/a.pdf"]
    # the parents were not selected, yet get the modes the archive records for them
    assert (staging / "2024").stat().st_mode & 0o7777 == 0o2750
    assert (staging / "2024/03").stat().st_mode & 0o7777 == 0o2770
    # old-link.pdf is a hard link to a file left out: skipped, counted
    assert (result.stats.selected, result.stats.unselected) == (2, 6)
    assert result.stats.file_count == 2


def test_without_paths_everything_is_extracted(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    result = tarstream.SafeExtractor(staging).extract(io.BytesIO(archive()))
    assert result.stats.file_count == 5 and result.stats.unselected == 0


def test_a_hostile_member_is_refused_even_when_not_selected(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _member(tar, "keep/a.pdf", data=b"a")
        _member(tar, "../escape.txt", data=b"x")
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(ArchiveError, match=r"'\.\.'"):
        tarstream.SafeExtractor(staging, include=("keep",)).extract(io.BytesIO(buf.getvalue()))
    assert not (tmp_path / "escape.txt").exists()
