"""Restore options: in place with --clean, parallel and streaming restores, --no-owner,
table subsets, merge and replace of uploads, SQL checks, the source given by name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import dbsnapshot
from tests.support.agent import (
    DB_USER,
    agent_env,
    backup,
    backup_args,
    db_snapshot,
    manifest_key,
    restore_args,
    run_agent,
)
from tests.support.pgserver import PostgresServer
from tests.support.s3server import S3Server
from tests.support.trees import assert_same_tree, snapshot_tree


def restore(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    db: str | None,
    tmp_path: Path,
    uploads: Path | None = None,
    extra: tuple[str, ...] = (),
    ok: bool = True,
) -> object:
    run = run_agent(
        restore_args(pg, s3, bucket, manifest_key(), db, uploads, extra=extra),
        agent_env(tmp_path, pg, s3),
        tmp_path,
    )
    if ok:
        assert run.returncode == 0, run.describe()
    return run


def vandalize(pg: PostgresServer, db: str) -> None:
    """What a bad deploy does: rows changed and deleted, a table dropped, a sequence moved."""
    with pg.connection(db) as conn:
        conn.execute("UPDATE public.accounts SET display_name = 'oops'")
        conn.execute("DELETE FROM public.entries WHERE id % 2 = 0")
        conn.execute("DROP TABLE public.audit_events CASCADE")
        seq = conn.execute("SELECT pg_get_serial_sequence('public.timesheets', 'id')").fetchone()
        if seq and seq[0]:
            conn.execute("SELECT setval(%s, 999999)", (seq[0],))


@pytest.mark.parametrize("fmt", ["custom", "plain", "directory"])
def test_clean_restore_in_place(
    pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str, tmp_path: Path, fmt: str
) -> None:
    before = db_snapshot(pg, sample_db)
    backup(pg, s3, bucket, sample_db, tmp_path, extra=("--db-format", fmt))
    vandalize(pg, sample_db)
    assert dbsnapshot.diff(before, db_snapshot(pg, sample_db))
    restore(pg, s3, bucket, sample_db, tmp_path, extra=("--clean",))
    dbsnapshot.assert_same(before, db_snapshot(pg, sample_db))


def test_plain_clean_drops_objects_added_since(
    pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str, tmp_path: Path
) -> None:
    before = db_snapshot(pg, sample_db)
    backup(pg, s3, bucket, sample_db, tmp_path, extra=("--db-format", "plain"))
    with pg.connection(sample_db, user=DB_USER) as conn:  # the app (its migrations) adds them
        conn.execute("CREATE TABLE public.added_later (id int)")
        conn.execute("CREATE SCHEMA extra")
    restore(pg, s3, bucket, sample_db, tmp_path, extra=("--clean",))
    dbsnapshot.assert_same(before, db_snapshot(pg, sample_db))


def test_restore_without_clean_into_a_full_database_rolls_back(
    pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str, tmp_path: Path
) -> None:
    backup(pg, s3, bucket, sample_db, tmp_path)
    with pg.connection(sample_db) as conn:
        conn.execute("DELETE FROM public.notifications")
    before = db_snapshot(pg, sample_db)
    run = restore(pg, s3, bucket, sample_db, tmp_path, ok=False)
    assert run.returncode != 0 and "already exists" in run.error_line  # type: ignore[attr-defined]
    dbsnapshot.assert_same(before, db_snapshot(pg, sample_db))  # nothing half-applied


@pytest.mark.parametrize(
    ("fmt", "extra"),
    [
        ("custom", ("--jobs", "2")),
        ("directory", ("--jobs", "1")),
        ("custom", ("--verify", "streaming")),
        ("plain", ("--verify", "streaming")),
    ],
)
def test_restore_paths(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    sample_db: str,
    scratch_db_name: str,
    tmp_path: Path,
    fmt: str,
    extra: tuple[str, ...],
) -> None:
    before = db_snapshot(pg, sample_db)
    backup(pg, s3, bucket, sample_db, tmp_path, extra=("--db-format", fmt))
    restore(pg, s3, bucket, scratch_db_name, tmp_path, extra=("--create-database", *extra))
    dbsnapshot.assert_same(before, db_snapshot(pg, scratch_db_name))


def test_no_owner_restore(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    sample_db: str,
    scratch_db_name: str,
    tmp_path: Path,
) -> None:
    before = db_snapshot(pg, sample_db)
    backup(pg, s3, bucket, sample_db, tmp_path)
    restore(pg, s3, bucket, scratch_db_name, tmp_path, extra=("--create-database", "--no-owner"))
    after = db_snapshot(pg, scratch_db_name)
    dbsnapshot.assert_same(before, after, exclude=("owners", "acl"))
    with pg.connection(scratch_db_name) as conn:
        owner = conn.execute(
            "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'public.accounts'::regclass"
        ).fetchone()
    assert owner == (DB_USER,)  # the role that ran the restore


def test_table_subset(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    sample_db: str,
    scratch_db_name: str,
    tmp_path: Path,
) -> None:
    """pg_dump --table dumps the table alone (no types it uses): a self-contained table
    restores into an empty database, and in place with --clean."""
    before = db_snapshot(pg, sample_db)
    backup(pg, s3, bucket, sample_db, tmp_path, extra=("--db-table", "public.audit_events"))
    restore(pg, s3, bucket, scratch_db_name, tmp_path, extra=("--create-database",))
    with pg.connection(scratch_db_name) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE relkind = 'r' AND nspname = 'public' ORDER BY 1"
            )
        ]
    assert tables == ["audit_events"]
    with pg.connection(sample_db) as conn:
        conn.execute("DELETE FROM public.audit_events")
    restore(pg, s3, bucket, sample_db, tmp_path, extra=("--clean",))
    dbsnapshot.assert_same(before, db_snapshot(pg, sample_db))


def test_exclude_table(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    sample_db: str,
    scratch_db_name: str,
    tmp_path: Path,
) -> None:
    backup(pg, s3, bucket, sample_db, tmp_path, extra=("--db-exclude-table", "public.audit_events"))
    restore(pg, s3, bucket, scratch_db_name, tmp_path, extra=("--create-database",))
    with pg.connection(scratch_db_name) as conn:
        found = conn.execute("SELECT to_regclass('public.audit_events')").fetchone()
    assert found == (None,)


def test_failed_check_fails_the_restore(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    sample_db: str,
    scratch_db_name: str,
    tmp_path: Path,
) -> None:
    backup(pg, s3, bucket, sample_db, tmp_path)
    run = restore(
        pg,
        s3,
        bucket,
        scratch_db_name,
        tmp_path,
        ok=False,
        extra=(
            "--create-database",
            "--check",
            "SELECT true",
            "--check",
            "SELECT count(*) > 1000000 FROM public.accounts",
        ),
    )
    assert run.returncode != 0  # type: ignore[attr-defined]
    assert "check 2" in run.error_line and "expected a true value" in run.error_line  # type: ignore[attr-defined]
    assert run.termination["reason"] == "CheckFailed"  # type: ignore[attr-defined]


def test_missing_target_database_needs_create_database(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    sample_db: str,
    scratch_db_name: str,
    tmp_path: Path,
) -> None:
    backup(pg, s3, bucket, sample_db, tmp_path)
    run = restore(pg, s3, bucket, scratch_db_name, tmp_path, ok=False)
    assert "does not exist (use --create-database)" in run.error_line  # type: ignore[attr-defined]
    assert not pg.database_exists(scratch_db_name)


def test_default_target_is_the_backed_up_database(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    sample_db: str,
    app_role_createdb: str,
    tmp_path: Path,
) -> None:
    before = db_snapshot(pg, sample_db)
    backup(pg, s3, bucket, sample_db, tmp_path)
    pg.drop_database(sample_db)
    run = run_agent(
        [
            "agent",
            "restore",
            "--namespace",
            "prod",
            "--name",
            "nightly",
            "--component",
            "database",
            "--db-host",
            pg.host,
            "--db-port",
            str(pg.port),
            "--db-user",
            DB_USER,
            "--create-database",
            "--bucket",
            bucket,
            "--prefix",
            "backups",
            "--endpoint",
            s3.endpoint,
            "--force-path-style",
        ],
        agent_env(tmp_path, pg, s3),
        tmp_path,
    )
    assert run.returncode == 0, run.describe()
    dbsnapshot.assert_same(before, db_snapshot(pg, sample_db))


def tree(root: Path) -> dict[str, dict[str, object]]:
    return snapshot_tree(root, mtime_ns=True, owners=os.geteuid() == 0)


def test_uploads_replace_into_a_changed_directory(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    sample_db: str,
    uploads_tree: Path,
    tmp_path: Path,
) -> None:
    before = tree(uploads_tree)
    backup(pg, s3, bucket, sample_db, tmp_path, uploads=uploads_tree)
    (uploads_tree / "new-after-backup.pdf").write_text("new")
    (uploads_tree / "binary.bin").unlink()
    (uploads_tree / "receipts" / "2025" / "01" / "receipt 001.pdf").write_text("edited")
    restore(pg, s3, bucket, None, tmp_path, uploads=uploads_tree)
    assert_same_tree(before, tree(uploads_tree))


def test_uploads_merge_keeps_newer_files(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    sample_db: str,
    uploads_tree: Path,
    tmp_path: Path,
) -> None:
    before = tree(uploads_tree)
    backup(pg, s3, bucket, sample_db, tmp_path, uploads=uploads_tree)
    (uploads_tree / "new-after-backup.pdf").write_text("new")
    (uploads_tree / "binary.bin").unlink()
    restore(pg, s3, bucket, None, tmp_path, uploads=uploads_tree, extra=("--uploads-mode", "merge"))
    assert (uploads_tree / "new-after-backup.pdf").read_text() == "new"
    after = tree(uploads_tree)
    del after["new-after-backup.pdf"]
    assert_same_tree(before, after, ignore_fields=("mtime",))


def test_uploads_excludes(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    sample_db: str,
    uploads_tree: Path,
    tmp_path: Path,
) -> None:
    backup(
        pg,
        s3,
        bucket,
        sample_db,
        tmp_path,
        uploads=uploads_tree,
        extra=("--uploads-exclude", "*.tmp", "--uploads-exclude", ".cache"),
    )
    target = tmp_path / "restored"
    restore(pg, s3, bucket, None, tmp_path, uploads=target)
    assert not (target / ".cache").exists()
    assert not (target / "tmp" / "upload-partial.tmp").exists()
    assert (target / "tmp").is_dir()


def test_rerun_of_a_finished_backup_is_idempotent(
    pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str, tmp_path: Path
) -> None:
    backup(pg, s3, bucket, sample_db, tmp_path)
    first = s3.get_bytes(bucket, manifest_key())
    backup(pg, s3, bucket, sample_db, tmp_path)  # same --backup-id: a retried Job
    assert s3.get_bytes(bucket, manifest_key()) == first
    args = backup_args(pg, s3, bucket, sample_db, None)
    args[args.index("--backup-id") + 1] = "another-id"
    run = run_agent(args, agent_env(tmp_path, pg, s3), tmp_path)
    assert run.returncode != 0 and "refusing to overwrite" in run.error_line
    assert s3.get_bytes(bucket, manifest_key()) == first


def test_catalog_list(
    pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str, tmp_path: Path
) -> None:
    import json

    backup(pg, s3, bucket, sample_db, tmp_path, name="first")
    backup(pg, s3, bucket, sample_db, tmp_path, name="second")
    s3.put_bytes(bucket, "backups/prod/broken/manifest.json", b"{not json")
    common = [
        "--bucket",
        bucket,
        "--prefix",
        "backups",
        "--endpoint",
        s3.endpoint,
        "--force-path-style",
    ]
    run = run_agent(["catalog", "list", *common], agent_env(tmp_path, None, s3), tmp_path)
    assert run.returncode == 0, run.describe()
    lines = run.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAMESPACE", "NAME", "COMPLETED"]
    assert {ln.split()[1] for ln in lines[1:3]} == {"first", "second"}
    assert "invalid" in lines[3]
    run = run_agent(
        ["catalog", "list", "-o", "json", *common], agent_env(tmp_path, None, s3), tmp_path
    )
    listed = json.loads(run.stdout)
    assert [e["manifest"]["name"] for e in listed[:2]] == ["second", "first"]
    assert listed[2]["manifestKey"] == "backups/prod/broken/manifest.json"


def test_restore_test_into_a_scratch_database_drops_it(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    sample_db: str,
    scratch_db_name: str,
    tmp_path: Path,
) -> None:
    """The schedule's verification: restore into a scratch database, check, drop it,
    whether the checks passed or not."""
    backup(pg, s3, bucket, sample_db, tmp_path)
    for check, ok in (("SELECT count(*) > 0 FROM public.accounts", True), ("SELECT false", False)):
        run = restore(
            pg,
            s3,
            bucket,
            scratch_db_name,
            tmp_path,
            ok=ok,
            extra=("--create-database", "--drop-database-after", "--check", check),
        )
        assert (run.returncode == 0) is ok  # type: ignore[attr-defined]
        assert not pg.database_exists(scratch_db_name)
