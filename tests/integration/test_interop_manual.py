"""Interoperability with standard tools, both ways (docs/manual-restore.md shows the same
commands):

- what the agent wrote restores by hand: `zstd -d | pg_restore`, `gunzip -c | psql`,
  `age -d`, `tar -x`, after a `sha256sum` check against the manifest;
- what the guide's own commands made (`pg_dump | gzip`, `pg_dump -Fc`, `tar -czf`) is
  brought in with `catalog import`, or with a hand-written manifest, and restored by the
  agent.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
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
    s3_args,
)
from tests.support.dbsnapshot import APP_ROLE
from tests.support.pgserver import PostgresServer
from tests.support.s3server import S3Server
from tests.support.trees import assert_same_tree, snapshot_tree

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("zstd", "age", "gzip", "tar")),
    reason="needs the zstd, age, gzip and tar command-line tools",
)


def sh(script: str, env: dict[str, str], cwd: Path) -> None:
    """Run a by-hand pipeline exactly as a person would type it."""
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, f"{script}\n{proc.stdout}\n{proc.stderr}"


def pg_env(pg: PostgresServer, tmp_path: Path) -> dict[str, str]:
    """The by-hand tools connect as the application's owner role, like the guide's
    `pg_dump -U timesheet timesheet_db`."""
    return {
        "PATH": f"{pg.bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        **pg.env(user=APP_ROLE),
    }


def download(s3: S3Server, bucket: str, key: str, directory: Path) -> Path:
    path = directory / key.rsplit("/", 1)[-1]
    path.write_bytes(s3.get_bytes(bucket, key))
    return path


def check_sha256(path: Path, artifact: dict[str, object], env: dict[str, str]) -> None:
    """What docs/manual-restore.md asks first: the file is the one the manifest describes."""
    sh(f"echo '{artifact['sha256']}  {path.name}' | sha256sum -c -", env, path.parent)


# --- agent artifacts, restored by hand -------------------------------------------------


@pytest.mark.parametrize(
    ("options", "script"),
    [
        (
            ["--db-format", "custom", "--compression", "zstd"],
            'zstd -dc database.dump.zst | pg_restore --exit-on-error -d "$TARGET"',
        ),
        (
            ["--db-format", "plain", "--compression", "gzip"],
            'gunzip -c database.sql.gz | psql -X -q -v ON_ERROR_STOP=1 -d "$TARGET" >/dev/null',
        ),
        (
            ["--db-format", "custom", "--compression", "none"],
            'pg_restore --exit-on-error -d "$TARGET" database.dump',
        ),
        (
            ["--db-format", "custom", "--compression", "zstd", "--age-recipient", "KEY"],
            "age -d -i age-key.txt database.dump.zst.age | zstd -d "
            '| pg_restore --exit-on-error -d "$TARGET"',
        ),
        (
            ["--db-format", "plain", "--compression", "zstd", "--age-recipient", "KEY"],
            "age -d -i age-key.txt database.sql.zst.age | zstd -d "
            '| psql -X -q -v ON_ERROR_STOP=1 -d "$TARGET" >/dev/null',
        ),
        (
            ["--db-format", "directory", "--db-jobs", "2", "--compression", "zstd"],
            "mkdir dump && zstd -dc database.dir.tar.zst | tar -x -C dump "
            '&& pg_restore --exit-on-error -j 2 -d "$TARGET" dump',
        ),
    ],
    ids=[
        "custom-zstd",
        "plain-gzip",
        "custom-none",
        "custom-zstd-age",
        "plain-zstd-age",
        "directory-zstd",
    ],
)
def test_database_artifact_restores_by_hand(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    sample_db: str,
    scratch_db_name: str,
    tmp_path: Path,
    options: list[str],
    script: str,
) -> None:
    public, _, key_file = new_identity(tmp_path)
    options = [public if o == "KEY" else o for o in options]
    run = run_agent(
        backup_args(pg, s3, bucket, sample_db, None, extra=options),
        agent_env(tmp_path, pg, s3),
        tmp_path,
    )
    assert run.returncode == 0, run.describe()
    artifact = read_manifest(s3, bucket, manifest_key())["artifacts"][0]
    work = tmp_path / "by-hand"
    work.mkdir()
    shutil.copy(key_file, work / "age-key.txt")
    path = download(s3, bucket, artifact["key"], work)
    env = pg_env(pg, tmp_path)
    check_sha256(path, artifact, env)

    pg.create_database(scratch_db_name, owner=APP_ROLE)  # CREATE DATABASE ... OWNER timesheet
    sh(script, {**env, "TARGET": scratch_db_name}, work)
    dbsnapshot.assert_same(db_snapshot(pg, sample_db), db_snapshot(pg, scratch_db_name))


@pytest.mark.parametrize(
    ("options", "script"),
    [
        (["--compression", "zstd"], "zstd -dc uploads.tar.zst | tar -x -C restored"),
        (["--compression", "gzip"], "tar -xzf uploads.tar.gz -C restored"),
        (["--compression", "none"], "tar -xf uploads.tar -C restored"),
        (
            ["--compression", "gzip", "--age-recipient", "KEY"],
            "age -d -i age-key.txt uploads.tar.gz.age | tar -xz -C restored",
        ),
    ],
    ids=["zstd", "gzip", "none", "gzip-age"],
)
def test_uploads_artifact_extracts_by_hand(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    sample_db: str,
    uploads_tree: Path,
    tmp_path: Path,
    options: list[str],
    script: str,
) -> None:
    public, _, key_file = new_identity(tmp_path)
    options = [public if o == "KEY" else o for o in options]
    args = backup_args(pg, s3, bucket, sample_db, uploads_tree, extra=options)
    args[args.index("--component") + 1] = "uploads"  # uploads only
    run = run_agent(args, agent_env(tmp_path, pg, s3), tmp_path)
    assert run.returncode == 0, run.describe()
    (artifact,) = read_manifest(s3, bucket, manifest_key())["artifacts"]
    work = tmp_path / "by-hand"
    (work / "restored").mkdir(parents=True)
    shutil.copy(key_file, work / "age-key.txt")
    path = download(s3, bucket, artifact["key"], work)
    env = pg_env(pg, tmp_path)
    check_sha256(path, artifact, env)
    sh(script, env, work)
    owners = os.geteuid() == 0
    assert_same_tree(
        snapshot_tree(uploads_tree, mtime_ns=True, owners=owners),
        snapshot_tree(work / "restored", mtime_ns=True, owners=owners),
    )


# --- the guide's backups, restored by the agent ----------------------------------------


def test_guide_backups_import_and_restore(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    sample_db: str,
    scratch_db_name: str,
    uploads_tree: Path,
    tmp_path: Path,
) -> None:
    """The guide's cron lines: `pg_dump ... | gzip > db_DATE.sql.gz` and
    `tar -czvf uploads_DATE.tar.gz uploads/` (run from the application directory)."""
    env = pg_env(pg, tmp_path)
    legacy = tmp_path / "backups"
    legacy.mkdir()
    sh(
        f'pg_dump -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" {sample_db} | gzip '
        f"> {legacy}/db_20240115.sql.gz",
        env,
        tmp_path,
    )
    sh(f"tar -czvf {legacy}/uploads_20240115.tar.gz uploads/", env, uploads_tree.parent)

    run = run_agent(
        [
            "catalog",
            "import",
            "--namespace",
            "prod",
            "--name",
            "legacy-20240115",
            "--database-file",
            str(legacy / "db_20240115.sql.gz"),
            "--database-name",
            sample_db,
            "--uploads-file",
            str(legacy / "uploads_20240115.tar.gz"),
            "--uploads-strip-components",
            "1",
            "--uploads-source-path",
            str(uploads_tree.resolve()),
            "--time",
            "2024-01-15T02:00:00Z",
            *s3_args(s3, bucket),
        ],
        agent_env(tmp_path, None, s3),
        tmp_path,
    )
    assert run.returncode == 0, run.describe()
    key = manifest_key("legacy-20240115")
    manifest = read_manifest(s3, bucket, key)
    database, uploads = manifest["artifacts"]
    assert manifest["source"] == "import" and manifest["startTime"] == "2024-01-15T02:00:00Z"
    assert (database["format"], database["compression"]) == ("plain", "gzip")
    assert (uploads["format"], uploads["compression"]) == ("tar", "gzip")
    # Counted from the archive as the agent counts its own, so a restore compares them.
    files = [p for p in uploads_tree.rglob("*") if p.is_file() and not p.is_symlink()]
    assert uploads["fileCount"] == len(files)
    assert uploads["contentBytes"] == sum({p.stat().st_ino: p.stat().st_size
                                           for p in files}.values())
    stored = s3.get_bytes(bucket, database["key"])
    assert stored == (legacy / "db_20240115.sql.gz").read_bytes()  # byte for byte

    target = tmp_path / "restored-uploads"
    run = run_agent(
        restore_args(pg, s3, bucket, key, scratch_db_name, target, extra=["--create-database"]),
        agent_env(tmp_path, pg, s3),
        tmp_path,
    )
    assert run.returncode == 0, run.describe()
    assert run.termination["uploads"]["compared"].startswith(f"uploads: {len(files)} files")
    dbsnapshot.assert_same(db_snapshot(pg, sample_db), db_snapshot(pg, scratch_db_name))
    owners = os.geteuid() == 0
    # GNU tar's default format keeps whole-second mtimes
    assert_same_tree(
        snapshot_tree(uploads_tree, owners=owners), snapshot_tree(target, owners=owners)
    )


def test_guide_custom_format_dump_import(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    sample_db: str,
    scratch_db_name: str,
    tmp_path: Path,
) -> None:
    """`pg_dump -Fc timesheet_db > backup.dump` ("best for large databases")."""
    env = pg_env(pg, tmp_path)
    sh(
        f'pg_dump -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -Fc {sample_db} > backup.dump',
        env,
        tmp_path,
    )
    run = run_agent(
        [
            "catalog",
            "import",
            "--namespace",
            "prod",
            "--name",
            "legacy-dump",
            "--database-file",
            str(tmp_path / "backup.dump"),
            *s3_args(s3, bucket),
        ],
        agent_env(tmp_path, None, s3),
        tmp_path,
    )
    assert run.returncode == 0, run.describe()
    artifact = read_manifest(s3, bucket, manifest_key("legacy-dump"))["artifacts"][0]
    assert (artifact["format"], artifact["compression"]) == ("custom", "none")
    assert artifact["key"].endswith("/database.dump")
    run = run_agent(
        restore_args(
            pg,
            s3,
            bucket,
            manifest_key("legacy-dump"),
            scratch_db_name,
            None,
            extra=["--create-database", "--jobs", "2"],
        ),
        agent_env(tmp_path, pg, s3),
        tmp_path,
    )
    assert run.returncode == 0, run.describe()
    dbsnapshot.assert_same(db_snapshot(pg, sample_db), db_snapshot(pg, scratch_db_name))


def test_hand_written_manifest(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    sample_db: str,
    scratch_db_name: str,
    tmp_path: Path,
) -> None:
    """The smallest manifest docs/manual-restore.md describes, for a file copied with
    `aws s3 cp`: the agent restores it."""
    env = pg_env(pg, tmp_path)
    sh(
        f'pg_dump -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" {sample_db} | zstd -q > db.sql.zst',
        env,
        tmp_path,
    )
    raw = (tmp_path / "db.sql.zst").read_bytes()
    key = "backups/prod/by-hand/database.sql.zst"
    s3.put_bytes(bucket, key, raw)
    manifest = {
        "apiVersion": "backup.northstar.io/manifest/v1",
        "kind": "BackupManifest",
        "backupId": "by-hand-1",
        "namespace": "prod",
        "name": "by-hand",
        "source": "import",
        "startTime": "2024-01-15T02:00:00Z",
        "completionTime": "2024-01-15T02:00:00Z",
        "agentVersion": "by-hand",
        "artifacts": [
            {
                "component": "database",
                "key": key,
                "sizeBytes": len(raw),
                "sha256": hashlib.sha256(raw).hexdigest(),
                "format": "plain",
                "compression": "zstd",
                "encryption": "none",
            }
        ],
    }
    s3.put_bytes(bucket, manifest_key("by-hand"), json.dumps(manifest).encode())
    run = run_agent(
        restore_args(
            pg,
            s3,
            bucket,
            manifest_key("by-hand"),
            scratch_db_name,
            None,
            extra=["--create-database"],
        ),
        agent_env(tmp_path, pg, s3),
        tmp_path,
    )
    assert run.returncode == 0, run.describe()
    dbsnapshot.assert_same(db_snapshot(pg, sample_db), db_snapshot(pg, scratch_db_name))
