"""The API models, their parsing and the CRDs generated from them."""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from cronsim import CronSim, CronSimError

from timesheet_backup.api import crds, fields, models
from timesheet_backup.api.validation import (
    CRON_PATTERN,
    DURATION_PATTERN,
    TIME_ZONE_PATTERN,
    parse_duration,
)
from timesheet_backup.schedule import cron

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("directory", ["crds", "charts/timesheet-backup-operator/crds"])
@pytest.mark.parametrize("definition", crds.DEFINITIONS, ids=lambda d: d.kind)
def test_committed_crds_are_current(definition: crds.CrdDefinition, directory: str) -> None:
    """One source of truth: the models. crds/ and the chart's copy must match them."""
    committed = (ROOT / directory / crds.file_name(definition)).read_text()
    assert committed == crds.render(definition), f"{directory}/ is stale: run `make crds`"


def test_api_reference_is_current() -> None:
    from timesheet_backup.api import docs

    committed = (ROOT / "docs" / "api.md").read_text()
    assert committed == docs.render(), "docs/api.md is stale: run `make crds`"


def _walk(schema: dict[str, Any], path: str = ""):  # type: ignore[no-untyped-def]
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("definition", crds.DEFINITIONS, ids=lambda d: d.kind)
def test_schema_is_structural_and_documented(definition: crds.CrdDefinition) -> None:
    schema = crds.crd(definition)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema["properties"]["spec"], "spec"):
        if node.get("x-kubernetes-preserve-unknown-fields"):
            continue
        assert "type" in node, f"{path} has no type (not structural)"
        if path != "spec" and not path.endswith(("[]", "{}")):
            assert node.get("description"), f"{path} has no description"
        if node["type"] == "string" and "enum" not in node:
            assert "maxLength" in node, f"{path}: unbounded string makes CEL rules too costly"
        if node["type"] == "array":
            assert "maxItems" in node, f"{path}: unbounded list"


def test_spec_of_backup_and_restore_is_immutable_but_schedule_is_not() -> None:
    def rules(kind: str) -> list[str]:
        (definition,) = [d for d in crds.DEFINITIONS if d.kind == kind]
        spec = crds.crd(definition)["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
            "properties"
        ]["spec"]
        return [r["rule"] for r in spec.get("x-kubernetes-validations", [])]

    assert "self == oldSelf" in rules("Backup")
    assert "self == oldSelf" in rules("Restore")
    assert "self == oldSelf" not in rules("BackupSchedule")


def test_every_model_field_is_in_the_schema_and_back() -> None:
    """Parsing the JSON form of a fully populated model gives the same model."""
    spec = models.BackupSpec(
        components=["database"],
        database=models.DatabaseSpec(
            host="db", port=5432, name="timesheet_db", user="timesheet",
            password_secret_ref=models.SecretKeyRef(name="db", key="password"),
            ssl_mode="require", format="directory", jobs=4, exclude_tables=["audit_*"],
            no_owner=True,
        ),
        storage=models.StorageSpec(
            bucket="backups", prefix="timesheet", endpoint="http://s3:9000",
            force_path_style=True,
            credentials_secret_ref=models.CredentialsSecretRef(name="s3"),
            server_side_encryption=models.ServerSideEncryption(type="aws:kms", kms_key_id="k"),
        ),
        compression=models.CompressionSpec(algorithm="gzip", level=9),
        deletion_policy="Retain",
        job=models.JobSpec(backoff_limit=0, node_selector={"a": "b"}, resources={"x": 1}),
    )
    data = fields.dump(spec)
    assert data["database"]["passwordSecretRef"] == {"name": "db", "key": "password"}
    assert data["storage"]["credentialsSecretRef"]["accessKeyIdKey"] == "AWS_ACCESS_KEY_ID"
    assert fields.parse(models.BackupSpec, data) == spec

    schema = fields.schema_for(models.BackupSpec)
    for f in dataclasses.fields(models.BackupSpec):
        assert fields.json_name(f) in schema["properties"]


def test_minimal_specs_take_the_defaults() -> None:
    backup = fields.parse(models.BackupSpec, {})
    assert backup.components == ["database", "uploads"]
    assert backup.deletion_policy == "Delete"
    schedule = fields.parse(models.BackupScheduleSpec, {"schedule": "0 2 * * *"})
    assert schedule.concurrency_policy == "Forbid"
    assert schedule.backup_owner_reference == "none"
    assert schedule.template == models.BackupTemplate()


