"""Restore tests that cover the uploads (issue 12 item 4): a schedule of encrypted
database+uploads Backups with `verification.decryption` restores both — the uploads into a
throwaway emptyDir (`uploads.scratch`), checked against the manifest (archive sha256, file
count, bytes) — and passes; once the uploads object in the bucket is overwritten, the next
restore test fails naming the hash mismatch, on the schedule's and the Backup's status and in
a Warning Event.

No waiting for the backup cron: the schedule's Backup is made by hand with its label, which
is how the restore test finds "the newest Succeeded Backup" of the schedule."""

from __future__ import annotations

import json
from typing import Any

import pyrage
import pytest

from tests.e2e.test_operator import backup_spec
from tests.support.cluster import secret_data, wait_for
from tests.support.operator import App

pytestmark = pytest.mark.e2e

SCHEDULE = "proof"
LABELS = {"backup.northstar.io/schedule": SCHEDULE}


def test_an_encrypted_uploads_restore_test_passes_then_fails_on_a_tampered_artifact(
        app: App) -> None:
    identity = pyrage.x25519.Identity.generate()
    app.cluster.core.create_namespaced_secret(app.namespace, {
        "metadata": {"name": "age-key"}, "data": secret_data({"value": str(identity)})})
    spec = backup_spec(app, encryption={"ageRecipients": [str(identity.to_public())]})
    app.create("backups", "seed", spec, labels=LABELS)
    seed = app.wait_phase("backups", "seed", ("Succeeded", "Failed"))
    assert seed["status"]["phase"] == "Succeeded", json.dumps(seed["status"], indent=1)
    artifacts = {a["component"]: a for a in seed["status"]["artifacts"]}
    assert artifacts["uploads"]["encrypted"] and artifacts["database"]["encrypted"]
    assert artifacts["uploads"]["contentBytes"] > 0

    app.create("backupschedules", SCHEDULE, {
        "schedule": "0 0 1 1 *", "template": {"spec": spec},
        "verification": {"schedule": "* * * * *", "database": f"{app.database}_proof",
                         "decryption": {"secretRef": {"name": "age-key", "key": "value"}}},
    })

    def verified(result: str | None = None) -> dict[str, Any] | None:
        last = (app.get("backupschedules", SCHEDULE).get("status") or {}).get(
            "lastVerification")
        return last if last and result in (None, last.get("result")) else None

    tree_before = app.tree()
    passed = wait_for(verified, 240, interval=2, message="no restore test recorded")
    assert passed["result"] == "Succeeded", passed
    assert passed["backupName"] == "seed", passed
    # The proof says what it compared: the rows and the uploads.
    assert "row counts with the backup's: all equal" in passed["message"], passed
    assert "as the manifest records, archive sha256 checked" in passed["message"], passed
    tests = app.list("restores", "backup.northstar.io/verification=true")
    assert tests and all(t["spec"]["components"] == ["database", "uploads"] for t in tests)
    # into the test Job's emptyDir, not the app's claim (which stays as it was)
    assert all("scratch" in t["spec"]["uploads"] and "claimName" not in t["spec"]["uploads"]
               for t in tests), [t["spec"] for t in tests]
    # ... whose size is bounded by what the backup's files take (a few KiB here: the floor),
    # on the Job's volume, for the kubelet to enforce.
    assert all(t["spec"]["uploads"]["scratch"] == {"sizeLimit": "64Mi"} for t in tests), \
        [t["spec"] for t in tests]
    names = tuple(t["metadata"]["name"] for t in tests)
    limits = {v.empty_dir.size_limit
              for job in app.cluster.batch.list_namespaced_job(app.namespace).items
              if job.metadata.name.startswith(names)
              for v in job.spec.template.spec.volumes if v.name == "uploads"}
    assert limits == {"64Mi"}, limits
    assert app.tree() == tree_before
    proof = app.get("backups", "seed")["status"]["verification"]
    assert proof["result"] == "Succeeded" and proof["verifiedTime"], proof

    # Overwrite the uploads object with other bytes: the manifest's sha256 no longer matches.
    key = artifacts["uploads"]["key"]
    s3 = app.s3()
    stored = s3.get_object(Bucket=app.bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=app.bucket, Key=key, Body=stored[:-1] + bytes([stored[-1] ^ 0x40]))

    # Tests run every minute: one may have passed meanwhile on the untouched object.
    failed = wait_for(lambda: verified("Failed"), 300, interval=2,
                      message=lambda: f"no failed restore test after the tampering: "
                                      f"{verified()}")
    assert "does not match its manifest" in failed["message"], failed
    assert "sha256" in failed["message"], failed
    assert key in failed["message"], failed
    record = app.get("backups", "seed")["status"]["verification"]
    assert record["result"] == "Failed", record
    assert record["verifiedTime"]  # the earlier proof stays
    warnings = [e for e in app.events(SCHEDULE)
                if e.type == "Warning" and e.reason == "VerificationFailed"]
    assert any("does not match its manifest" in (e.message or "") for e in warnings), \
        [e.message for e in app.events(SCHEDULE)]
