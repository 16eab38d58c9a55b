"""/metrics from the operator the chart installed, and the chart's alert rules tested with
promtool against exactly those samples.

One namespace gets: a schedule with a good backup but a failing restore test, a schedule
whose backup fails, a weekly schedule that never ran, and a failed Restore. The operator's
real /metrics output becomes promtool's input series (timestamps shifted so that promtool's
clock starts an hour before the scrape), and each alert must fire for exactly the objects
that should trip it: now, and 40 hours later when the daily schedules are overdue but the
weekly one is not."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_operator import backup_spec
from tests.support.cluster import Cluster, wait_for
from tests.support.operator import App, Operator, run_tool, tool_env
from timesheet_backup.status import parse_time

pytestmark = pytest.mark.e2e

CHART = "charts/timesheet-backup-operator"
ALERTS = ("TimesheetBackupMissing", "TimesheetBackupFailed", "TimesheetVerificationFailed",
          "TimesheetRestoreFailed", "TimesheetBackupSuspicious")
HOUR = 3600.0

Sample = tuple[str, dict[str, str], float]


def scrape(operator: Operator) -> list[Sample]:
    with urllib.request.urlopen(operator.metrics_url(), timeout=10) as response:
        text = response.read().decode()
    return [(s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(text) for s in family.samples]


def ours(samples: list[Sample], namespace: str) -> list[Sample]:
    return [s for s in samples if s[0].startswith("tsb_") and s[1].get("namespace") == namespace]


def value(samples: list[Sample], name: str, **labels: str) -> float | None:
    found = [v for n, lab, v in samples if n == name and lab == labels]
    return found[0] if found else None


def rules(cluster: Cluster, directory: Path) -> tuple[Path, Path]:
    """The chart's PrometheusRule as a rules file, and a copy without annotations (promtool
    compares annotations too; the full file is checked by `promtool check rules`)."""
    rendered = run_tool(cluster, "helm", "template", "tsb", CHART,
                        "--set", "metrics.prometheusRule.enabled=true",
                        "--show-only", "templates/prometheusrule.yaml").stdout
    groups = yaml.safe_load(rendered)["spec"]["groups"]
    full, bare = directory / "rules.yaml", directory / "rules-bare.yaml"
    full.write_text(yaml.safe_dump({"groups": groups}))
    stripped = [{**g, "rules": [{k: v for k, v in r.items() if k != "annotations"}
                                for r in g["rules"]]} for g in groups]
    bare.write_text(yaml.safe_dump({"groups": stripped}))
    assert {r["alert"] for g in groups for r in g["rules"]} == set(ALERTS)
    return full, bare


def series_text(name: str, labels: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def promtool_test(samples: list[Sample], scraped_at: float, rules_file: Path,
                  expected: dict[str, dict[str, list[dict[str, str]]]]) -> dict[str, Any]:
    # promtool's clock starts at 0: shift every timestamp so that its 1h is the scrape time.
    base = scraped_at - HOUR
    input_series = []
    for name, labels, v in samples:
        shifted = v - base if name.endswith("_timestamp_seconds") else v
        # What Prometheus adds when it scrapes the Service.
        target = {**labels, "job": "tsb-timesheet-backup-operator-metrics",
                  "instance": "10.0.0.1:8080"}
        input_series.append({"series": series_text(name, target),
                             "values": f"{shifted!r}+0x2400"})  # 40 h of 1-minute samples
    tests = []
    for eval_time, alerts in expected.items():
        for alert in ALERTS:
            tests.append({"eval_time": eval_time, "alertname": alert,
                          "exp_alerts": [{"exp_labels": labels}
                                         for labels in alerts.get(alert, [])]})
    return {"rule_files": [rules_file.name], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": input_series,
                       "alert_rule_test": tests}]}


def test_metrics_and_alert_rules(cluster: Cluster, app: App, operator: Operator,
                                 tmp_path: Path) -> None:
    ns = app.namespace
    db_only = backup_spec(app, components=["database"])
    # "nightly": its backup succeeds, its restore test fails.
    app.create("backups", "nightly-seed", db_only,
               labels={"backup.northstar.io/schedule": "nightly"})
    app.create("backupschedules", "nightly", {
        "schedule": "0 2 * * *",
        "template": {"spec": db_only},
        "verification": {"schedule": "* * * * *", "database": f"{app.database}_check",
                         "checks": ["SELECT count(*) = 0 FROM timesheets"]},
    })
    # "broken": its first run fails (the database does not exist).
    app.create("backupschedules", "broken", {
        "schedule": "0 2 * * *", "runOnCreate": True,
        "template": {"spec": {**db_only, "database": app.database_spec("no_such_db"),
                              "job": {"backoffLimit": 0}}},
    })
    # "weekly": never ran; weekly, so 40 hours without a backup is still fine.
    app.create("backupschedules", "weekly", {"schedule": "0 3 * * 0",
                                             "template": {"spec": db_only}})
    app.create("restores", "lost", {"backupName": "no-such-backup"})

    seed = app.wait_phase("backups", "nightly-seed", ("Succeeded", "Failed"))
    assert seed["status"]["phase"] == "Succeeded"
    assert app.wait_phase("restores", "lost", ("Succeeded", "Failed"))["status"]["phase"] == \
        "Failed"

    def broken_backup_failed() -> bool:
        runs = app.list("backups", "backup.northstar.io/schedule=broken")
        return any((b.get("status") or {}).get("phase") == "Failed" for b in runs)

    wait_for(broken_backup_failed, 180, interval=2, message="broken schedule's run not Failed")

    def verified() -> dict[str, Any] | None:
        return (app.get("backupschedules", "nightly").get("status") or {}).get(
            "lastVerification")

    assert wait_for(verified, 200, interval=2, message="no restore test")["result"] == "Failed"

    # The gauges follow the objects (give the watch a moment to deliver the last events).
    def settled() -> list[Sample] | None:
        got = ours(scrape(operator), ns)
        return got if value(got, "tsb_verification_last_succeeded", namespace=ns,
                            schedule="nightly") == 0 else None

    samples = wait_for(settled, 30, message="metrics never showed the failed restore test")
    scraped_at = time.time()
    nightly = {"namespace": ns, "schedule": "nightly", "component": "database"}
    broken = {"namespace": ns, "schedule": "broken", "component": "database"}
    weekly = {"namespace": ns, "schedule": "weekly", "component": "database"}
    completed_at = parse_time(seed["status"]["completionTime"])
    assert completed_at is not None
    assert value(samples, "tsb_backup_last_success_timestamp_seconds", **nightly) == \
        completed_at.timestamp()
    assert value(samples, "tsb_backup_last_size_bytes", **nightly) == \
        seed["status"]["artifacts"][0]["sizeBytes"]
    assert value(samples, "tsb_backup_expected_interval_seconds", **nightly) == 86400
    assert value(samples, "tsb_backup_expected_interval_seconds", **weekly) == 7 * 86400
    assert value(samples, "tsb_backup_last_failure_timestamp_seconds", **broken) is not None
    assert value(samples, "tsb_backup_last_success_timestamp_seconds", **broken) is None
    assert value(samples, "tsb_restore_failed", namespace=ns, restore="lost") == 1
    assert (value(samples, "tsb_backups_total", namespace=ns, schedule="broken",
                  result="Failed") or 0) >= 1
    assert (value(samples, "tsb_verifications_total", namespace=ns, schedule="nightly",
                  result="Failed") or 0) >= 1

    full, bare = rules(cluster, tmp_path)
    run_tool(cluster, "promtool", "check", "rules", str(full))
    overdue = [{"severity": "critical", **labels} for labels in (nightly, broken)]
    test = promtool_test(samples, scraped_at, bare, {
        "75m": {  # a quarter of an hour after the scrape
            "TimesheetBackupFailed": [{"severity": "warning", **broken}],
            "TimesheetVerificationFailed": [{"severity": "critical", "namespace": ns,
                                             "schedule": "nightly"}],
            "TimesheetRestoreFailed": [{"severity": "critical", "namespace": ns,
                                        "restore": "lost"}],
        },
        "40h": {  # daily schedules overdue (> 36 h), the weekly one not (< 10.5 days)
            "TimesheetBackupMissing": overdue,
            "TimesheetBackupFailed": [{"severity": "warning", **broken}],
            "TimesheetVerificationFailed": [{"severity": "critical", "namespace": ns,
                                             "schedule": "nightly"}],
            "TimesheetRestoreFailed": [{"severity": "critical", "namespace": ns,
                                        "restore": "lost"}],
        },
    })
    test_file = tmp_path / "test.yaml"
    test_file.write_text(yaml.safe_dump(test))
    result = subprocess.run(["promtool", "test", "rules", test_file.name], cwd=tmp_path,
                            env=tool_env(cluster), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr

    # A deleted schedule takes its series with it.
    app.delete("backupschedules", "broken")
    for b in app.list("backups", "backup.northstar.io/schedule=broken"):
        app.delete("backups", b["metadata"]["name"])

    def forgotten() -> bool:
        return not [s for s in ours(scrape(operator), ns) if s[1].get("schedule") == "broken"]

    wait_for(forgotten, 60, interval=2, message="series of the deleted schedule remain")
