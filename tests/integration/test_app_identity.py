"""The uploads as the app leaves them: owned by the app's uid (not the agent's), restrictive
modes. The agent runs as the identity a Job would get (jobs/identity.py): the app's uid, or
the agent's own uid 65532 with the app's groups, and never as root.

Regression: the agent opened every file with O_NOATIME, which the kernel refuses (EPERM) to
anyone but the file's owner, so a world-readable file of another uid failed the backup.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent import (
    RunAs,
    agent_env,
    assert_failed_cleanly,
    manifest_key,
    read_manifest,
    run_agent,
    s3_args,
)
from tests.support.s3server import S3Server
from tests.support.trees import (
    diff_trees,
    make_app_owned,
    make_uploads_tree,
    snapshot_tree,
)

APP = RunAs(1000, 1000)
AGENT_UID = 65532

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own files as others")


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    """A work directory every uid can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="tsb-identity-"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def uploads_backup_args(s3: S3Server, bucket: str, uploads: Path, name: str = "app"
                        ) -> list[str]:
    return ["agent", "backup", "--namespace", "prod", "--name", name, "--backup-id",
            f"id-{name}", "--component", "uploads", "--uploads-dir", str(uploads),
            *s3_args(s3, bucket)]


def backup_uploads(s3: S3Server, bucket: str, uploads: Path, work: Path, user: RunAs,
                   name: str = "app") -> tuple[int, str, dict[str, object] | None]:
    run = run_agent(uploads_backup_args(s3, bucket, uploads, name), agent_env(work, s3=s3),
                    work, user=user)
    manifest = read_manifest(s3, bucket, manifest_key(name)) if run.returncode == 0 else None
    return run.returncode, run.describe(), manifest


def restore_uploads(s3: S3Server, bucket: str, target: Path, work: Path, user: RunAs,
                    mode: str, name: str = "app") -> None:
    args = ["agent", "restore", "--manifest-key", manifest_key(name), "--component", "uploads",
            "--uploads-dir", str(target), "--uploads-mode", mode, *s3_args(s3, bucket)]
    run = run_agent(args, agent_env(work, s3=s3), work, user=user)
    assert run.returncode == 0, run.describe()


def app_tree(root: Path, seed: int = 0) -> Path:
    make_uploads_tree(root, seed=seed, foreign_owner=False)
    return make_app_owned(root, APP.uid, APP.gid)


def test_world_readable_files_of_another_uid_back_up(s3: S3Server, bucket: str,
                                                       shared: Path) -> None:
    """The O_NOATIME regression: root-owned 0644 files, agent as 65532."""
    uploads = shared / "uploads"
    make_uploads_tree(uploads, foreign_owner=False)
    make_app_owned(uploads, 0, 0, file_modes=(0o644,), dir_modes=(0o755,))
    code, described, manifest = backup_uploads(s3, bucket, uploads, shared,
                                               RunAs(AGENT_UID, AGENT_UID))
    assert code == 0, described
    assert manifest is not None


def test_group_readable_tree_backs_up_through_the_apps_fsgroup(s3: S3Server, bucket: str,
                                                                shared: Path) -> None:
    """Files of another uid, readable by their group only: the agent's own uid with the
    app's fsGroup as a supplementary group (what the kubelet gives the pod) reads them."""
    uploads = shared / "uploads"
    make_uploads_tree(uploads, foreign_owner=False)
    make_app_owned(uploads, 0, 2000, file_modes=(0o640,), dir_modes=(0o750,))
    code, described, _ = backup_uploads(s3, bucket, uploads, shared,
                                        RunAs(AGENT_UID, AGENT_UID, (2000,)))
    assert code == 0, described


@pytest.mark.parametrize("mode", ["replace", "merge"])
def test_round_trip_as_the_app_keeps_contents_modes_mtimes_and_owner(
        s3: S3Server, bucket: str, shared: Path, mode: str) -> None:
    uploads = app_tree(shared / "uploads")
    before = snapshot_tree(uploads, mtime_ns=True, owners=True)
    assert {(e["uid"], e["gid"]) for e in before.values()} == {(APP.uid, APP.gid)}
    code, described, _ = backup_uploads(s3, bucket, uploads, shared, APP)
    assert code == 0, described

    # In place, over what the app wrote since: another tree, still the app's.
    shutil.rmtree(uploads)
    app_tree(uploads, seed=7)
    restore_uploads(s3, bucket, uploads, shared, APP, mode)
    after = snapshot_tree(uploads, mtime_ns=True, owners=True)
    if mode == "replace":
        assert diff_trees(before, after) == []
    else:
        # Merge keeps the app's newer files; every backed-up entry is back exactly.
        assert diff_trees(before, {k: v for k, v in after.items() if k in before}) == []
    assert all((e["uid"], e["gid"]) == (APP.uid, APP.gid) for e in after.values()
               if e["type"] != "symlink")
    # The app can write again where it restored.
    assert os.stat(uploads).st_uid == APP.uid


def test_files_no_identity_may_read_fail_with_all_of_them_named(s3: S3Server, bucket: str,
                                                                  shared: Path) -> None:
    uploads = shared / "uploads"
    make_uploads_tree(uploads, foreign_owner=False)
    make_app_owned(uploads, 0, 0, file_modes=(0o600,), dir_modes=(0o755,))
    files = sorted(str(p.relative_to(uploads)) for p in uploads.rglob("*")
                   if p.is_file() and not p.is_symlink())
    run = run_agent(uploads_backup_args(s3, bucket, uploads), agent_env(shared, s3=s3), shared,
                    user=RunAs(AGENT_UID, AGENT_UID))
    assert_failed_cleanly(run, s3, bucket)
    line = run.error_line
    # All of them counted (hard links are files too), the first few named, and the fix said.
    assert f"cannot read {len(files)} entries" in line, line
    assert f"as uid {AGENT_UID}" in line and "(owner 0:0, mode 0600)" in line, line
    assert "job.podSecurityContext" in line and "runAsUser" in line, line
    assert f"and {len(files) - 5} more" in line, line


def test_an_unreadable_root_says_so(s3: S3Server, bucket: str, shared: Path) -> None:
    uploads = shared / "uploads"
    make_uploads_tree(uploads, foreign_owner=False)
    make_app_owned(uploads, APP.uid, APP.gid, dir_modes=(0o700,))
    run = run_agent(uploads_backup_args(s3, bucket, uploads), agent_env(shared, s3=s3), shared,
                    user=RunAs(AGENT_UID, AGENT_UID))
    assert_failed_cleanly(run, s3, bucket)
    assert "cannot read 1 entry" in run.error_line and "'.'" in run.error_line, run.describe()
    assert "job.podSecurityContext" in run.error_line
