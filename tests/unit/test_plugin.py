"""The kubectl plugin's pure part (timesheet_backup/plugin.py) and its parser: objects to
rows, flags to Backup and Restore bodies, --dry-run YAML, usage errors (exit 2)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from timesheet_backup import constants as c
from timesheet_backup import plugin, plugin_cli
from timesheet_backup.api import models
from timesheet_backup.api.fields import SpecError, parse
from timesheet_backup.decisions.schedules import backup_body
from timesheet_backup.plugin import RestoreRequest, UsageError

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 14, 12, 0, 0, tzinfo=UTC)


def ts(delta: timedelta) -> str:
    return (NOW - delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def backup(name: str, created: timedelta, *, ns: str = "app", schedule: str | None = None,
           **status: Any) -> dict[str, Any]:
    labels = {c.LABEL_SCHEDULE: schedule} if schedule else {}
    return {"metadata": {"name": name, "namespace": ns, "labels": labels,
                         "creationTimestamp": ts(created)},
            "spec": {"components": ["database"]}, "status": status}


# --- formatting ---------------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "text"), [
    (-5, "<invalid>"), (-1, "0s"), (0, "0s"), (119, "119s"), (120, "2m"), (185, "3m5s"),
    (600, "10m"), (179 * 60, "179m"), (3 * 3600, "3h"), (3 * 3600 + 60, "3h1m"),
    (8 * 3600, "8h"), (47 * 3600, "47h"), (48 * 3600, "2d"), (50 * 3600, "2d2h"),
    (8 * 86400, "8d"), (729 * 86400, "729d"), (730 * 86400, "2y"), (731 * 86400, "2y1d"),
    (9 * 365 * 86400, "9y"),
])
def test_durations_read_like_kubectls_age(seconds: int, text: str) -> None:
    assert plugin.human_duration(seconds) == text


def test_times_relative_to_now() -> None:
    assert plugin.ago(ts(timedelta(hours=3)), NOW) == "3h ago"
    assert plugin.until((NOW + timedelta(minutes=30)).isoformat(), NOW) == "in 30m"
    assert plugin.ago(None, NOW) == plugin.until(None, NOW) == plugin.age(None, NOW) == "-"


def test_table_pads_every_column_but_the_last() -> None:
    assert plugin.table([["NAME", "PHASE", "X"], ["a-long-name", "Ok", "tail"]]) == \
        "NAME          PHASE   X\na-long-name   Ok      tail"
    assert plugin.table([]) == ""


# --- list ---------------------------------------------------------------------------------


def test_backup_rows_newest_first_with_size_age_verified_and_components() -> None:
    rows = plugin.backup_rows([
        backup("old", timedelta(days=3), schedule="nightly", phase="Succeeded",
               sizeBytes=1536, components="database,uploads",
               verification={"restore": "r", "time": ts(timedelta(days=2)),
                             "result": "Succeeded", "verifiedTime": ts(timedelta(days=2))}),
        backup("new", timedelta(minutes=5), phase="Running"),
        backup("failed-test", timedelta(days=1), schedule="nightly", phase="Succeeded",
               sizeBytes=10, verification={"restore": "r", "time": ts(timedelta(hours=1)),
                                           "result": "Failed"}),
        backup("passed-then-failed", timedelta(days=2), schedule="nightly",
               phase="Succeeded", sizeBytes=10,
               verification={"restore": "r", "time": ts(timedelta(hours=1)),
                             "result": "Failed", "verifiedTime": ts(timedelta(days=1))}),
    ], NOW)
    assert rows == [
        ["NAME", "SCHEDULE", "PHASE", "SIZE", "AGE", "VERIFIED", "COMPONENTS"],
        ["new", "-", "Running", "-", "5m", "-", "database"],
        ["failed-test", "nightly", "Succeeded", "10B", "24h", "failed", "database"],
        ["passed-then-failed", "nightly", "Succeeded", "10B", "2d", "yes,last-failed",
         "database"],
        ["old", "nightly", "Succeeded", "1.5KiB", "3d", "yes", "database,uploads"],
    ]


def test_backup_rows_of_all_namespaces_name_the_namespace() -> None:
    rows = plugin.backup_rows([backup("a", timedelta(hours=1), ns="one"),
                               backup("b", timedelta(hours=2), ns="two")], NOW, True)
    assert [r[:2] for r in rows] == [["NAMESPACE", "NAME"], ["one", "a"], ["two", "b"]]


def test_a_backup_without_status_or_label_shows_dashes() -> None:
    bare = {"metadata": {"name": "x", "creationTimestamp": ts(timedelta(seconds=3))}}
    assert plugin.backup_rows([bare], NOW)[1] == ["x", "-", "-", "-", "3s", "-", "-"]
    # A Backup whose label is gone still names its schedule from status.
    bare["status"] = {"schedule": "weekly"}
    assert plugin.backup_rows([bare], NOW)[1][1] == "weekly"


# --- status -------------------------------------------------------------------------------


def test_schedule_rows() -> None:
    schedules = [
        {"metadata": {"name": "nightly", "namespace": "app"},
         "spec": {"schedule": "0 2 * * *", "timeZone": "Europe/Berlin"},
         "status": {"lastSuccessfulTime": ts(timedelta(hours=10)),
                    "nextScheduleTime": (NOW + timedelta(hours=14)).isoformat(),
                    "lastVerification": {"time": ts(timedelta(hours=4)), "result": "Failed",
                                         "message": "m"}}},
        {"metadata": {"name": "adhoc", "namespace": "app"},
         "spec": {"schedule": "@weekly", "suspend": True},
         "status": {"nextScheduleTime": (NOW + timedelta(days=2)).isoformat()}},
    ]
    assert plugin.schedule_rows(schedules, NOW) == [
        ["NAME", "SCHEDULE", "SUSPENDED", "LAST SUCCESS", "NEXT RUN", "LAST VERIFIED"],
        ["adhoc", "@weekly", "True", "-", "-", "-"],
        ["nightly", "0 2 * * * (Europe/Berlin)", "False", "10h ago", "in 14h",
         "Failed 4h ago"],
    ]
    assert plugin.schedule_rows(schedules, NOW, True)[1][:2] == ["app", "adhoc"]


# --- backup now ---------------------------------------------------------------------------


SCHEDULE = {
    "apiVersion": c.API_VERSION, "kind": c.KIND_SCHEDULE,
    "metadata": {"name": "nightly", "namespace": "app", "uid": "u-1"},
    "spec": {"schedule": "0 2 * * *", "backupOwnerReference": "schedule",
             "template": {"metadata": {"labels": {"team": "a",
                                                  "app.kubernetes.io/instance": "argo"}},
                          "spec": {"components": ["database"],
                                   "database": {"name": "app"}}}},
}


def test_backup_from_a_schedule_is_what_a_run_creates() -> None:
    body = plugin.backup_from_schedule(SCHEDULE, None, NOW)
    name = "nightly-manual-20260314120000"
    spec = parse(models.BackupScheduleSpec, SCHEDULE["spec"])
    assert body == backup_body(SCHEDULE, spec, name)  # the schedule's own builder
    assert body["metadata"]["labels"] == {"team": "a", c.LABEL_MANAGED_BY: c.MANAGED_BY,
                                          c.LABEL_SCHEDULE: "nightly"}
    assert body["spec"] == {"components": ["database"], "database": {"name": "app"}}
    assert plugin.backup_from_schedule(SCHEDULE, "mine", NOW)["metadata"]["name"] == "mine"


def test_a_long_schedule_name_still_makes_a_label_value() -> None:
    long = {**SCHEDULE, "metadata": {**SCHEDULE["metadata"], "name": "s" * 63}}
    name = plugin.backup_from_schedule(long, None, NOW)["metadata"]["name"]
    assert len(name) <= 63 and name.endswith("-20260314120000")
    with pytest.raises(UsageError, match="longer than 63"):
        plugin.backup_from_schedule(SCHEDULE, "n" * 64, NOW)


def test_an_invalid_schedule_is_said() -> None:
    broken = {**SCHEDULE, "spec": {"schedule": "0 2 * * *", "templat": {}}}
    with pytest.raises(SpecError, match="templat"):
        plugin.backup_from_schedule(broken, None, NOW)


def test_a_one_off_backup_from_flags_or_a_manifest() -> None:
    assert plugin.backup_from_flags("app", None, (), None, NOW) == {
        "apiVersion": c.API_VERSION, "kind": c.KIND_BACKUP,
        "metadata": {"name": "backup-20260314120000", "namespace": "app"}, "spec": {}}
    manifest = {"kind": "Backup", "metadata": {"name": "before-upgrade", "namespace": "x",
                                               "labels": {"why": "upgrade"}},
                "spec": {"components": ["database", "uploads"], "deletionPolicy": "Retain"}}
    body = plugin.backup_from_flags("app", None, ["database"], manifest, NOW)
    assert body["metadata"] == {"name": "before-upgrade", "namespace": "x",
                                "labels": {"why": "upgrade"}}
    assert body["spec"] == {"components": ["database"], "deletionPolicy": "Retain"}
    # The manifest's namespace unless -n says another one, which is refused (as kubectl).
    manifest["metadata"]["namespace"] = "prod"
    assert plugin.backup_from_flags("ctx", None, (), manifest, NOW)["metadata"][
        "namespace"] == "prod"
    assert plugin.backup_from_flags("ctx", None, (), manifest, NOW, "prod")["metadata"][
        "namespace"] == "prod"
    with pytest.raises(UsageError, match="for namespace prod, not dev"):
        plugin.backup_from_flags("ctx", None, (), manifest, NOW, "dev")
    assert plugin.backup_from_flags("ctx", None, (), None, NOW, "dev")["metadata"][
        "namespace"] == "dev"
    with pytest.raises(UsageError, match="expected a Backup"):
        plugin.backup_from_flags("app", None, (), {"kind": "Restore"}, NOW)
    with pytest.raises(UsageError, match="databse"):
        plugin.backup_from_flags("app", None, (), {"spec": {"databse": {}}}, NOW)


# --- restore ------------------------------------------------------------------------------


def test_restore_latest_of_a_schedule() -> None:
    body = plugin.restore_body(RestoreRequest("latest", schedule="nightly"), "app", NOW)
    assert body == {"apiVersion": c.API_VERSION, "kind": c.KIND_RESTORE,
                    "metadata": {"name": "nightly-latest-20260314120000", "namespace": "app"},
                    "spec": {"latest": {"scheduleName": "nightly"}}}


def test_restore_latest_verified_before_a_time_one_table_into_a_side_database() -> None:
    body = plugin.restore_body(RestoreRequest(
        "latest", schedule="nightly", before="2026-03-14T09:00:00Z", verified_only=True,
        tables=["notifications", "notifications"], schemas=["public"], into="side",
        name="r1"), "app", NOW)
    assert body["metadata"]["name"] == "r1"
    assert body["spec"] == {
        "latest": {"scheduleName": "nightly", "before": "2026-03-14T09:00:00Z",
                   "verifiedOnly": True},
        # The database alone: a side-database restore must not replace the uploads.
        "components": ["database"],
        "database": {"name": "side", "createDatabase": True, "tables": ["notifications"],
                     "schemas": ["public"]},
    }
    parse(models.RestoreSpec, body["spec"])


def test_restore_latest_from_the_bucket_alone() -> None:
    body = plugin.restore_body(RestoreRequest(
        "latest", bucket="backups", backup_namespace="prod", schedule="nightly",
        before="2026-03-14T09:00:00Z", into="timesheet_db"), "dr", NOW)
    assert body["metadata"]["name"] == "nightly-latest-20260314120000"
    assert body["spec"] == {
        "source": {"storage": {"bucket": "backups"},
                   "latest": {"namespace": "prod", "scheduleName": "nightly",
                              "before": "2026-03-14T09:00:00Z"}},
        "components": ["database"],
        "database": {"name": "timesheet_db", "createDatabase": True},
    }
    parse(models.RestoreSpec, body["spec"])
    bare = plugin.restore_body(RestoreRequest("latest", bucket="backups"), "dr", NOW)
    assert bare["spec"] == {"source": {"storage": {"bucket": "backups"}, "latest": {}}}
    assert bare["metadata"]["name"] == "bucket-latest-20260314120000"


def test_restore_onto_a_fresh_server_with_its_roles() -> None:
    body = plugin.restore_body(RestoreRequest(
        "latest", bucket="backups", schedule="nightly", into="timesheet_db",
        db_host="pg-new.db", db_port=5433, db_user="postgres", db_secret="pg-new-admin",
        owner="timesheet", globals=True), "dr", NOW)
    assert body["spec"]["database"] == {
        "host": "pg-new.db", "port": 5433, "user": "postgres",
        "passwordSecretRef": {"name": "pg-new-admin", "key": "password"},
        "name": "timesheet_db", "createDatabase": True, "owner": "timesheet", "globals": True}
    assert body["spec"]["components"] == ["database"]
    parse(models.RestoreSpec, body["spec"])
    keyed = plugin.restore_body(RestoreRequest("b", db_secret="admin:pw"), "dr", NOW)
    assert keyed["spec"]["database"] == {"passwordSecretRef": {"name": "admin", "key": "pw"}}


def test_restore_a_backup_by_name() -> None:
    body = plugin.restore_body(RestoreRequest("nightly-1", quiesce=["web"],
                                              components=["database", "uploads"]), "app", NOW)
    assert body["metadata"]["name"] == "nightly-1-restore-20260314120000"
    assert body["spec"] == {"backupName": "nightly-1", "components": ["database", "uploads"],
                            "quiesce": {"deployments": ["web"]}}
    rows = plugin.restore_body(RestoreRequest("b", tables=["t"], data_only=True), "a", NOW)
    assert rows["spec"]["database"] == {"tables": ["t"], "dataOnly": True, "clean": False}


@pytest.mark.parametrize(("request_", "message"), [
    (RestoreRequest("latest"), "needs --schedule"),
    (RestoreRequest("b", schedule="nightly"), "use them with `restore latest`"),
    (RestoreRequest("b", verified_only=True), "use them with `restore latest`"),
    (RestoreRequest("latest", schedule="s", before="yesterday"), "not an RFC 3339 time"),
    (RestoreRequest("latest", schedule="s", before="2026-03-14T09:00:00"), "time zone"),
    (RestoreRequest("b", into="x", components=["uploads"]), "add --component database"),
    (RestoreRequest("b", data_only=True, schema_only=True), "exclude each other"),
    (RestoreRequest("b", name="n" * 64), "longer than 63"),
    (RestoreRequest("b", bucket="x"), "--from-bucket restores `latest`"),
    (RestoreRequest("latest", bucket="x", verified_only=True), "does not record restore tests"),
    (RestoreRequest("latest", schedule="s", backup_namespace="p"), "with --from-bucket"),
    (RestoreRequest("b", owner="timesheet"), "add --into DATABASE"),
    (RestoreRequest("b", globals=True, components=["uploads"]), "add --component database"),
    (RestoreRequest("b", db_secret=":pw"), "give NAME or NAME:KEY"),
])
def test_restore_flags_that_do_not_fit(request_: RestoreRequest, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        plugin.restore_body(request_, "app", NOW)


def test_parsed_flags_become_the_request() -> None:
    args = plugin_cli.build_parser().parse_args([
        "restore", "latest", "--schedule", "nightly", "--table", "a", "--table", "b",
        "--into", "side", "--verified-only", "-n", "app", "--dry-run"])
    assert plugin_cli.restore_request(args) == RestoreRequest(
        "latest", schedule="nightly", verified_only=True, tables=["a", "b"], into="side")
    assert (args.namespace, args.dry_run, args.wait) == ("app", True, False)
    args = plugin_cli.build_parser().parse_args([
        "restore", "latest", "--from-bucket", "backups", "--backup-namespace", "prod"])
    assert plugin_cli.restore_request(args) == RestoreRequest(
        "latest", bucket="backups", backup_namespace="prod")
    args = plugin_cli.build_parser().parse_args([
        "restore", "latest", "--from-bucket", "backups", "--into", "timesheet_db",
        "--db-host", "pg-new", "--db-port", "5433", "--db-user", "postgres",
        "--db-secret", "pg-new-admin", "--owner", "timesheet", "--globals"])
    assert plugin_cli.restore_request(args) == RestoreRequest(
        "latest", bucket="backups", into="timesheet_db", db_host="pg-new", db_port=5433,
        db_user="postgres", db_secret="pg-new-admin", owner="timesheet", globals=True)


# --- following and logs -------------------------------------------------------------------


def test_progress_and_outcome() -> None:
    running = {"metadata": {"name": "r"}, "status": {"phase": "Running",
                                                     "currentStep": "restore"}}
    assert plugin.progress("restore", running) == "restore/r Running: step restore"
    assert plugin.outcome("restore", running) is None
    assert plugin.progress("backup", {"metadata": {"name": "b"}}) == "backup/b Pending"
    done = {"metadata": {"name": "r"},
            "status": {"phase": "Succeeded", "currentStep": "verify", "message": "restored",
                       "restoredFrom": {"backupName": "nightly-1", "manifestKey": "k"}}}
    assert plugin.outcome("restore", done) == (True, "restore/r Succeeded: restored "
                                                     "(from nightly-1)")
    failed = {"metadata": {"name": "b"}, "status": {"phase": "Failed", "message": "no S3"}}
    assert plugin.outcome("backup", failed) == (False, "backup/b Failed: no S3")


def test_jobs_and_pods_oldest_first() -> None:
    def obj(name: str, created: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "creationTimestamp": created}}

    jobs = [obj("r-verify", "2026-03-14T10:05:00Z"), obj("r-restore", "2026-03-14T10:00:00Z")]
    assert plugin.jobs_in_order({"status": {"jobName": "r-hook-0"}}, jobs) == \
        ["r-restore", "r-verify", "r-hook-0"]
    assert plugin.jobs_in_order({}, []) == []
    assert plugin.pods_in_order([obj("p2", "2026-03-14T10:01:00Z"),
                                 obj("p1", "2026-03-14T10:00:00Z")]) == ["p1", "p2"]
    assert plugin.job_label("backup") == c.LABEL_BACKUP
    assert plugin.job_label("restore") == c.LABEL_RESTORE


# --- the command line ---------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = plugin_cli.main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def kubeconfig(tmp_path: Any) -> str:
    """A kubeconfig whose context names a namespace; no server is ever reached."""
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dev",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "dev", "context": {"cluster": "c", "user": "u",
                                                 "namespace": "timesheet"}},
                     {"name": "other", "context": {"cluster": "c", "user": "u"}}]}))
    return str(path)


def test_dry_run_prints_the_restore_as_yaml_in_the_contexts_namespace(
        capsys: pytest.CaptureFixture[str], kubeconfig: str) -> None:
    code, out, err = run(capsys, "restore", "latest", "--schedule", "nightly", "--into",
                         "side", "--name", "r", "--dry-run", "--kubeconfig", kubeconfig)
    assert (code, err) == (0, "")
    assert yaml.safe_load(out) == {
        "apiVersion": c.API_VERSION, "kind": c.KIND_RESTORE,
        "metadata": {"name": "r", "namespace": "timesheet"},
        "spec": {"latest": {"scheduleName": "nightly"}, "components": ["database"],
                 "database": {"name": "side", "createDatabase": True}}}
    code, out, _ = run(capsys, "backup", "now", "--name", "b", "--component", "database",
                       "--dry-run", "--kubeconfig", kubeconfig, "--context", "other")
    assert code == 0
    assert yaml.safe_load(out)["metadata"] == {"name": "b", "namespace": "default"}
    code, out, _ = run(capsys, "backup", "now", "--dry-run", "-n", "x", "--kubeconfig",
                       kubeconfig)
    assert yaml.safe_load(out)["metadata"]["namespace"] == "x"


def test_usage_errors_exit_2_in_one_line(capsys: pytest.CaptureFixture[str],
                                         kubeconfig: str) -> None:
    code, out, err = run(capsys, "restore", "latest", "--dry-run", "--kubeconfig", kubeconfig)
    assert (code, out) == (2, "")
    assert err.splitlines()[-1] == "error: restore latest needs --schedule NAME"
    code, _, err = run(capsys, "logs", "job", "x")
    assert code == 2 and "invalid choice" in err.splitlines()[-1]
    code, _, err = run(capsys, "backup", "now", "--from-schedule", "s", "--component",
                       "database", "--kubeconfig", kubeconfig)
    assert code == 2 and "not with -f or --component" in err


def test_failures_exit_1_in_one_line_without_a_traceback(
        capsys: pytest.CaptureFixture[str], kubeconfig: str, tmp_path: Any) -> None:
    code, out, err = run(capsys, "list", "--kubeconfig", str(tmp_path / "missing"))
    assert (code, out) == (1, "")
    assert err.startswith("error: kubeconfig: ") and len(err.splitlines()) == 1
    code, _, err = run(capsys, "list", "--kubeconfig", kubeconfig, "--context", "nope")
    assert code == 1 and err.startswith("error: kubeconfig: ") and "Traceback" not in err


def test_api_errors_say_the_servers_message() -> None:
    from kubernetes.client import ApiException

    exc = ApiException(status=409, reason="Conflict")
    exc.body = '{"message": "restores.backup.northstar.io \\"r\\" already exists"}'
    assert str(plugin_cli.api_failure(exc, "restore")) == \
        'restore: restores.backup.northstar.io "r" already exists'
    missing = ApiException(status=404, reason="Not Found")
    missing.body = '{"message": "the server could not find the requested resource"}'
    assert "CRDs installed?" in str(plugin_cli.api_failure(missing, "list"))
    assert str(plugin_cli.api_failure(ApiException(status=500, reason="Boom"), "x")) == \
        "x: Boom"


class Phases:
    """Stands in for the cluster in `follow`: each read returns the next status."""

    def __init__(self, *statuses: dict[str, Any]) -> None:
        self.statuses = list(statuses)

    def get(self, plural: str, name: str) -> dict[str, Any]:
        assert plural == c.PLURAL_RESTORE
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return {"metadata": {"name": name}, "status": status}


def test_wait_prints_each_change_and_fails_with_the_failure(
        capsys: pytest.CaptureFixture[str]) -> None:
    running = {"phase": "Running", "currentStep": "restore"}
    client: Any = Phases({}, running, running, {"phase": "Succeeded", "message": "ok"})
    assert plugin_cli.follow(client, "restore", "r", 60, sleep=lambda _: None) == 0
    assert capsys.readouterr().out.splitlines() == [
        "restore/r Pending", "restore/r Running: step restore", "restore/r Succeeded: ok"]
    client = Phases(running, {"phase": "Failed", "message": "no such table"})
    with pytest.raises(plugin_cli.Failure, match="restore/r Failed: no such table"):
        plugin_cli.follow(client, "restore", "r", 60, sleep=lambda _: None)
    with pytest.raises(plugin_cli.Failure, match="did not end within 0s"):
        plugin_cli.follow(Phases(running), "restore", "r", 0, sleep=lambda _: None)