@pytest.mark.parametrize(
    ("cls", "data", "message"),
    [
        (models.BackupSpec, {"components": ["logs"]}, "spec.components[0]: 'logs' is not one of"),
        (models.BackupSpec, {"databse": {}}, "unknown field(s) databse"),
        (models.BackupSpec, {"database": {"port": "5432"}}, "spec.database.port: expected an"),
        (models.BackupScheduleSpec, {}, "spec.schedule: a value is required"),
        (models.RestoreSpec, {"source": {"manifestKey": "m"}}, "spec.source.storage: a value"),
        (models.BackupSpec, [], "spec: expected a mapping"),
    ],
)
def test_parse_names_the_bad_field(cls: type[Any], data: Any, message: str) -> None:
    with pytest.raises(fields.SpecError, match=re.escape(message)):
        fields.parse(cls, data)


VALID_CRON = [
    "0 2 * * *", "0 3 * * 0", "*/5 * * * *", "0 0 1 * *", "30 4 1,15 * MON-FRI",
    "0 0 * JAN,JUL sun", "@daily", "@hourly", "59 23 31 12 7", "0-30/10 8-18 * * 1-5",
]
INVALID_CRON = [
    "", "0 2 * *", "0 2 * * * *", "60 * * * *", "0 24 * * *", "0 0 0 * *", "0 0 32 * *",
    "0 0 * 13 *", "0 0 * * 8", "*/0 * * * *", "@fortnightly", "0 2 * * *; rm -rf /",
    "0 2 * * *\n", "a b c d e",
]


@pytest.mark.parametrize("expr", VALID_CRON)
def test_cron_pattern_accepts_what_cronsim_runs(expr: str) -> None:
    assert re.fullmatch(CRON_PATTERN, expr)
    CronSim(cron.normalize(expr), datetime(2026, 1, 1))


@pytest.mark.parametrize("expr", INVALID_CRON)
def test_cron_pattern_refuses(expr: str) -> None:
    assert not re.fullmatch(CRON_PATTERN, expr)


def test_cron_pattern_never_accepts_what_cronsim_refuses() -> None:
    """Exhaustive over single-field variations: the API server must not admit a schedule the
    operator cannot run."""
    samples = ["*", "0", "5", "59", "60", "1-5", "5-1", "*/7", "1,2", "0-59/15", "JAN", "SUN"]
    for position in range(5):
        for sample in samples:
            parts = ["0", "0", "1", "1", "0"]
            parts[position] = sample
            expr = " ".join(parts)
            if re.fullmatch(CRON_PATTERN, expr):
                try:
                    CronSim(expr, datetime(2026, 1, 1))
                except CronSimError as exc:  # pragma: no cover - the assertion below reports
                    if "5-1" not in expr:
                        raise AssertionError(f"{expr!r} admitted but cronsim says {exc}") from exc


@pytest.mark.parametrize("text,seconds", [("30d", 2592000), ("12h", 43200), ("4w", 2419200)])
def test_durations(text: str, seconds: int) -> None:
    assert re.fullmatch(DURATION_PATTERN, text)
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0d", "30", "d", "30m", "-1d", "1.5d", "999999d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "America/Argentina/Buenos_Aires",
                                  "Etc/GMT+5"])
def test_time_zone_shape(zone: str) -> None:
    assert re.fullmatch(TIME_ZONE_PATTERN, zone)


@pytest.mark.parametrize("zone", ["", "/etc/passwd", "../x", "Europe/Berlin/x/y", "a b"])
def test_time_zone_shape_refuses(zone: str) -> None:
    assert not re.fullmatch(TIME_ZONE_PATTERN, zone)


def test_crd_files_parse_as_yaml_with_the_group() -> None:
    for definition in crds.DEFINITIONS:
        doc = yaml.safe_load((ROOT / "crds" / crds.file_name(definition)).read_text())
        assert doc["spec"]["group"] == "backup.northstar.io"
        assert doc["spec"]["names"]["categories"] == ["timesheet-backup"]
        assert doc["spec"]["versions"][0]["subresources"] == {"status": {}}
