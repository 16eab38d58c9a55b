"""What the agent-level benchmark runs against, built once and cached between runs.

- A PostgreSQL server (tests/support/pgserver.py) whose data directory lives in the cache
  (`BENCH_CACHE`, default /var/tmp/tsb-bench), holding one generated database per size.
  Generating gigabytes takes minutes; a rerun with the same sizes reuses them.
- An uploads tree per parameter set, and a many-small-files tree per file count, in the
  same cache.
- A fresh versitygw S3 server per run (tests/support/s3server.py).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

from psycopg import sql

from bench import datagen
from tests.support.pgserver import PostgresServer, free_port

# Bump when datagen's output changes, so cached databases are rebuilt.
GEN_VERSION = 3

# Settings of a server sized for gigabytes rather than for unit-sized test data.
PG_SETTINGS = {
    "shared_buffers": "512MB",
    "maintenance_work_mem": "256MB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
}


def cache_dir() -> Path:
    path = Path(os.environ.get("BENCH_CACHE", "/var/tmp/tsb-bench"))  # noqa: S108
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    return path


class CachedPostgres(PostgresServer):
    """A PostgresServer whose cluster survives the run: initdb once, then reuse it (same
    password, a new free port each start)."""

    def __init__(self, base: Path) -> None:
        state = base.parent / f"{base.name}.json"
        reuse = (base / "data" / "PG_VERSION").is_file() and state.is_file()
        super().__init__(base_dir=base, settings=PG_SETTINGS)
        self._own_base = False  # cleanup() stops it but keeps the cache
        self.state = state
        if reuse:
            saved = json.loads(state.read_text())
            self.password = saved["password"]
            self.role_passwords[self.user] = self.password
            self.port = free_port()
            with (self.data_dir / "postgresql.conf").open("a") as f:
                f.write(f"port = '{self.port}'\n")
            self._initialized = True
        else:
            shutil.rmtree(base, ignore_errors=True)

    def init(self) -> None:
        fresh = not self._initialized
        super().init()
        if fresh:
            self.state.write_text(json.dumps({"password": self.password}))
            self.state.chmod(0o600)


def database_name(gib: float) -> str:
    return f"bench_{gib:g}gib_v{GEN_VERSION}".replace(".", "p")


def ensure_database(pg: PostgresServer, gib: float, log: Any) -> tuple[str, float]:
    """The generated database of about `gib` GiB: (name, seconds spent generating it now)."""
    name = database_name(gib)
    building = f"{name}_building"
    with pg.connect() as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                              (name,)).fetchone()
        if exists:
            return name, 0.0
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(building)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(building)))
    log(f"generating database {name} ({gib:g} GiB)")
    start = time.monotonic()
    datagen.generate(lambda: pg.connect(building), gib)
    with pg.connect() as conn:
        # Renamed only when complete: an interrupted generation is never mistaken for one.
        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
            sql.Identifier(building), sql.Identifier(name)))
    return name, round(time.monotonic() - start, 1)


def database_facts(pg: PostgresServer, name: str) -> dict[str, Any]:
    with pg.connect(name) as conn:
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        rows = {t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                    sql.Identifier(t))).fetchone()[0]  # type: ignore[index]
                for t in ("accounts", "timesheets", "entries", "notifications", "attachments")}
    assert size is not None
    return {"name": name, "sizeBytes": int(size[0]), "rows": rows}


def table_counts(pg: PostgresServer, name: str) -> dict[str, int]:
    return dict(database_facts(pg, name)["rows"])


WORDS = datagen.WORDS


def ensure_uploads(small_files: int, large_files: int, large_mib: int,
                   log: Any) -> tuple[Path, float]:
    """A tree like an uploads volume: `small_files` receipts and documents of 1-50 KiB (half
    text, half already-compressed binary), in <account>/<timesheet>/ directories, plus
    `large_files` random files of `large_mib` MiB (scans, videos)."""
    root = cache_dir() / f"uploads-{small_files}-{large_files}x{large_mib}"
    if root.is_dir():
        return root, 0.0
    log(f"generating uploads tree {root.name}")
    start = time.monotonic()
    building = root.with_name(root.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    rng = random.Random(6)  # noqa: S311  (test data, not secrets)
    for i in range(small_files):
        directory = building / f"{i % 500:04d}" / f"{i % 37:02d}"
        directory.mkdir(parents=True, exist_ok=True)
        size = rng.randint(1024, 50 * 1024)
        if i % 2:
            data = os.urandom(size)
            name = f"receipt-{i}.jpg"
        else:
            text = " ".join(rng.choice(WORDS) for _ in range(size // 6 + 1))
            data = text.encode()[:size]
            name = f"notes-{i}.txt"
        (directory / name).write_bytes(data)
    big = building / "scans"
    big.mkdir(parents=True, exist_ok=True)
    chunk = 4 * 1024 * 1024
    for i in range(large_files):
        with (big / f"scan-{i}.bin").open("wb") as f:
            for _ in range(large_mib * 1024 * 1024 // chunk):
                f.write(os.urandom(chunk))
    building.rename(root)
    return root, round(time.monotonic() - start, 1)


# Bump when ensure_many_files's output changes, so cached trees are rebuilt.
MANY_FILES_VERSION = 1
MANY_FILES_PER_DIR = 400


def ensure_many_files(count: int, log: Any) -> tuple[Path, float]:
    """A tree of `count` small files of 1-8 KiB, like a volume of receipts: a third text
    (`.txt`, words of the database vocabulary), a third random bytes (`.jpg`, compressed
    already), a third PDF-like (a text quarter, then random bytes), in
    <account>/<year>/<month>/ directories of 400 files each.

    Cached in BENCH_CACHE as many-<count>; a stamp file beside it, written last, marks a
    complete tree (no stamp, or another version in it: the tree is rebuilt)."""
    root = cache_dir() / f"many-{count}"
    stamp = root.with_name(root.name + ".done")
    expected = json.dumps({"version": MANY_FILES_VERSION, "count": count})
    if root.is_dir() and stamp.is_file() and stamp.read_text() == expected:
        return root, 0.0
    log(f"generating many-file tree {root.name}")
    start = time.monotonic()
    stamp.unlink(missing_ok=True)
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(13)  # noqa: S311  (test data, not secrets)
    # Text comes from an 8 MiB pool of words, sliced at random offsets: generating words per
    # file costs ~100x more, and a pool this size rarely repeats within zstd's window.
    pool = " ".join(rng.choices(WORDS, k=8 * 2**20 // 6)).encode()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    dir_fd = -1
    try:
        for i in range(count):
            if i % MANY_FILES_PER_DIR == 0:
                if dir_fd >= 0:
                    os.close(dir_fd)
                d = i // MANY_FILES_PER_DIR
                directory = root / f"{d // 24:04d}" / str(2023 + d % 24 // 12) / \
                    f"{d % 12 + 1:02d}"
                directory.mkdir(parents=True)
                dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            size = rng.randint(1024, 8 * 1024)
            kind = i % 3
            if kind == 0:
                at = rng.randrange(len(pool) - size)
                data = pool[at:at + size]
                name = f"note-{i}.txt"
            elif kind == 1:
                data = os.urandom(size)
                name = f"receipt-{i}.jpg"
            else:
                head = size // 4
                at = rng.randrange(len(pool) - head)
                data = pool[at:at + head] + os.urandom(size - head)
                name = f"invoice-{i}.pdf"
            fd = os.open(name, flags, 0o644, dir_fd=dir_fd)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
    finally:
        if dir_fd >= 0:
            os.close(dir_fd)
    stamp.write_text(expected)
    return root, round(time.monotonic() - start, 1)


def tree_bytes(root: Path) -> tuple[int, int]:
    total = count = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            total += (Path(dirpath) / name).stat().st_size
            count += 1
    return total, count
