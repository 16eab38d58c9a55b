"""Row counts on the cluster: a restore test fails when the restored rows differ from the
counts the backup recorded (issue 12 item 4). Content alarms (issue 14 item 5): a schedule's
Backup of an emptied table is Suspicious, with a Warning Event, `tsb_backup_suspicious 1` on
the operator's real /metrics, and the chart's TimesheetBackupSuspicious alert firing on
those samples (promtool).

No waiting for cron: the schedule is suspended (it only carries `alerts`), and its two
Backups are made by hand with its label, which is how the operator finds "the previous good
Backup of the same schedule"."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.test_metrics import ALERTS, ours, promtool_test, rules, scrape, value
from tests.e2e.test_operator import backup_spec, conditions
from tests.support.cluster import Cluster, wait_for
from tests.support.operator import App, Operator, run_tool, tool_env

pytestmark = pytest.mark.e2e

LABELS = {"backup.northstar.io/schedule": "nightly"}


def test_a_backup_of_an_emptied_table_is_suspicious(cluster: Cluster, app: App,
                                                     operator: Operator,
                                                     tmp_path: Path) -> None:
    ns = app.namespace
    db_only = backup_spec(app, components=["database"])
    app.create("backupschedules", "nightly", {
        "schedule": "0 2 * * *", "suspend": True, "template": {"spec": db_only},
        "alerts": {"shrinkPercent": 50}})

    app.create("backups", "nightly-1", db_only, labels=LABELS)
    first = app.wait_phase("backups", "nightly-1", ("Succeeded", "Failed"))
    assert first["status"]["phase"] == "Succeeded", first["status"]
    assert first["status"]["tableCount"] >= 5
    assert first["status"]["rowCounts"]["public.timesheets"] > 0
    assert conditions(first)["Suspicious"]["status"] == "False"

    with app.connect() as conn:
        conn.execute("DELETE FROM public.timesheets")  # entries and attachments cascade

    app.create("backups", "nightly-2", db_only, labels=LABELS)
    second = app.wait_phase("backups", "nightly-2", ("Succeeded", "Failed"))
    st = second["status"]
    assert st["phase"] == "Succeeded", st  # the backup worked; its contents alarm
    assert st["rowCounts"]["public.timesheets"] == 0
    suspicious = conditions(second)["Suspicious"]
    assert suspicious["status"] == "True" and suspicious["reason"] == "ContentShrank"
    assert "against nightly-1" in suspicious["message"]
    assert f"public.timesheets {first['status']['rowCounts']['public.timesheets']} to 0 rows" \
        in suspicious["message"]
    def warning() -> Any:  # kopf posts Events asynchronously
        return next((e for e in app.events("nightly-2")
                     if e.type == "Warning" and e.reason == "Suspicious"), None)

    event = wait_for(warning, 30, message="no Warning Event Suspicious on nightly-2")
    assert "public.timesheets" in event.message

    def settled() -> list[Any] | None:
        got = ours(scrape(operator), ns)
        return got if value(got, "tsb_backup_suspicious", namespace=ns,
                            schedule="nightly") == 1 else None

    samples = wait_for(settled, 30, message="metrics never showed the Suspicious Backup")
    scraped_at = time.time()

    assert "TimesheetBackupSuspicious" in ALERTS
    full, bare = rules(cluster, tmp_path)
    run_tool(cluster, "promtool", "check", "rules", str(full))
    test = promtool_test(samples, scraped_at, bare, {
        "75m": {"TimesheetBackupSuspicious": [{"severity": "warning", "namespace": ns,
                                               "schedule": "nightly"}]},
    })
    test_file = tmp_path / "test.yaml"
    test_file.write_text(yaml.safe_dump(test))
    result = subprocess.run(["promtool", "test", "rules", test_file.name], cwd=tmp_path,
                            env=tool_env(cluster), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_row_count_mismatch_fails_the_restore_test(app: App) -> None:
    """The backup's manifest is edited in the bucket to claim one more row in
    public.timesheets than the dump holds: the schedule's restore test restores the dump,
    counts, and fails naming the table, the rows found and the rows expected."""
    database_only = backup_spec(app, components=["database"])
    app.create("backups", "seed", database_only,
               labels={"backup.northstar.io/schedule": "counted"})
    seed = app.wait_phase("backups", "seed", ("Succeeded", "Failed"))
    assert seed["status"]["phase"] == "Succeeded", seed["status"]
    rows = seed["status"]["rowCounts"]["public.timesheets"]
    key = seed["status"]["manifestKey"]
    s3 = app.s3()
    manifest = json.loads(s3.get_object(Bucket=app.bucket, Key=key)["Body"].read())
    database = next(a for a in manifest["artifacts"] if a["component"] == "database")
    database["rowCounts"]["public.timesheets"] = rows + 1
    s3.put_object(Bucket=app.bucket, Key=key, Body=json.dumps(manifest).encode())

    app.create("backupschedules", "counted", {
        "schedule": "0 0 1 1 *", "template": {"spec": database_only},
        "verification": {"schedule": "* * * * *", "database": f"{app.database}_counted"},
    })

    def verified() -> dict[str, Any] | None:
        return (app.get("backupschedules", "counted").get("status") or {}).get(
            "lastVerification")

    result = wait_for(verified, 200, interval=2, message="no restore test recorded")
    assert result["result"] == "Failed", result
    assert f"table public.timesheets has {rows} rows, the backup had {rows + 1}" in \
        result["message"], result
    assert not app.database_exists(f"{app.database}_counted")  # dropped all the same
