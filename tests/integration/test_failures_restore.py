"""A restore from a bad source fails before anything is applied, or inside a transaction
that rolls back: never a half-restored database or a half-replaced uploads directory."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import pyrage
import pytest

from tests.support import dbsnapshot
from tests.support.agent import (
    AGENT,
    agent_env,
    backup,
    db_snapshot,
    manifest_key,
    new_identity,
    read_manifest,
    restore_args,
    run_agent,
)
from tests.support.pgserver import PostgresServer
from tests.support.s3server import Proxy, S3Server
from tests.support.trees import HOSTILE_KINDS, assert_same_tree, make_hostile_tar, snapshot_tree


def flip_byte(s3: S3Server, bucket: str, key: str, where: float = 0.5) -> None:
    data = bytearray(s3.get_bytes(bucket, key))
    data[int(len(data) * where)] ^= 0x40
    s3.put_bytes(bucket, key, bytes(data))


def restore(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    tmp_path: Path,
    db: str | None,
    uploads: Path | None = None,
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Any:
    return run_agent(
        restore_args(pg, s3, bucket, manifest_key(), db, uploads, extra=extra),
        agent_env(tmp_path, pg, s3, env),
        tmp_path,
    )


def assert_failed(run: Any, *needles: str) -> None:
    assert run.returncode != 0, run.describe()
    assert "Traceback" not in run.stderr, run.describe()
    assert run.termination is not None and run.termination["ok"] is False
    for needle in needles:
        assert needle in run.error_line, run.describe()


# --- corrupted artifacts ---------------------------------------------------------------


@pytest.mark.parametrize("verify", ["before", "streaming"])
@pytest.mark.parametrize("fmt", ["custom", "plain", "directory"])
def test_corrupted_database_artifact_changes_nothing(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    sample_db: str,
    tmp_path: Path,
    fmt: str,
    verify: str,
) -> None:
    """In place, with --clean: the corruption sits near the end, after most statements
    (streaming mode has already run them); the database must be exactly as before."""
    manifest = backup(
        pg, s3, bucket, sample_db, tmp_path, extra=("--db-format", fmt, "--compression", "none")
    )
    flip_byte(s3, bucket, manifest["artifacts"][0]["key"], where=0.97)
    with pg.connection(sample_db) as conn:
        conn.execute("DELETE FROM public.notifications WHERE id % 3 = 0")
    before = db_snapshot(pg, sample_db)
    run = restore(pg, s3, bucket, tmp_path, sample_db, extra=("--clean", "--verify", verify))
    assert_failed(run)
    assert run.termination["reason"] in ("IntegrityError", "DatabaseError")
    dbsnapshot.assert_same(before, db_snapshot(pg, sample_db))


def test_corrupted_artifact_into_a_new_database_leaves_no_database(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    sample_db: str,
    scratch_db_name: str,
    tmp_path: Path,
) -> None:
    manifest = backup(pg, s3, bucket, sample_db, tmp_path)
    flip_byte(s3, bucket, manifest["artifacts"][0]["key"])
    run = restore(pg, s3, bucket, tmp_path, scratch_db_name, extra=("--create-database",))
    assert_failed(run, "does not match its manifest", "nothing was restored")
    assert not pg.database_exists(scratch_db_name)


def test_corrupted_uploads_artifact_leaves_the_directory_alone(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    sample_db: str,
    uploads_tree: Path,
    tmp_path: Path,
) -> None:
    manifest = backup(
        pg, s3, bucket, sample_db, tmp_path, uploads=uploads_tree, extra=("--compression", "none")
    )
    flip_byte(s3, bucket, manifest["artifacts"][1]["key"], where=0.9)
    (uploads_tree / "changed-since.txt").write_text("newer")
    before = snapshot_tree(uploads_tree, mtime_ns=True)
    run = restore(pg, s3, bucket, tmp_path, None, uploads=uploads_tree)
    assert_failed(run, "does not match its manifest")
    assert snapshot_tree(uploads_tree, mtime_ns=True) == before  # no staging left either


def test_truncated_artifact(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    sample_db: str,
    scratch_db_name: str,
    tmp_path: Path,
) -> None:
    manifest = backup(pg, s3, bucket, sample_db, tmp_path)
    key = manifest["artifacts"][0]["key"]
    s3.put_bytes(bucket, key, s3.get_bytes(bucket, key)[:-1000])
    run = restore(
        pg,
        s3,
        bucket,
        tmp_path,
        scratch_db_name,
        extra=("--create-database", "--verify", "streaming"),
    )
    assert_failed(run)
    assert not pg.database_exists(scratch_db_name)


# --- tampered manifests ----------------------------------------------------------------


def tamper(s3: S3Server, bucket: str, change: Any) -> None:
    data = read_manifest(s3, bucket, manifest_key())
    change(data)
    s3.put_bytes(bucket, manifest_key(), json.dumps(data).encode())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda m: m["artifacts"][0].update(key="backups/prod/other/database.dump.zst"),
            "outside its directory",
        ),
        (
            lambda m: m["artifacts"][0].update(key="backups/prod/nightly/../other/x"),
            "outside its directory",
        ),
        (lambda m: m["artifacts"][0].update(sha256="0" * 64), "does not match its manifest"),
        (
            lambda m: m["artifacts"][0].update(sizeBytes=m["artifacts"][0]["sizeBytes"] + 1),
            "does not match its manifest",
        ),
        (
            lambda m: m.update(apiVersion="backup.northstar.io/manifest/v9"),
            "unsupported apiVersion",
        ),
        (lambda m: m["artifacts"][0].update(compression="brotli"), "artifacts[0].compression"),
        (lambda m: m.pop("artifacts"), "artifacts is required"),
    ],
)
def test_tampered_manifest(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    sample_db: str,
    scratch_db_name: str,
    tmp_path: Path,
    change: Any,
    message: str,
) -> None:
    backup(pg, s3, bucket, sample_db, tmp_path)
    tamper(s3, bucket, change)
    run = restore(pg, s3, bucket, tmp_path, scratch_db_name, extra=("--create-database",))
    assert_failed(run, message)
    assert not pg.database_exists(scratch_db_name)


def test_manifest_that_is_not_json(
    pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str, tmp_path: Path
) -> None:
    backup(pg, s3, bucket, sample_db, tmp_path)
    s3.put_bytes(bucket, manifest_key(), b"<html>nope</html>")
    run = restore(pg, s3, bucket, tmp_path, sample_db)
    assert_failed(run, "not valid JSON")


def test_missing_manifest(pg: PostgresServer, s3: S3Server, bucket: str, tmp_path: Path) -> None:
    run = restore(pg, s3, bucket, tmp_path, "x")
    assert_failed(run, "does not exist")


# --- hostile archives ------------------------------------------------------------------


@pytest.mark.parametrize("kind", HOSTILE_KINDS)
def test_hostile_tar_is_refused(
    pg: PostgresServer, s3: S3Server, bucket: str, tmp_path: Path, kind: str
) -> None:
    """A hostile archive with a manifest that vouches for it (an attacker with write access
    to the bucket): refused, nothing written outside, the target untouched."""
    archive = make_hostile_tar(
        tmp_path / "evil.tar.gz", kind, compression="gzip", outside=tmp_path / "outside"
    )
    _vouched_uploads_artifact(s3, bucket, archive.path.read_bytes(), compression="gzip")
    target = tmp_path / "uploads"
    target.mkdir()
    (target / "existing.pdf").write_text("keep")
    before = snapshot_tree(target)
    run = restore(pg, s3, bucket, tmp_path, None, uploads=target)
    assert_failed(run, "refusing")
    assert run.termination["reason"] == "UnsafeArchive"
    assert archive.escapes(target) == []
    assert snapshot_tree(target) == before


# --- keys and transport ----------------------------------------------------------------


def test_wrong_or_missing_age_identity(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    sample_db: str,
    scratch_db_name: str,
    tmp_path: Path,
) -> None:
    public, _, _ = new_identity(tmp_path)
    backup(pg, s3, bucket, sample_db, tmp_path, extra=("--age-recipient", public))
    run = restore(pg, s3, bucket, tmp_path, scratch_db_name, extra=("--create-database",))
    assert_failed(run, "age-encrypted", "TSB_AGE_IDENTITY")
    other = f"{pyrage.x25519.Identity.generate()}\n"
    run = restore(
        pg,
        s3,
        bucket,
        tmp_path,
        scratch_db_name,
        extra=("--create-database",),
        env={"TSB_AGE_IDENTITY": other},
    )
    assert_failed(run, "does not match any recipient")
    assert "AGE-SECRET-KEY" not in run.stderr
    assert not pg.database_exists(scratch_db_name)


def test_database_down_during_restore(
    pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str, tmp_path: Path
) -> None:
    backup(pg, s3, bucket, sample_db, tmp_path)
    pg.stop()
    run = restore(pg, s3, bucket, tmp_path, sample_db)
    assert_failed(run, "the database server is unreachable")


def test_download_resumes_after_cut_connections(
    pg: PostgresServer,
    s3: S3Server,
    s3_proxy: Proxy,
    bucket: str,
    sample_db: str,
    scratch_db_name: str,
    tmp_path: Path,
) -> None:
    """Every connection is cut after 400 kB received: the download resumes with Range
    requests pinned to the object's ETag, and the restore completes."""
    before = db_snapshot(pg, sample_db)
    manifest = backup(pg, s3, bucket, sample_db, tmp_path, extra=("--compression", "none"))
    assert manifest["artifacts"][0]["sizeBytes"] > 1_000_000
    s3_proxy.cut_after(400_000, stream="downstream")
    args = restore_args(
        pg, s3, bucket, manifest_key(), scratch_db_name, None, extra=("--create-database",)
    )
    args[args.index("--endpoint") + 1] = s3_proxy.url
    run = run_agent(args, agent_env(tmp_path, pg, s3), tmp_path)
    s3_proxy.clear()
    assert run.returncode == 0, run.describe()
    assert "resuming" in run.stderr
    dbsnapshot.assert_same(before, db_snapshot(pg, scratch_db_name))


