"""A Backup whose Job was removed (job.ttlSecondsAfterFinished of a few seconds) before the
operator's poll saw it finish: actions.backups.committed asks the bucket, against a real S3
server, whether the run's manifest -- the commit marker -- is there with this Backup's id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import agent_env, run_agent, s3_args
from tests.support.s3server import S3Server
from timesheet_backup import kube
from timesheet_backup.actions.backups import committed

PREFIX = "backups"
MANIFEST = f"{PREFIX}/ns/nightly/manifest.json"


def body(s3: S3Server, bucket: str, backup_id: str, key: str = MANIFEST) -> dict[str, Any]:
    storage = {"bucket": bucket, "prefix": PREFIX, "endpoint": s3.endpoint,
               "forcePathStyle": True, "credentialsSecretRef": {"name": "s3"}}
    return {"metadata": {"namespace": "ns", "name": "nightly"},
            "status": {"phase": "Running", "backupId": backup_id, "manifestKey": key,
                       "resolved": {"components": ["uploads"], "storage": storage}}}


def test_only_the_runs_own_manifest_counts(s3: S3Server, bucket: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    secret = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
    monkeypatch.setattr(kube, "read_secret_key", lambda _ns, _name, key: secret[key])
    assert not committed(body(s3, bucket, "uid-1"))  # nothing uploaded yet
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    (uploads / "a.txt").write_text("a\n")
    run = run_agent(["agent", "backup", "--backup-id", "uid-1", "--namespace", "ns",
                     "--name", "nightly", "--component", "uploads", "--uploads-dir",
                     str(uploads), *s3_args(s3, bucket, PREFIX)],
                    agent_env(tmp_path, s3=s3), tmp_path)
    assert run.returncode == 0, run.describe()
    assert committed(body(s3, bucket, "uid-1"))
    # Another Backup's manifest under the same name (recreated with the same name): no.
    assert not committed(body(s3, bucket, "uid-2"))
    # Unreadable: no manifest there, or the credentials Secret gone.
    assert not committed(body(s3, bucket, "uid-1", f"{PREFIX}/ns/other/manifest.json"))
    def gone(namespace: str, name: str, _key: str) -> str:
        raise LookupError(f"Secret {namespace}/{name} not found")

    monkeypatch.setattr(kube, "read_secret_key", gone)
    assert not committed(body(s3, bucket, "uid-1"))
