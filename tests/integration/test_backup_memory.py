"""The agent's memory is bounded by its buffers, not by the size of the database.

A database of a few hundred MB is backed up (custom format, zstd, a streaming multipart
upload) and restored (streamed into pg_restore). The agent's peak resident set size (VmHWM
of its own process, read from /proc while it runs) must stay under

    part size x (concurrency + 1)   the part being filled plus the parts in flight
    + BASELINE                      interpreter, boto3, zstd workers, pipe and copy buffers

which for the settings below is far below the size of the dump. The numbers are printed
(`pytest -s`) so a change in the memory profile is visible.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.support.agent import (
    AGENT,
    agent_env,
    backup_args,
    manifest_key,
    read_manifest,
    restore_args,
)
from tests.support.dbsnapshot import APP_ROLE
from tests.support.pgserver import PostgresServer
from tests.support.s3server import S3Server

MiB = 1024 * 1024
PART_SIZE = 8 * MiB
CONCURRENCY = 4
BASELINE = 160 * MiB
TARGET_DB_BYTES = 300 * MiB


def peak_rss(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, int, str]:
    """(exit code, peak RSS in bytes of the agent process, stderr)."""
    proc = subprocess.Popen(
        [*AGENT, *args, "--termination-message-path", ""],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = 0
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
        time.sleep(0.02)
    reader.join(timeout=30)
    return proc.returncode, peak, "".join(stderr)


@pytest.fixture
def big_db(pg: PostgresServer, scratch_db_name: str) -> str:
    """~300 MB of rows, mostly incompressible (random bytea): what a few years of timesheets
    with attachment thumbnails might weigh. Owned by the application's role, which the
    agent connects as."""
    pg.create_database(scratch_db_name, owner=APP_ROLE)
    with pg.connection(scratch_db_name, user=APP_ROLE) as conn:
        conn.execute("CREATE TABLE bulk (id bigint PRIMARY KEY, note text, thumb bytea)")
        rows, batch = 1_600_000, 200_000
        for start in range(0, rows, batch):
            conn.execute(
                """
                INSERT INTO bulk
                SELECT g,
                       md5(g::text) || ' timesheet entry ' || g,
                       decode(md5(random()::text) || md5(random()::text) || md5(random()::text)
                              || md5(random()::text) || md5(random()::text)
                              || md5(random()::text), 'hex')
                  FROM generate_series(%s::bigint, %s::bigint) g
                """,
                (start + 1, start + batch),
            )
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    assert size is not None and size[0] >= TARGET_DB_BYTES * 0.8, size
    return scratch_db_name


def test_peak_memory_is_bounded_by_part_size_and_concurrency(
    pg: PostgresServer, s3: S3Server, bucket: str, big_db: str, tmp_path: Path
) -> None:
    with pg.connection(big_db) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    db_bytes = int(row[0]) if row else 0
    tuning = ["--part-size", str(PART_SIZE), "--concurrency", str(CONCURRENCY)]
    code, backup_peak, err = peak_rss(
        backup_args(pg, s3, bucket, big_db, None, extra=tuning),
        agent_env(tmp_path, pg, s3),
        tmp_path,
    )
    assert code == 0, err
    artifact = read_manifest(s3, bucket, manifest_key())["artifacts"][0]

    restored = f"{big_db}_restored"
    try:
        code, restore_peak, err = peak_rss(
            restore_args(
                pg,
                s3,
                bucket,
                manifest_key(),
                restored,
                None,
                extra=["--create-database"],
            ),
            agent_env(tmp_path, pg, s3),
            tmp_path,
        )
        assert code == 0, err
    finally:
        pg.drop_database(restored)

    bound = PART_SIZE * (CONCURRENCY + 1) + BASELINE
    print(
        f"\ndatabase {db_bytes / MiB:.0f} MiB, artifact {artifact['sizeBytes'] / MiB:.0f} MiB "
        f"in {artifact['sizeBytes'] // PART_SIZE + 1} parts; peak RSS backup "
        f"{backup_peak / MiB:.0f} MiB, restore {restore_peak / MiB:.0f} MiB; "
        f"bound {bound / MiB:.0f} MiB"
    )
    assert artifact["sizeBytes"] > 4 * PART_SIZE * (CONCURRENCY + 1)  # many parts in flight
    assert 0 < backup_peak < bound
    assert 0 < restore_peak < bound
