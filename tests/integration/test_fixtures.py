"""The integration fixtures themselves work, so a failing agent test means the agent.

Also proves the test tools can tell a good restore from a bad one: a standard
``pg_dump | pg_restore`` reproduces the snapshot, a changed row or sequence does not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import psycopg
import pytest
from botocore.exceptions import BotoCoreError, ClientError

from tests.support import dbsnapshot as ds
from tests.support.pgserver import PostgresServer
from tests.support.s3server import Proxy, S3Server, ToxiProxy
from tests.support.trees import assert_same_tree, diff_trees, snapshot_tree

# ------------------------------------------------------------------------------ PostgreSQL


def test_pg_is_up_with_password_auth(pg: PostgresServer) -> None:
    with pg.connection() as conn:
        row = conn.execute(
            "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    assert row == (pg.user, True)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        pg.connect(password="wrong")


def test_pg_env_drives_libpq_tools(pg: PostgresServer) -> None:
    out = subprocess.run(
        [str(pg.bin_dir / "psql"), "-XAtc", "SELECT 40 + 2", "postgres"],
        env={**os.environ, **pg.env()},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "42"


def test_app_role_can_log_in(pg: PostgresServer, sample_db: str) -> None:
    with pg.connection(sample_db, user=ds.APP_ROLE) as conn:
        count = conn.execute("SELECT count(*) FROM reporting.weekly_hours").fetchone()
    assert count is not None and count[0] > 0


def test_pg_kill_and_restart(pg: PostgresServer, sample_db: str) -> None:
    conn = pg.connect(sample_db)
    pg.kill()
    assert not pg.running
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):
        pg.connect(sample_db, connect_timeout=2)
    pg.start()
    with pg.connection(sample_db) as again:
        assert again.execute("SELECT count(*) FROM accounts").fetchone() == (40,)


def test_pg_stop_leaves_no_process() -> None:
    server = PostgresServer()  # a second, private cluster
    try:
        server.start()
        pid = server.postmaster_pid
        assert pid is not None
        backends = _children(pid)
        assert backends  # checkpointer, walwriter, ...
    finally:
        server.cleanup()
    assert not server.running
    assert not server.base_dir.exists()
    for gone in (pid, *backends):
        stat = Path(f"/proc/{gone}/stat")
        # gone, or a zombie waiting for init to reap it (holds no resources)
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def _children(ppid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == ppid:
            out.append(int(stat.parent.name))
    return out


# ------------------------------------------------------------------------------ snapshots


def test_sample_is_realistic(pg: PostgresServer, sample_db: str) -> None:
    with pg.connection(sample_db) as conn:
        snap = ds.snapshot(conn)
    counts = ds.row_counts(snap)
    assert set(ds.SAMPLE_TABLES) <= set(counts)
    assert all(counts[t] > 0 for t in ds.SAMPLE_TABLES)
    assert 3000 < sum(counts.values()) < 20000
    # sequences sit past their tables' maxima; one is not called yet
    assert snap["sequences"]["public.accounts_id_seq"]["last_value"] == 140
    assert snap["sequences"]["public.notifications_id_seq"]["is_called"] is False
    cat = snap["catalog"]
    assert "reporting" in cat["schemas"]
    assert cat["extensions"]["citext"]["schema"] == "public"
    assert cat["relations"]["reporting.weekly_hours"]["kind"] == "m"
    assert any("WHERE" in d for d in cat["indexes"].values())  # a partial index
    assert snap["owners"]["relation reporting.weekly_hours"] == ds.REPORTING_ROLE


def test_snapshot_is_stable_and_deterministic(
    pg: PostgresServer, sample_db: str, sample_db_factory
) -> None:
    with pg.connection(sample_db) as conn:
        first, second = ds.snapshot(conn), ds.snapshot(conn)
    ds.assert_same(first, second)
    # built from scratch with the same seed: the very same database
    other = sample_db_factory()
    with pg.connection(other) as conn:
        ds.assert_same(first, ds.snapshot(conn))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            "UPDATE accounts SET display_name = display_name || '!' WHERE id = 3",
            "data/public.accounts/md5",
        ),
        (
            "DELETE FROM audit_events WHERE ctid = (SELECT min(ctid) FROM audit_events)",
            "data/public.audit_events/rows",
        ),
        ("SELECT nextval('entries_id_seq')", "sequences/public.entries_id_seq/last_value"),
        (
            "SELECT setval('notifications_id_seq', 650, true)",
            "sequences/public.notifications_id_seq/is_called",
        ),
        ("DROP INDEX notifications_unread_idx", "catalog/indexes/public.notifications_unread_idx"),
        ("COMMENT ON TABLE entries IS 'changed'", "catalog/comments/table public.entries"),
        (
            "ALTER TABLE accounts ALTER COLUMN hourly_rate SET DEFAULT 42",
            "catalog/relations/public.accounts/columns",
        ),
        (
            "ALTER TABLE entries DISABLE TRIGGER entries_total_hours",
            "catalog/triggers/public.entries entries_total_hours",
        ),
        ("ALTER TYPE entry_kind ADD VALUE 'unpaid'", "catalog/types/public.entry_kind/labels"),
        (
            "CREATE OR REPLACE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql "
            "AS $$ BEGIN RETURN NEW; END $$",
            "catalog/functions/public.touch_updated_at()",
        ),
        (
            "ALTER MATERIALIZED VIEW reporting.weekly_hours OWNER TO timesheet",
            "owners/relation reporting.weekly_hours",
        ),
        ("REVOKE SELECT ON accounts FROM timesheet_readonly", "acl/relation public.accounts"),
    ],
)
def test_snapshot_sees_changes(
    pg: PostgresServer, sample_db: str, change: str, expected: str
) -> None:
    with pg.connection(sample_db) as conn:
        before = ds.snapshot(conn)
        conn.execute(change)
        after = ds.snapshot(conn)
    lines = ds.diff(before, after)
    assert any(expected in line for line in lines), lines
    with pytest.raises(AssertionError, match="differ"):
        ds.assert_same(before, after)


def _pg_tool(
    pg: PostgresServer, tool: str, *args: str, user: str | None = None, stdin: bytes | None = None
) -> bytes:
    env = {**os.environ, **pg.env()}
    if user:
        env.update(PGUSER=user, PGPASSWORD=pg.role_passwords[user])
    proc = subprocess.run(
        [str(pg.bin_dir / tool), *args], input=stdin, env=env, capture_output=True, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def test_dump_restore_round_trip_reproduces_snapshot(
    pg: PostgresServer, sample_db: str, scratch_db_name: str
) -> None:
    """The reference for the agent: standard tools, with owners, as the app role."""
    pg.create_database(scratch_db_name, owner=ds.APP_ROLE)
    dump = _pg_tool(pg, "pg_dump", "-Fc", "-d", sample_db, user=ds.APP_ROLE)
    _pg_tool(
        pg, "pg_restore", "--exit-on-error", "-d", scratch_db_name, user=ds.APP_ROLE, stdin=dump
    )
    with pg.connection(sample_db) as a, pg.connection(scratch_db_name) as b:
        ds.assert_same(ds.snapshot(a), ds.snapshot(b))


def test_no_owner_restore_differs_only_in_owners_and_acl(
    pg: PostgresServer, sample_db: str, scratch_db_name: str
) -> None:
    pg.create_database(scratch_db_name, owner=ds.APP_ROLE)
    plain = _pg_tool(
        pg, "pg_dump", "--no-owner", "--no-privileges", "-d", sample_db, user=ds.APP_ROLE
    )
    _pg_tool(
        pg,
        "psql",
        "-Xq",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        scratch_db_name,
        user=ds.APP_ROLE,
        stdin=plain,
    )
    with pg.connection(sample_db) as a, pg.connection(scratch_db_name) as b:
        before, after = ds.snapshot(a), ds.snapshot(b)
    ds.assert_same(before, after, exclude=("owners", "acl"))
    assert before["owners"] != after["owners"]


# ------------------------------------------------------------------------------ S3


def test_s3_round_trip_and_multipart_listing(s3: S3Server, bucket: str) -> None:
    client = s3.client()
    s3.put_bytes(bucket, "ns/backup-1/manifest.json", b"{}", ContentType="application/json")
    assert s3.list_keys(bucket) == ["ns/backup-1/manifest.json"]
    assert s3.get_bytes(bucket, "ns/backup-1/manifest.json") == b"{}"
    upload = client.create_multipart_upload(Bucket=bucket, Key="ns/backup-1/database.dump")
    assert [u["UploadId"] for u in s3.list_multipart_uploads(bucket)] == [upload["UploadId"]]
    client.abort_multipart_upload(
        Bucket=bucket, Key="ns/backup-1/database.dump", UploadId=upload["UploadId"]
    )
    assert s3.list_multipart_uploads(bucket) == []


def test_s3_env_for_child_processes(s3: S3Server, bucket: str) -> None:
    env = s3.env()
    assert set(env) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "S3_ENDPOINT"}
    import boto3

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=env["S3_ENDPOINT"],
        region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    assert bucket in [b["Name"] for b in client.list_buckets()["Buckets"]]


def test_buckets_are_fresh(s3: S3Server, bucket: str) -> None:
    assert s3.list_keys(bucket) == []
    assert s3.make_bucket() != bucket


# ------------------------------------------------------------------------------ toxiproxy


def test_toxiproxy_cuts_s3_upload(s3: S3Server, s3_proxy: Proxy, bucket: str) -> None:
    client = s3.client(endpoint=s3_proxy.url, retries=0)
    client.put_object(Bucket=bucket, Key="small", Body=b"ok")  # passes untouched
    s3_proxy.cut_after(64 * 1024, stream="upstream")
    with pytest.raises((BotoCoreError, ClientError)) as info:
        client.put_object(Bucket=bucket, Key="big", Body=os.urandom(1024 * 1024))
    assert "big" not in s3.list_keys(bucket), info.value
    s3_proxy.clear()
    client.put_object(Bucket=bucket, Key="big", Body=b"after the fault")
    assert "big" in s3.list_keys(bucket)


def test_toxiproxy_cuts_database_mid_query(pg: PostgresServer, pg_proxy: Proxy) -> None:
    dsn = pg.dsn(host=pg_proxy.host, port=pg_proxy.port)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        pg_proxy.cut_after(100_000, stream="downstream")
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT repeat('x', 1000) FROM generate_series(1, 1000)").fetchall()
    pg_proxy.disable()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)
    pg_proxy.clear()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_toxiproxy_is_reset_between_tests(toxiproxy: ToxiProxy) -> None:
    proxies = toxiproxy.api("GET", "/proxies")
    assert all(p["enabled"] and not p["toxics"] for p in proxies.values())


# ------------------------------------------------------------------------------ trees


def test_uploads_tree_survives_tar_round_trips(uploads_tree: Path, tmp_path: Path) -> None:
    before = snapshot_tree(uploads_tree, owners=True)
    assert {"file", "dir", "symlink"} <= {e["type"] for e in before.values()}
    # GNU tar, as the guide does it (as root: -p and ownership are the default)
    gnu = tmp_path / "gnu"
    gnu.mkdir()
    subprocess.run(
        f"tar -C '{uploads_tree}' -cf - . | tar -C '{gnu}' -xpf -", shell=True, check=True
    )
    assert_same_tree(before, snapshot_tree(gnu, owners=True))
    # Python's tarfile (what an agent written in Python would use), PAX format
    archive = tmp_path / "uploads.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(uploads_tree, arcname=".")
    py = tmp_path / "py"
    with tarfile.open(archive) as tar:
        tar.extractall(py, filter="fully_trusted")
    assert_same_tree(before, snapshot_tree(py, owners=True))


def test_tree_snapshot_sees_changes(uploads_tree: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(uploads_tree, copy, symlinks=True)  # copies hard links as two files
    ignore = ("hardlink", "uid", "gid")
    assert diff_trees(snapshot_tree(uploads_tree), snapshot_tree(copy), ignore) == []
    (copy / "binary.bin").write_bytes(b"changed")
    (copy / "scripts/convert.sh").chmod(0o644)
    (copy / "empty-dir").rmdir()
    lines = diff_trees(snapshot_tree(uploads_tree), snapshot_tree(copy), ignore)
    assert any("'binary.bin' sha256" in line for line in lines), lines
    assert any("'scripts/convert.sh' mode" in line for line in lines), lines
    assert any("'empty-dir': only in first" in line for line in lines), lines
    with pytest.raises(AssertionError, match="trees differ"):
        assert_same_tree(snapshot_tree(uploads_tree), snapshot_tree(copy))
