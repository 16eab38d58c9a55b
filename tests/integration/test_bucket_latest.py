"""Restore source.latest against a real S3 server: the schedule label the operator gives the
agent (jobs.manifests.manifest_labels → `--label`) is in the manifest, and the newest backup
of a namespace and schedule is chosen from the manifests alone, as a fresh cluster would
(storage.catalog lists, actions.restores.bucket_entries converts, the pure decision picks);
an unreadable manifest is skipped and counted, never chosen."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.agent import backup, manifest_key
from tests.support.pgserver import PostgresServer
from tests.support.s3server import S3Server
from timesheet_backup import constants as c
from timesheet_backup.actions.restores import bucket_entries
from timesheet_backup.api import models
from timesheet_backup.decisions import restores as decide
from timesheet_backup.decisions.restores import RestoreFailed
from timesheet_backup.jobs.manifests import manifest_labels
from timesheet_backup.storage import catalog
from timesheet_backup.storage.s3 import S3Settings, S3Store

pytestmark = pytest.mark.integration


def label_args(labels: dict[str, str]) -> tuple[str, ...]:
    # The arguments the Job gets (jobs/agent_args.backup_args), from the Backup's labels.
    from timesheet_backup.jobs.agent_args import backup_args

    args = backup_args("id", "prod", "x", models.BackupSpec(components=["uploads"]),
                       manifest_labels(labels))
    return tuple(a for a in args if a.startswith("--label="))


def test_the_newest_backup_of_a_schedule_from_the_bucket_alone(
    pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str, tmp_path: Path,
) -> None:
    nightly = {c.LABEL_SCHEDULE: "nightly", "app": "timesheet"}  # only the schedule's is kept
    assert label_args(nightly) == (f"--label={c.LABEL_SCHEDULE}=nightly",)
    first = backup(pg, s3, bucket, sample_db, tmp_path, name="nightly-1",
                   extra=label_args(nightly))
    assert first["labels"] == {c.LABEL_SCHEDULE: "nightly"}
    backup(pg, s3, bucket, sample_db, tmp_path, name="nightly-2", extra=label_args(nightly))
    backup(pg, s3, bucket, sample_db, tmp_path, name="by-hand")  # newest, of no schedule
    s3.client().put_object(Bucket=bucket, Key="backups/prod/torn/manifest.json", Body=b"{")

    store = S3Store(S3Settings(bucket=bucket, endpoint=s3.endpoint, force_path_style=True),
                    client=s3.client())
    entries = bucket_entries(catalog.list_backups(store, "backups", "prod"))
    assert len(entries) == 4
    storage = {"bucket": bucket, "prefix": "backups"}

    def choose(**fields: str) -> str:
        latest = models.BucketLatest(**fields)  # type: ignore[arg-type]
        return decide.choose_latest_in_bucket(latest, "prod", entries, storage).key

    assert choose(schedule_name="nightly") == manifest_key("nightly-2")
    assert choose() == manifest_key("by-hand")
    with pytest.raises(RestoreFailed) as info:
        choose(schedule_name="weekly")
    assert info.value.reason == "NoMatchingBackup"
    assert str(info.value).endswith(f"in s3://{bucket}/backups (1 unreadable manifest skipped)")
