"""A restore of the uploads is checked against its manifest, not only extracted: the
archive's sha256 (whole artifact, checked while it is read), the number of regular files and
their bytes (`contentBytes`, recorded by the agent at backup time). A difference fails the
restore naming what differed, expected against found, before anything is swapped in — this is
what a restore test's uploads part relies on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import (
    agent_env,
    backup,
    manifest_key,
    new_identity,
    read_manifest,
    restore_args,
    run_agent,
)
from tests.support.pgserver import PostgresServer
from tests.support.s3server import S3Server
from tests.support.trees import snapshot_tree


def _backup(pg: PostgresServer, s3: S3Server, bucket: str, db: str, uploads: Path,
            tmp_path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """An encrypted database+uploads backup; returns its manifest and the restore's env."""
    public, private, _ = new_identity(tmp_path)
    manifest = backup(pg, s3, bucket, db, tmp_path, uploads=uploads,
                      extra=("--age-recipient", public))
    return manifest, {"TSB_AGE_IDENTITY": private}


def _restore_uploads(pg: PostgresServer, s3: S3Server, bucket: str, tmp_path: Path,
                     target: Path, env: dict[str, str]) -> Any:
    return run_agent(
        restore_args(pg, s3, bucket, manifest_key(), None, target),
        agent_env(tmp_path, pg, s3, env),
        tmp_path,
    )


def _files_and_bytes(root: Path) -> tuple[int, int]:
    """Regular files with their hard links (as `find -type f` counts), and the bytes of
    their contents, a hard-linked content counted once (as the tar stream holds it)."""
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    inodes = {p.stat().st_ino: p.stat().st_size for p in files}
    return len(files), sum(inodes.values())


def test_uploads_restore_matches_the_manifest(
    pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str, uploads_tree: Path,
    tmp_path: Path,
) -> None:
    manifest, env = _backup(pg, s3, bucket, sample_db, uploads_tree, tmp_path)
    uploads = manifest["artifacts"][1]
    assert uploads["component"] == "uploads" and uploads["encryption"] == "age"
    # The recorded numbers are the tree's, counted independently of the agent.
    count, size = _files_and_bytes(uploads_tree)
    assert size > 0
    assert uploads["contentBytes"] == size
    target = tmp_path / "scratch"
    target.mkdir()
    run = _restore_uploads(pg, s3, bucket, tmp_path, target, env)
    assert run.returncode == 0, run.describe()
    summary = run.termination["uploads"]
    assert summary["fileCount"] == uploads["fileCount"]
    assert summary["contentBytes"] == uploads["contentBytes"]
    # What the Restore's message will say it compared (decisions/restores.content_notes).
    assert summary["compared"].startswith(f"uploads: {count} files, "), summary
    assert summary["compared"].endswith("as the manifest records, archive sha256 checked")
    assert _files_and_bytes(target) == (count, size)


def test_a_tampered_uploads_artifact_fails_with_the_hash(
    pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str, uploads_tree: Path,
    tmp_path: Path,
) -> None:
    """The object overwritten with another (valid, decryptable) uploads archive: only the
    sha256 tells them apart."""
    manifest, env = _backup(pg, s3, bucket, sample_db, uploads_tree, tmp_path)
    key = manifest["artifacts"][1]["key"]
    (uploads_tree / "extra.txt").write_bytes(b"not in the backup\n")
    first = s3.get_bytes(bucket, key)
    # A second backup under another name, whose uploads artifact replaces the first's.
    other = backup(pg, s3, bucket, sample_db, tmp_path, uploads=uploads_tree,
                   extra=("--age-recipient", _recipient(env)), name="other")
    s3.put_bytes(bucket, key, s3.get_bytes(bucket, other["artifacts"][1]["key"]))
    assert s3.get_bytes(bucket, key) != first
    target = tmp_path / "scratch"
    target.mkdir()
    run = _restore_uploads(pg, s3, bucket, tmp_path, target, env)
    assert run.returncode != 0, run.describe()
    assert run.termination is not None and run.termination["ok"] is False
    assert "does not match its manifest" in run.error_line, run.describe()
    assert "sha256" in run.error_line, run.describe()
    assert snapshot_tree(target) == {}


def test_a_flipped_byte_fails_with_the_hash_not_the_decryption(
    pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str, uploads_tree: Path,
    tmp_path: Path,
) -> None:
    """A damaged encrypted artifact first breaks the decryption; the failure names the cause
    (the object's sha256 is not the manifest's), not only the symptom."""
    manifest, env = _backup(pg, s3, bucket, sample_db, uploads_tree, tmp_path)
    key = manifest["artifacts"][1]["key"]
    data = bytearray(s3.get_bytes(bucket, key))
    data[len(data) // 2] ^= 0x40
    s3.put_bytes(bucket, key, bytes(data))
    target = tmp_path / "scratch"
    target.mkdir()
    run = _restore_uploads(pg, s3, bucket, tmp_path, target, env)
    assert run.returncode != 0, run.describe()
    assert run.termination is not None and run.termination["ok"] is False
    assert f"{key} does not match its manifest (sha256" in run.error_line, run.describe()
    assert snapshot_tree(target) == {}


def _recipient(env: dict[str, str]) -> str:
    import pyrage

    line = next(x for x in env["TSB_AGE_IDENTITY"].splitlines() if x.startswith("AGE-"))
    return str(pyrage.x25519.Identity.from_str(line).to_public())


@pytest.mark.parametrize(
    ("field", "delta", "message"),
    [
        ("fileCount", 1, "file count: expected {expected}, found {found}"),
        ("contentBytes", -1, "bytes of regular files: expected {expected}, found {found}"),
    ],
)
def test_a_count_or_bytes_mismatch_fails_naming_both(
    pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str, uploads_tree: Path,
    tmp_path: Path, field: str, delta: int, message: str,
) -> None:
    _, env = _backup(pg, s3, bucket, sample_db, uploads_tree, tmp_path)
    data = read_manifest(s3, bucket, manifest_key())
    found = data["artifacts"][1][field]
    data["artifacts"][1][field] = found + delta
    s3.put_bytes(bucket, manifest_key(), json.dumps(data).encode())
    target = tmp_path / "scratch"
    target.mkdir()
    (target / "kept.txt").write_bytes(b"the app's file\n")
    before = snapshot_tree(target)
    run = _restore_uploads(pg, s3, bucket, tmp_path, target, env)
    assert run.returncode != 0, run.describe()
    assert run.termination is not None and run.termination["ok"] is False
    expected = message.format(expected=found + delta, found=found)
    assert expected in run.error_line, run.describe()
    # Checked before the swap: nothing of the directory was replaced.
    assert snapshot_tree(target) == before
