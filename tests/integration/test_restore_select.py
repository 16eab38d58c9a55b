"""Selective restores against the real servers: one table into a side database (the "get
back the table somebody emptied" case, production untouched), --clean with a table subset
dropping only that table, rows only into the existing table, the refusal of a plain dump,
and uploads restored for some paths only (merged, everything else left as it is)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.agent import AgentRun, backup
from tests.support.dbsnapshot import count_rows, user_tables
from tests.support.pgserver import PostgresServer
from tests.support.s3server import S3Server
from tests.support.trees import snapshot_tree

from .test_restore_options import restore

pytestmark = pytest.mark.integration


def tables(pg: PostgresServer, db: str) -> list[str]:
    with pg.connection(db) as conn:
        return user_tables(conn)


def count(pg: PostgresServer, db: str, table: str) -> int:
    with pg.connection(db) as conn:
        return count_rows(conn, table)


def test_one_table_into_a_side_database(
    pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str, scratch_db_name: str,
    tmp_path: Path,
) -> None:
    """A whole custom-format dump; only public.notifications comes back, into a new database
    beside production, as the app's own role; production is not touched."""
    backup(pg, s3, bucket, sample_db, tmp_path)
    rows = count(pg, sample_db, "public.notifications")
    assert rows > 0
    production = tables(pg, sample_db)
    restore(pg, s3, bucket, scratch_db_name, tmp_path,
            extra=("--create-database", "--clean", "--table", "notifications"))
    assert tables(pg, scratch_db_name) == ["public.notifications"]
    assert count(pg, scratch_db_name, "public.notifications") == rows
    assert tables(pg, sample_db) == production


def test_clean_with_a_table_subset_drops_only_those_tables(
    pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str, tmp_path: Path,
) -> None:
    backup(pg, s3, bucket, sample_db, tmp_path)
    rows = count(pg, sample_db, "public.audit_events")
    with pg.connection(sample_db) as conn:
        conn.execute("DELETE FROM public.audit_events")
        conn.execute("CREATE TABLE public.added_since (id int)")
        conn.execute("INSERT INTO public.added_since VALUES (1)")
        conn.execute("UPDATE public.accounts SET display_name = 'changed since'")
    restore(pg, s3, bucket, sample_db, tmp_path,
            extra=("--clean", "--table", "audit_events", "--schema", "public"))
    assert count(pg, sample_db, "public.audit_events") == rows
    assert count(pg, sample_db, "public.added_since") == 1  # not dropped
    with pg.connection(sample_db) as conn:
        names = {r[0] for r in conn.execute("SELECT display_name FROM public.accounts")}
    assert names == {"changed since"}  # other tables as they were


def test_data_only_into_the_existing_table(
    pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str, tmp_path: Path,
) -> None:
    backup(pg, s3, bucket, sample_db, tmp_path)
    rows = count(pg, sample_db, "public.audit_events")
    with pg.connection(sample_db) as conn:
        conn.execute("TRUNCATE public.audit_events")
    restore(pg, s3, bucket, sample_db, tmp_path,
            extra=("--data-only", "--table", "audit_events"))
    assert count(pg, sample_db, "public.audit_events") == rows


def test_a_plain_dump_is_not_restored_selectively(
    pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str, scratch_db_name: str,
    tmp_path: Path,
) -> None:
    backup(pg, s3, bucket, sample_db, tmp_path, extra=("--db-format", "plain"))
    run = restore(pg, s3, bucket, scratch_db_name, tmp_path, ok=False,
                  extra=("--create-database", "--table", "notifications"))
    assert isinstance(run, AgentRun) and run.returncode != 0
    assert "plain SQL dump" in run.stderr + run.stdout
    assert not pg.database_exists(scratch_db_name)  # refused before anything was created


def tree(root: Path) -> dict[str, dict[str, object]]:
    return snapshot_tree(root, mtime_ns=True, owners=os.geteuid() == 0)


def test_uploads_paths_only(
    pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str, uploads_tree: Path,
    tmp_path: Path,
) -> None:
    before = tree(uploads_tree)
    backup(pg, s3, bucket, sample_db, tmp_path, uploads=uploads_tree)
    receipt = uploads_tree / "receipts" / "2025" / "01" / "receipt 001.pdf"
    receipt.write_text("edited")
    hotel = next((uploads_tree / "receipts" / "2025" / "02").iterdir())
    hotel.unlink()
    (uploads_tree / "binary.bin").write_bytes(b"changed since")
    (uploads_tree / "new-after-backup.pdf").write_text("new")
    restore(pg, s3, bucket, None, tmp_path, uploads=uploads_tree,
            extra=("--uploads-mode", "merge", "--uploads-path", "receipts"))
    after = tree(uploads_tree)
    receipts = {k: v for k, v in before.items() if k.startswith("receipts")}
    assert {k: v for k, v in after.items() if k.startswith("receipts")} == receipts
    assert (uploads_tree / "binary.bin").read_bytes() == b"changed since"  # not selected
    assert (uploads_tree / "new-after-backup.pdf").read_text() == "new"


def test_uploads_paths_that_match_nothing_fail(
    pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str, uploads_tree: Path,
    tmp_path: Path,
) -> None:
    backup(pg, s3, bucket, sample_db, tmp_path, uploads=uploads_tree)
    before = tree(uploads_tree)
    run = restore(pg, s3, bucket, None, tmp_path, uploads=uploads_tree, ok=False,
                  extra=("--uploads-mode", "merge", "--uploads-path", "no-such-dir"))
    assert isinstance(run, AgentRun) and run.returncode != 0
    assert "nothing was restored" in run.stderr + run.stdout
    assert tree(uploads_tree) == before