def test_plain_gzip_artifact_is_what_the_manifest_says(
    pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str, tmp_path: Path
) -> None:
    """A sanity check of the failure tests' premise: the bytes flipped are in the stored
    object, which standard tools also reject."""
    manifest = backup(
        pg, s3, bucket, sample_db, tmp_path, extra=("--db-format", "plain", "--compression", "gzip")
    )
    key = manifest["artifacts"][0]["key"]
    assert gzip.decompress(s3.get_bytes(bucket, key)).startswith(b"--\n-- PostgreSQL")
    flip_byte(s3, bucket, key)
    proc = subprocess.run(["gzip", "-t"], input=s3.get_bytes(bucket, key), capture_output=True)
    assert proc.returncode != 0


def test_sigterm_mid_restore_rolls_back(
    pg: PostgresServer,
    s3: S3Server,
    s3_proxy: Proxy,
    bucket: str,
    sample_db: str,
    tmp_path: Path,
) -> None:
    """SIGTERM while pg_restore is applying a slow download in place with --clean: the
    transaction rolls back, the database is as before."""
    backup(pg, s3, bucket, sample_db, tmp_path, extra=("--compression", "none"))
    with pg.connection(sample_db) as conn:
        conn.execute("DELETE FROM public.audit_events")
    before = db_snapshot(pg, sample_db)
    s3_proxy.bandwidth(500, stream="downstream")
    args = restore_args(
        pg, s3, bucket, manifest_key(), sample_db, None, extra=["--clean", "--verify", "streaming"]
    )
    args[args.index("--endpoint") + 1] = s3_proxy.url
    proc = subprocess.Popen(
        [*AGENT, *args, "--termination-message-path", ""],
        env=agent_env(tmp_path, pg, s3),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s "
        "AND backend_type = 'client backend' AND xact_start IS NOT NULL"
    )
    deadline = time.monotonic() + 60
    while pg.execute(query, (sample_db, "timesheet-backup")) == [(0,)]:
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.5)  # well inside the restore's transaction
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "error: stopped by SIGTERM" in err
    dbsnapshot.assert_same(before, db_snapshot(pg, sample_db))


