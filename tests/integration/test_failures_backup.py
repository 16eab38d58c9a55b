"""A backup that cannot succeed fails clearly: one `error:` line, no traceback, the reason
in the termination message, no secret printed, no manifest, no objects, no orphan
multipart upload."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from tests.support.agent import (
    AGENT,
    DB_USER,
    agent_env,
    assert_failed_cleanly,
    backup_args,
    db_password,
    manifest_key,
    run_agent,
    s3_args,
)
from tests.support.pgserver import PostgresServer
from tests.support.s3server import Proxy, S3Server


def test_wrong_password(
    pg: PostgresServer,
    s3: S3Server,
    bucket: str,
    sample_db: str,
    uploads_tree: Path,
    tmp_path: Path,
) -> None:
    wrong = "not-the-password-xyzzy"
    run = run_agent(
        backup_args(pg, s3, bucket, sample_db, uploads_tree),
        agent_env(tmp_path, pg, s3, {"PGPASSWORD": wrong}),
        tmp_path,
    )
    assert_failed_cleanly(run, s3, bucket, secret=wrong)
    assert "password authentication failed" in run.error_line
    assert "check the database password Secret" in run.error_line
    assert run.termination is not None and run.termination["reason"] == "DatabaseError"


def test_database_down(
    pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str, tmp_path: Path
) -> None:
    pg.stop()
    run = run_agent(
        backup_args(pg, s3, bucket, sample_db, None), agent_env(tmp_path, pg, s3), tmp_path
    )
    assert_failed_cleanly(run, s3, bucket, secret=db_password(pg))
    assert "the database server is unreachable" in run.error_line


def test_missing_database(pg: PostgresServer, s3: S3Server, bucket: str, tmp_path: Path) -> None:
    run = run_agent(
        backup_args(pg, s3, bucket, "no_such_db", None), agent_env(tmp_path, pg, s3), tmp_path
    )
    assert_failed_cleanly(run, s3, bucket)
    assert 'database "no_such_db" does not exist' in run.error_line


def test_missing_bucket(pg: PostgresServer, s3: S3Server, sample_db: str, tmp_path: Path) -> None:
    run = run_agent(
        backup_args(pg, s3, "no-such-bucket-tsb", sample_db, None),
        agent_env(tmp_path, pg, s3),
        tmp_path,
    )
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "bucket 'no-such-bucket-tsb' does not exist" in run.error_line
    assert run.termination is not None and run.termination["reason"] == "BucketMissing"


def test_refused_credentials(
    pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str, tmp_path: Path
) -> None:
    wrong_secret = "wrong-secret-key-0123456789"
    env = agent_env(tmp_path, pg, s3, {"AWS_SECRET_ACCESS_KEY": wrong_secret})
    run = run_agent(backup_args(pg, s3, bucket, sample_db, None), env, tmp_path)
    assert_failed_cleanly(run, s3, bucket, secret=wrong_secret)
    assert "refused the credentials" in run.error_line or "access denied" in run.error_line


def test_no_credentials_at_all(
    pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str, tmp_path: Path
) -> None:
    env = agent_env(tmp_path, pg, None)
    run = run_agent(backup_args(pg, s3, bucket, sample_db, None), env, tmp_path)
    assert_failed_cleanly(run, s3, bucket)
    assert "no S3 credentials" in run.error_line


def test_uploads_volume_missing(
    pg: PostgresServer, s3: S3Server, bucket: str, sample_db: str, tmp_path: Path
) -> None:
    run = run_agent(
        backup_args(pg, s3, bucket, sample_db, tmp_path / "not-mounted"),
        agent_env(tmp_path, pg, s3),
        tmp_path,
    )
    assert_failed_cleanly(run, s3, bucket)
    assert "is the volume mounted?" in run.error_line
    assert run.termination is not None and run.termination["reason"] == "FilesystemError"


def test_connection_cut_mid_upload_aborts_the_multipart_upload(
    pg: PostgresServer,
    s3: S3Server,
    s3_proxy: Proxy,
    bucket: str,
    sample_db: str,
    tmp_path: Path,
) -> None:
    """Every connection through the proxy dies after 300 kB sent: small requests pass, every
    attempt at the first part is cut. After the retries the upload must be aborted."""
    s3_proxy.cut_after(300_000, stream="upstream")
    args = backup_args(
        pg, s3, bucket, sample_db, None, extra=("--compression", "none", "--max-attempts", "2")
    )
    args[args.index("--endpoint") + 1] = s3_proxy.url
    run = run_agent(args, agent_env(tmp_path, pg, s3), tmp_path)
    s3_proxy.clear()
    assert_failed_cleanly(run, s3, bucket, secret=s3.secret_key)
    assert "upload part 1" in run.error_line


def test_later_component_failure_removes_the_earlier_artifact(
    pg: PostgresServer,
    s3: S3Server,
    s3_proxy: Proxy,
    bucket: str,
    sample_db: str,
    uploads_tree: Path,
    tmp_path: Path,
) -> None:
    """The database artifact (< 1 MB) gets through, the uploads part (> 2 MB) never does:
    the database object is deleted again and no manifest is written."""
    s3_proxy.cut_after(2_000_000, stream="upstream")
    args = backup_args(pg, s3, bucket, sample_db, uploads_tree, extra=("--max-attempts", "2"))
    args[args.index("--endpoint") + 1] = s3_proxy.url
    run = run_agent(args, agent_env(tmp_path, pg, s3), tmp_path)
    s3_proxy.clear()
    assert_failed_cleanly(run, s3, bucket)
    assert "uploads.tar.zst" in run.error_line
    assert "uploaded s3://" in run.stderr  # the database artifact had made it


def test_retries_ride_out_a_short_outage(
    pg: PostgresServer,
    s3: S3Server,
    s3_proxy: Proxy,
    bucket: str,
    sample_db: str,
    tmp_path: Path,
) -> None:
    """Connections are reset for two seconds; retries with backoff carry the backup over."""
    toxic = s3_proxy.reset_peer()
    args = backup_args(pg, s3, bucket, sample_db, None, extra=("--max-attempts", "10"))
    args[args.index("--endpoint") + 1] = s3_proxy.url
    proc = subprocess.Popen(
        [*AGENT, *args, "--termination-message-path", ""],
        env=agent_env(tmp_path, pg, s3),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(2)
    s3_proxy.remove_toxic(toxic)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert manifest_key() in s3.list_keys(bucket)
    assert s3.list_multipart_uploads(bucket) == []


def test_bad_arguments_are_config_errors(
    pg: PostgresServer, s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    base = [
        "agent",
        "backup",
        "--namespace",
        "prod",
        "--name",
        "x",
        "--component",
        "database",
        "--db-host",
        pg.host,
        "--db-user",
        DB_USER,
        "--db-name",
        "d",
        *s3_args(s3, bucket),
    ]
    cases = {
        "needs --db-format directory": ["--db-jobs", "4"],
        "zstd level must be between": ["--compression-level", "40"],
        "invalid age recipient": ["--age-recipient", "age1bogus"],
        "--part-size must be between": ["--part-size", "1MiB"],
    }
    for expected, extra in cases.items():
        run = run_agent([*base, *extra], agent_env(tmp_path, pg, s3), tmp_path)
        assert run.returncode == 2, run.describe()
        assert expected in run.error_line and "Traceback" not in run.stderr
        assert run.termination is not None and run.termination["reason"] == "InvalidConfiguration"
    assert s3.list_keys(bucket) == []


def test_sigterm_mid_upload_cleans_up(
    pg: PostgresServer,
    s3: S3Server,
    s3_proxy: Proxy,
    bucket: str,
    sample_db: str,
    tmp_path: Path,
) -> None:
    """A Job past its deadline gets SIGTERM: the agent aborts the multipart upload, kills
    pg_dump and reports `Interrupted` before the kubelet's SIGKILL."""
    s3_proxy.bandwidth(1000, stream="upstream")  # ~1 MB/s: the upload takes seconds
    args = backup_args(pg, s3, bucket, sample_db, None, extra=("--compression", "none"))
    args[args.index("--endpoint") + 1] = s3_proxy.url
    term = tmp_path / "termination.json"
    proc = subprocess.Popen(
        [*AGENT, *args, "--termination-message-path", str(term)],
        env=agent_env(tmp_path, pg, s3),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not s3.list_multipart_uploads(bucket) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert s3.list_multipart_uploads(bucket), "the upload never started"
    started = time.monotonic()
    proc.terminate()
    _, err = proc.communicate(timeout=120)
    assert time.monotonic() - started < 30  # within Kubernetes' default grace period
    assert proc.returncode == 143, err
    assert "error: stopped by SIGTERM" in err and "Traceback" not in err
    assert json.loads(term.read_text())["reason"] == "Interrupted"
    assert s3.list_multipart_uploads(bucket) == []
    assert s3.list_keys(bucket) == []
    # pg_dump was killed: no session of ours is left on the database
    rows = pg.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
        (sample_db, "timesheet-backup"),
    )
    assert rows == [(0,)]
