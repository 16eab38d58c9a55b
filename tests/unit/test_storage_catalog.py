"""Listing backups from their manifests (pure parts) and the error messages of S3."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from timesheet_backup.storage import catalog, s3errors
from timesheet_backup.storage import manifest as mf

pytestmark = pytest.mark.unit


def manifest(name: str, hour: int, encrypted: bool = False) -> mf.Manifest:
    t = datetime(2024, 1, 15, hour, tzinfo=UTC)
    return mf.Manifest(
        backup_id=name,
        namespace="prod",
        name=name,
        start_time=t,
        completion_time=t,
        agent_version="0",
        artifacts=(
            mf.Artifact(
                component="database",
                key=f"p/prod/{name}/database.dump",
                size_bytes=3 * 1024 * 1024,
                sha256="a" * 64,
                format="custom",
                compression="none",
                encryption="age" if encrypted else "none",
                recipients=("age1x",) if encrypted else (),
            ),
        ),
    )


def test_sort_table_and_json() -> None:
    entries = [
        catalog.Entry("p/prod/broken/manifest.json", None, "manifest: not valid JSON"),
        catalog.Entry("p/prod/old/manifest.json", manifest("old", 1)),
        catalog.Entry("p/prod/new/manifest.json", manifest("new", 5, encrypted=True)),
    ]
    ordered = catalog.sort_entries(entries)
    assert [e.key.split("/")[2] for e in ordered] == ["new", "old", "broken"]
    table = catalog.format_table(ordered).splitlines()
    assert table[0].split() == [
        "NAMESPACE",
        "NAME",
        "COMPLETED",
        "COMPONENTS",
        "SIZE",
        "ENCRYPTED",
        "MANIFEST",
    ]
    assert table[1].split()[:6] == [
        "prod",
        "new",
        "2024-01-15T05:00:00Z",
        "database",
        "3.0MiB",
        "yes",
    ]
    assert "invalid: manifest: not valid JSON" in table[3]
    as_json = catalog.to_json(ordered)
    assert as_json[0]["manifest"]["name"] == "new"
    assert as_json[2] == {
        "manifestKey": "p/prod/broken/manifest.json",
        "error": "manifest: not valid JSON",
    }


def client_error(code: str, message: str = "") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "HeadBucket")


@pytest.mark.parametrize(
    ("exc", "key", "expected"),
    [
        (client_error("NoSuchBucket"), "k", "bucket 'b' does not exist"),
        (client_error("404"), None, "bucket 'b' does not exist"),
        (client_error("NoSuchKey"), "k", "s3://b/k does not exist"),
        (client_error("AccessDenied"), "k", "access denied to s3://b/k"),
        (client_error("403"), None, "access denied to s3://b"),
        (client_error("SignatureDoesNotMatch"), None, "refused the credentials"),
        (client_error("SlowDown", "reduce your rate"), "k", "SlowDown: reduce your rate"),
        (NoCredentialsError(), None, "no S3 credentials"),
        (EndpointConnectionError(endpoint_url="http://x"), None, "cannot reach the object store"),
    ],
)
def test_s3_error_messages(exc: Exception, key: str | None, expected: str) -> None:
    assert expected in str(s3errors.describe(exc, "read", "b", key))