# --- uploads replace killed mid-swap ------------------------------------------------------

KILLPOINT = Path(__file__).resolve().parent / "killpoint"


def killed_at_rename(
    pg: PostgresServer, s3: S3Server, bucket: str, tmp_path: Path, uploads: Path, at: int
) -> None:
    """The uploads restore, SIGKILLed just before its `at`-th rename in `uploads`."""
    run = restore(pg, s3, bucket, tmp_path, None, uploads=uploads, env={
        "PYTHONPATH": str(KILLPOINT), "TSB_TEST_KILL_AT_RENAME": str(at),
        "TSB_TEST_KILL_UNDER": str(uploads)})
    assert run.returncode == -9, run.describe()


def app_files(uploads: Path) -> tuple[dict[str, Any], list[str]]:
    """The app's files as they can be recovered after a kill: the live entries plus those in
    the one directory an interrupted replace sets them aside in; and that directory."""
    names = os.listdir(uploads)
    kept = sorted(n for n in names if n.startswith((".tsb-old-", ".tsb-aside-")))
    internal = [n for n in names if n.startswith(".tsb-")]
    snap = snapshot_tree(uploads, mtime_ns=True, exclude=internal)
    for name in kept:
        snap.update(snapshot_tree(uploads / name, mtime_ns=True))
    return snap, kept


