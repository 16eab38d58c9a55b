"""Backup then restore, for every supported format x compression x encryption: the restored
database is identical (data, catalog, sequences, owners, privileges) and the restored
uploads tree is identical (types, modes, nanosecond mtimes, symlink targets, contents)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.support import dbsnapshot
from tests.support.agent import (
    agent_env,
    backup_args,
    db_snapshot,
    manifest_key,
    new_identity,
    read_manifest,
    restore_args,
    run_agent,
)
from tests.support.pgserver import PostgresServer
from tests.support.s3server import S3Server
from tests.support.trees import assert_same_tree, snapshot_tree
from timesheet_backup.api.enums import COMPRESSIONS, DUMP_FORMATS

# Every format and compression the API allows is round-tripped (api/enums.py); the key
# names expected for them are written out below, so a new value needs its expectation.
ENCRYPTIONS = (False, True)
EXTENSIONS = {"custom": "dump", "plain": "sql", "directory": "dir.tar"}
SUFFIX = {"zstd": ".zst", "gzip": ".gz", "none": ""}


def tree(root: Path) -> dict[str, dict[str, object]]:
    return snapshot_tree(root, mtime_ns=True, owners=os.geteuid() == 0)


@pytest.mark.parametrize("encrypted", ENCRYPTIONS, ids=("plaintext", "age"))
@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("fmt", DUMP_FORMATS)
def test_round_trip(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    sample_db: str,
    scratch_db_name: str,
    uploads_tree: Path,
    tmp_path: Path,
    fmt: str,
    compression: str,
    encrypted: bool,
) -> None:
    extra = ["--db-format", fmt, "--compression", compression]
    restore_env: dict[str, str] = {}
    if encrypted:
        public, private, _ = new_identity(tmp_path)
        extra += ["--age-recipient", public]
        restore_env["TSB_AGE_IDENTITY"] = private
    if fmt == "directory":
        extra += ["--db-jobs", "2"]
    before_db = db_snapshot(pg, sample_db)
    before_tree = tree(uploads_tree)

    run = run_agent(
        backup_args(pg, s3, bucket, sample_db, uploads_tree, extra=extra),
        agent_env(tmp_path, pg, s3),
        tmp_path,
    )
    assert run.returncode == 0, run.describe()
    assert run.termination is not None and run.termination["ok"] is True
    key = manifest_key()
    assert run.termination["manifestKey"] == key

    manifest = read_manifest(s3, bucket, key)
    database, uploads = manifest["artifacts"]
    age = ".age" if encrypted else ""
    assert database["key"].endswith(f"database.{EXTENSIONS[fmt]}{SUFFIX[compression]}{age}")
    assert uploads["key"].endswith(f"uploads.tar{SUFFIX[compression]}{age}")
    for artifact in (database, uploads):
        stored = s3.get_bytes(bucket, artifact["key"])
        assert len(stored) == artifact["sizeBytes"]
        assert hashlib.sha256(stored).hexdigest() == artifact["sha256"]
        assert "size" in artifact["verified"] and len(artifact["verified"]) == 2
        assert artifact["encryption"] == ("age" if encrypted else "none")
    assert database["format"] == fmt and database["serverVersion"]
    assert uploads["fileCount"] == sum(1 for v in before_tree.values() if v["type"] == "file")

    target_dir = tmp_path / "restored-uploads"
    run = run_agent(
        restore_args(
            pg,
            s3,
            bucket,
            key,
            scratch_db_name,
            target_dir,
            extra=["--create-database", "--check", "SELECT count(*) > 0 FROM public.timesheets"],
        ),
        agent_env(tmp_path, pg, s3, restore_env),
        tmp_path,
    )
    assert run.returncode == 0, run.describe()
    assert run.termination is not None and run.termination["ok"] is True
    assert run.termination["database"]["checks"][0]["ok"] is True

    dbsnapshot.assert_same(before_db, db_snapshot(pg, scratch_db_name))
    assert_same_tree(before_tree, tree(target_dir))
