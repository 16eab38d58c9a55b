"""Backup settings as the object store sees them: multipart uploads of several parts and
their verification, checksums off, storage class, labels, an empty prefix."""

from __future__ import annotations

from pathlib import Path

from tests.support import dbsnapshot
from tests.support.agent import (
    agent_env,
    backup_args,
    db_snapshot,
    manifest_key,
    read_manifest,
    restore_args,
    run_agent,
)
from tests.support.pgserver import PostgresServer
from tests.support.s3server import S3Server, WireTap


def test_many_parts_verified_by_composite_checksum(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    sample_db: str,
    scratch_db_name: str,
    tmp_path: Path,
) -> None:
    extra = (
        "--compression",
        "none",
        "--part-size",
        "5MiB",
        "--concurrency",
        "2",
        "--storage-class",
        "STANDARD_IA",
        "--label",
        "backup.northstar.io/schedule=nightly",
    )
    with WireTap((s3.host, s3.port)) as tap:
        run = run_agent(
            backup_args(pg, s3, bucket, sample_db, None, extra=extra, endpoint=tap.url),
            agent_env(tmp_path, pg, s3),
            tmp_path,
        )
    assert run.returncode == 0, run.describe()
    # The storage class, on every request that makes an object (the multipart upload's
    # start, the manifest's PUT): versitygw reports STANDARD for any object, so the wire is
    # where the class can be seen.
    made = [r for r in tap.requests()
            if (r.method == "POST" and r.target.endswith("?uploads"))
            or (r.method == "PUT" and "partNumber=" not in r.target)]
    assert sorted(r.method for r in made) == ["POST", "PUT"], made
    assert [r.headers.get("x-amz-storage-class") for r in made] == ["STANDARD_IA"] * 2, made
    manifest = read_manifest(s3, bucket, manifest_key())
    (artifact,) = manifest["artifacts"]
    assert artifact["sizeBytes"] > 5 * 1024 * 1024  # more than one part
    assert artifact["verified"] == ["size", "checksum-sha256"]
    assert manifest["labels"] == {"backup.northstar.io/schedule": "nightly"}
    head = s3.client().head_object(Bucket=bucket, Key=artifact["key"], ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"].endswith(f"-{artifact['sizeBytes'] // (5 * 1024 * 1024) + 1}")

    run = run_agent(
        restore_args(
            pg, s3, bucket, manifest_key(), scratch_db_name, None, extra=["--create-database"]
        ),
        agent_env(tmp_path, pg, s3),
        tmp_path,
    )
    assert run.returncode == 0, run.describe()
    dbsnapshot.assert_same(db_snapshot(pg, sample_db), db_snapshot(pg, scratch_db_name))


def test_without_checksums_the_etag_is_checked(
    pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str, tmp_path: Path
) -> None:
    run = run_agent(
        backup_args(pg, s3, bucket, sample_db, None, extra=("--no-checksums",), prefix=""),
        agent_env(tmp_path, pg, s3),
        tmp_path,
    )
    assert run.returncode == 0, run.describe()
    manifest = read_manifest(s3, bucket, "prod/nightly/manifest.json")
    assert manifest["artifacts"][0]["verified"] == ["size", "etag-md5"]
    assert manifest["artifacts"][0]["key"] == "prod/nightly/database.dump.zst"