def test_uploads_replace_killed_mid_swap_never_loses_the_app_files(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    sample_db: str,
    uploads_tree: Path,
    tmp_path: Path,
) -> None:
    """The agent SIGKILLed three times while swapping the uploads in (a lost node, the OOM
    killer; the Job retries with a new restore id each time): while setting the app's files
    aside, while renaming the new ones in, and again in the retry of that. After each kill
    the app's files are all there, in the directory and the one `.tsb-aside-*`/`.tsb-old-*`
    beside them; the attempt that is not killed leaves exactly the backup."""
    backed_up = snapshot_tree(uploads_tree, mtime_ns=True)
    backup(pg, s3, bucket, sample_db, tmp_path, uploads=uploads_tree)
    (uploads_tree / "new-after-backup.pdf").write_text("written after the backup")
    (uploads_tree / "binary.bin").unlink()
    (uploads_tree / "receipts" / "2025" / "01" / "receipt 001.pdf").write_text("edited")
    before, _ = app_files(uploads_tree)
    live = len(os.listdir(uploads_tree))

    killed_at_rename(pg, s3, bucket, tmp_path, uploads_tree, live // 2)
    found, kept = app_files(uploads_tree)
    assert_same_tree(before, found)
    assert len(kept) == 1, kept

    # The retry moves the rest aside, has them all (`.tsb-old-`), swaps 5 new entries in.
    killed_at_rename(pg, s3, bucket, tmp_path, uploads_tree, live - live // 2 + 2 + 5)
    (old,) = [n for n in os.listdir(uploads_tree) if n.startswith(".tsb-old-")]
    assert_same_tree(before, snapshot_tree(uploads_tree / old, mtime_ns=True))

    killed_at_rename(pg, s3, bucket, tmp_path, uploads_tree, 3)
    assert_same_tree(before, snapshot_tree(uploads_tree / old, mtime_ns=True))

    run = restore(pg, s3, bucket, tmp_path, None, uploads=uploads_tree)
    assert run.returncode == 0, run.describe()
    assert_same_tree(backed_up, snapshot_tree(uploads_tree, mtime_ns=True))
    assert not [n for n in os.listdir(uploads_tree) if n.startswith(".tsb-")]


# --- a manifest naming objects outside its own directory; links that escape -------------


def test_artifact_outside_the_manifests_directory_is_refused(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    sample_db: str,
    uploads_tree: Path,
    tmp_path: Path,
) -> None:
    """Each artifact key of a genuine backup is moved elsewhere in the bucket (a valid
    object with the right checksum, so only the key is wrong) and the manifest rewritten to
    name it: refused before anything is read or written, the targets untouched."""
    original = backup(pg, s3, bucket, sample_db, tmp_path, uploads=uploads_tree)
    artifacts = {a["component"]: a for a in original["artifacts"]}
    target = tmp_path / "target"
    target.mkdir()
    (target / "existing.pdf").write_text("keep")
    tree_before = snapshot_tree(target)
    db_before = db_snapshot(pg, sample_db)
    elsewhere = [
        "elsewhere/prod/nightly/{name}",  # another prefix
        "backups/prod/other/{name}",  # another backup
        "backups/prod/nightly/../../elsewhere/prod/nightly/{name}",
        "/backups/prod/nightly/{name}",  # absolute-looking
        "backups/prod/nightly/sub/{name}",  # below its directory
        "backups/prod/{name}",  # above it
    ]
    for pattern in elsewhere:
        for component, artifact in artifacts.items():
            name = artifact["key"].rsplit("/", 1)[1]
            moved = pattern.format(name=name)
            s3.put_bytes(bucket, moved, s3.get_bytes(bucket, artifact["key"]))
            manifest = json.loads(json.dumps(original))
            for a in manifest["artifacts"]:
                if a["component"] == component:
                    a["key"] = moved
            s3.put_bytes(bucket, manifest_key(), json.dumps(manifest).encode())
            run = restore(pg, s3, bucket, tmp_path, sample_db, uploads=target)
            assert_failed(run, "outside its directory")
            assert snapshot_tree(target) == tree_before, moved
    dbsnapshot.assert_same(db_before, db_snapshot(pg, sample_db))


def _vouched_uploads_artifact(s3: S3Server, bucket: str, raw: bytes,
                              compression: str = "none") -> None:
    """Put `raw` as an uploads artifact with a manifest that vouches for it (size, sha256):
    what an attacker with write access to the bucket can do."""
    key = "backups/prod/nightly/uploads.tar" + {"none": "", "gzip": ".gz"}[compression]
    s3.put_bytes(bucket, key, raw)
    manifest = {
        "apiVersion": "backup.northstar.io/manifest/v1",
        "kind": "BackupManifest",
        "backupId": "evil",
        "namespace": "prod",
        "name": "nightly",
        "source": "import",
        "startTime": "2024-01-15T02:00:00Z",
        "completionTime": "2024-01-15T02:00:00Z",
        "agentVersion": "0",
        "artifacts": [{"component": "uploads", "key": key, "sizeBytes": len(raw),
                       "sha256": hashlib.sha256(raw).hexdigest(), "format": "tar",
                       "compression": compression, "encryption": "none"}],
    }
    s3.put_bytes(bucket, manifest_key(), json.dumps(manifest).encode())


def _tar(members: list[tuple[str, str, str | bytes]]) -> bytes:
    """A tar of (name, "file"|"dir"|"symlink", content or link target) members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, type_, value in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if type_ == "symlink":
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, str(value), 0o777
                tar.addfile(info)
            elif type_ == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                data = value if isinstance(value, bytes) else value.encode()
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["symlink_then_file", "symlink_chain", "symlink_then_dir"])
def test_link_escapes_are_refused(
    pg: PostgresServer, s3: S3Server, bucket: str, tmp_path: Path, kind: str
) -> None:
    """Link escapes the nine hostile kinds do not cover: a symlink followed by a regular file
    of the same name (a naive extractor writes through the link), a chain of relative links
    that climbs out one hop at a time, and a symlink to a directory outside followed by a
    directory member of that name and a file in it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_bytes(b"do not overwrite me\n")
    token = "pwned" + hashlib.sha256(kind.encode()).hexdigest()[:8]
    members: list[tuple[str, str, str | bytes]] = [("harmless/first.txt", "file", "first\n")]
    if kind == "symlink_then_file":
        members += [("victim.txt", "symlink", str(victim)),
                    ("victim.txt", "file", f"{token}\n")]
    elif kind == "symlink_chain":
        members += [("a", "symlink", "."), ("a/b", "symlink", ".."),
                    (f"b/{token}.txt", "file", f"{token}\n")]
    else:
        members += [("d", "symlink", str(outside)), ("d", "dir", ""),
                    (f"d/{token}.txt", "file", f"{token}\n")]
    members.append(("harmless/last.txt", "file", "last\n"))
    _vouched_uploads_artifact(s3, bucket, _tar(members))

    target = tmp_path / "uploads"
    target.mkdir()
    (target / "existing.pdf").write_text("keep")
    before = snapshot_tree(target)
    run = restore(pg, s3, bucket, tmp_path, None, uploads=target)
    assert_failed(run, "refusing")
    assert run.termination["reason"] == "UnsafeArchive"
    assert victim.read_bytes() == b"do not overwrite me\n"
    escaped = [p for p in tmp_path.rglob(f"*{token}*") if target not in p.parents]
    assert escaped == []
    assert snapshot_tree(target) == before
