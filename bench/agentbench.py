"""The agent against the manual guide (docs/benchmarks.md, "Agent vs the guide").

Every command runs as its own process, measured by bench.measure: the agent through its
console entry point with the environment a Job gives it (secrets only in the environment),
the guide's commands as the shell pipelines the guide prints.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from psycopg import sql

from bench import fixtures
from bench.measure import Measured, ServerCpu, run, shell
from tests.support.pgserver import PostgresServer
from tests.support.s3server import S3Server

AGENT = [sys.executable, "-m", "timesheet_backup"]


class AgentBench:
    def __init__(self, pg: PostgresServer, s3: S3Server, work: Path,
                 log: Callable[[str], None]) -> None:
        self.pg, self.s3, self.work, self.log = pg, s3, work, log
        self.bucket = s3.make_bucket("tsb-bench")
        pg_pid = pg.postmaster_pid
        s3_proc = getattr(s3, "_proc", None)
        servers: dict[str, tuple[int, bool]] = {}
        if pg_pid:
            servers["postgres"] = (pg_pid, True)
        if s3_proc is not None:
            servers["versitygw"] = (s3_proc.pid, False)
        self.servers = ServerCpu(servers)
        self.env = {
            "PATH": f"{pg.bin_dir}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(work),
            "LANG": "C.UTF-8",
            "TMPDIR": str(work),
            "AWS_CONFIG_FILE": str(work / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(work / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
            "PGPASSWORD": pg.password,
            **s3.env(),
        }
        self.counter = 0

    # ------------------------------------------------------------------ helpers

    def measured(self, what: str, m: Measured) -> dict[str, Any]:
        if m.returncode != 0:
            raise RuntimeError(f"{what} failed ({m.returncode}):\n{m.stdout[-2000:]}\n"
                               f"{m.stderr[-4000:]}")
        self.log(f"  {what}: {m.seconds:.1f} s, cpu {m.cpu_seconds:.1f} s, "
                 f"peak rss {m.peak_rss_bytes / 2**20:.0f} MiB, servers {m.servers_cpu}, "
                 f"by command {m.cpu_by_command}")
        return m.summary()

    def pg_flags(self) -> str:
        return f"-h {self.pg.host} -p {self.pg.port} -U {self.pg.user}"

    def s3_args(self) -> list[str]:
        return ["--bucket", self.bucket, "--prefix", "bench", "--endpoint", self.s3.endpoint,
                "--force-path-style", "--region", self.s3.region]

    def termination(self) -> list[str]:
        self.counter += 1
        return ["--termination-message-path", str(self.work / f"term-{self.counter}.json")]

    def agent_backup(self, name: str, component: str, dbname: str | None = None,
                     uploads: Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        args = [*AGENT, "agent", "backup", "--namespace", "bench", "--name", name,
                "--component", component]
        if dbname:
            args += ["--db-host", self.pg.host, "--db-port", str(self.pg.port),
                     "--db-user", self.pg.user, "--db-name", dbname]
        if uploads:
            args += ["--uploads-dir", str(uploads)]
        m = run([*args, *self.s3_args(), *self.termination()], env=self.env,
                cwd=str(self.work), servers=self.servers)
        result = self.measured(f"agent backup {name}", m)
        manifest = json.loads(self.s3.get_bytes(self.bucket, f"bench/bench/{name}/manifest.json"))
        result["compressedBytes"] = sum(int(a["sizeBytes"]) for a in manifest["artifacts"])
        return result, manifest

    def upload(self, path: Path, key: str) -> dict[str, Any]:
        m = run([sys.executable, "-m", "bench.s3cp", str(path), f"s3://{self.bucket}/{key}"],
                env=self.env, cwd=str(Path(__file__).resolve().parents[1]),
                servers=self.servers)
        return self.measured(f"upload {path.name}", m)

    def guide(self, what: str, script: str, artifact: Path, key: str) -> dict[str, Any]:
        """A guide pipeline writing `artifact`, then its upload; timed separately, summed."""
        local = self.measured(what, shell(script, env=self.env, cwd=str(self.work),
                                          servers=self.servers))
        upload = self.upload(artifact, key)
        return {"command": script, "local": local, "upload": upload,
                "seconds": round(local["seconds"] + upload["seconds"], 2),
                "cpu_seconds": round(local["cpu_seconds"] + upload["cpu_seconds"], 2),
                "compressedBytes": artifact.stat().st_size}

    def drop(self, dbname: str) -> None:
        with self.pg.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(dbname)))

    # ------------------------------------------------------------------ the figures

    def database(self, dbname: str) -> dict[str, Any]:
        """Backups of one database (agent, guide plain+gzip, guide custom format), then
        restores of each into a fresh database, checked against the source's row counts."""
        facts = fixtures.database_facts(self.pg, dbname)
        expected = facts["rows"]
        out: dict[str, Any] = {"database": facts}
        self.log(f"database {dbname}: {facts['sizeBytes'] / 2**30:.2f} GiB")

        agent, _ = self.agent_backup("db", "database", dbname=dbname)
        out["agent"] = {"command": "timesheet-backup agent backup --component database "
                                   "(custom format, zstd level 3, streamed to S3)", **agent}
        sql_gz = self.work / "backup.sql.gz"
        out["guide_plain_gzip"] = self.guide(
            "pg_dump | gzip",
            f"pg_dump {self.pg_flags()} -d {dbname} | gzip > {shlex.quote(str(sql_gz))}",
            sql_gz, "guide/backup.sql.gz")
        # The uncompressed plain SQL size: the base of the compression ratios (not timed).
        plain = shell(f"gzip -dc {shlex.quote(str(sql_gz))} | wc -c", env=self.env)
        facts["plainDumpBytes"] = int(plain.stdout.strip())
        dump = self.work / "backup.dump"
        out["guide_custom"] = self.guide(
            "pg_dump -Fc",
            f"pg_dump {self.pg_flags()} -Fc {dbname} > {shlex.quote(str(dump))}",
            dump, "guide/backup.dump")

        restores: dict[str, Any] = {}
        target = f"{dbname}_r_agent"
        self.drop(target)
        m = run([*AGENT, "agent", "restore", "--manifest-key", "bench/bench/db/manifest.json",
                 "--component", "database", "--db-host", self.pg.host,
                 "--db-port", str(self.pg.port), "--db-user", self.pg.user,
                 "--target-db-name", target, "--create-database", *self.s3_args(),
                 *self.termination()], env=self.env, cwd=str(self.work), servers=self.servers)
        restores["agent"] = {"command": "timesheet-backup agent restore --component database "
                                        "--create-database (verify before: hash, then stream "
                                        "into pg_restore --single-transaction)",
                             **self.measured("agent restore", m)}
        restores["agent"]["rowsMatch"] = fixtures.table_counts(self.pg, target) == expected
        self.drop(target)

        target = f"{dbname}_r_plain"
        self.drop(target)
        script = (f"psql {self.pg_flags()} -d postgres -q -c 'CREATE DATABASE {target};' && "
                  f"gunzip -c {shlex.quote(str(sql_gz))} | psql {self.pg_flags()} -q "
                  f"-d {target} > /dev/null")
        restores["guide_psql"] = {"command": script,
                                  **self.measured("gunzip | psql", shell(
                                      script, env=self.env, cwd=str(self.work),
                                      servers=self.servers))}
        restores["guide_psql"]["rowsMatch"] = fixtures.table_counts(self.pg, target) == expected
        self.drop(target)

        target = f"{dbname}_r_custom"
        self.drop(target)
        script = (f"psql {self.pg_flags()} -d postgres -q -c 'CREATE DATABASE {target};' && "
                  f"pg_restore {self.pg_flags()} -d {target} {shlex.quote(str(dump))}")
        restores["guide_pg_restore"] = {"command": script,
                                        **self.measured("pg_restore", shell(
                                            script, env=self.env, cwd=str(self.work),
                                            servers=self.servers))}
        restores["guide_pg_restore"]["rowsMatch"] = \
            fixtures.table_counts(self.pg, target) == expected
        self.drop(target)
        out["restore"] = restores
        sql_gz.unlink()
        dump.unlink()
        return out

    def tree(self, root: Path, what: str) -> tuple[dict[str, Any], int]:
        """The tree's facts for the results (and its file count), logged."""
        size, count = fixtures.tree_bytes(root)
        self.log(f"{what} {root.name}: {count} files, {size / 2**20:,.0f} MiB")
        return {"path": str(root), "bytes": size, "files": count}, count

    def agent_uploads(self, name: str, root: Path) -> dict[str, Any]:
        agent, _ = self.agent_backup(name, "uploads", uploads=root)
        return {"command": "timesheet-backup agent backup --component uploads "
                           "(PAX tar, zstd level 3, streamed to S3)", **agent}

    def uploads(self, root: Path) -> dict[str, Any]:
        out: dict[str, Any] = {"tree": self.tree(root, "uploads tree")[0]}
        out["agent"] = self.agent_uploads("uploads", root)
        tgz = self.work / "uploads.tar.gz"
        out["guide_tar_gzip"] = self.guide(
            "tar -czf",
            f"tar -czf {shlex.quote(str(tgz))} -C {shlex.quote(str(root.parent))} "
            f"{shlex.quote(root.name)}",
            tgz, "guide/uploads.tar.gz")
        tgz.unlink()
        return out

    def verify_object(self, key: str, artifact: Path) -> None:
        """The uploaded object is in the store with the local file's size (not timed)."""
        head = self.s3.client().head_object(Bucket=self.bucket, Key=key)
        if int(head["ContentLength"]) != artifact.stat().st_size:
            raise RuntimeError(f"{key}: {head['ContentLength']} bytes in the store, "
                               f"{artifact.stat().st_size} written")

    def many_files(self, root: Path) -> dict[str, Any]:
        """One tree of many small files, three ways to a verified object in the same store:
        the agent, `tar | zstd -T0` + upload, the guide's `tar -czf` + upload."""
        tree, count = self.tree(root, "many-file tree")
        out: dict[str, Any] = {"tree": tree}
        # Not timed: one read of every file first, so that no row pays for a cold page
        # cache the others then find warm; the uncompressed tar size comes with it.
        warm = shell(f"tar -cf - -C {shlex.quote(str(root))} . | wc -c", env=self.env,
                     cwd=str(self.work))
        self.measured("warm-up tar | wc -c (not a row)", warm)
        out["tree"]["tarBytes"] = int(warm.stdout.strip())
        rows: dict[str, dict[str, Any]] = {}
        rows["agent"] = self.agent_uploads("many", root)
        zst = self.work / "many.tar.zst"
        rows["tar_zstd"] = self.guide(
            "tar | zstd -T0",
            f"tar -cf - -C {shlex.quote(str(root))} . | zstd -T0 -3 > "
            f"{shlex.quote(str(zst))}",
            zst, "guide/many.tar.zst")
        self.verify_object("guide/many.tar.zst", zst)
        zst.unlink()
        tgz = self.work / "many.tar.gz"
        rows["guide_tar_gzip"] = self.guide(
            "tar -czf",
            f"tar -czf {shlex.quote(str(tgz))} -C {shlex.quote(str(root))} .",
            tgz, "guide/many.tar.gz")
        self.verify_object("guide/many.tar.gz", tgz)
        tgz.unlink()
        for row in rows.values():
            parts = [row["local"], row["upload"]] if "local" in row else [row]
            row["peak_rss_bytes"] = max(p["peak_rss_bytes"] for p in parts)
            row["files_per_second"] = round(count / row["seconds"], 1)
        out.update(rows)
        a = rows["agent"]
        out["ratios"] = {
            f"agent_over_{key}": {
                k: round(a[k] / rows[key][k], 3) if rows[key][k] else None
                for k in ("seconds", "cpu_seconds", "peak_rss_bytes", "compressedBytes")}
            for key in ("tar_zstd", "guide_tar_gzip")}
        self.log(f"  files/s: agent {a['files_per_second']}, tar | zstd "
                 f"{rows['tar_zstd']['files_per_second']}, tar -czf "
                 f"{rows['guide_tar_gzip']['files_per_second']}")
        return out

    def memory(self, dbnames: list[str]) -> list[dict[str, Any]]:
        rows = []
        for i, name in enumerate(dbnames):
            facts = fixtures.database_facts(self.pg, name)
            result, _ = self.agent_backup(f"mem-{i}", "database", dbname=name)
            rows.append({"database": facts, **result})
        return rows


def run_all(db_sizes: list[float], uploads: tuple[int, int, int],
            log: Callable[[str], None], many_files: int = 0) -> dict[str, Any]:
    results: dict[str, Any] = {}
    pg = fixtures.CachedPostgres(fixtures.cache_dir() / "pg")
    s3 = S3Server()
    work = Path(tempfile.mkdtemp(prefix="tsb-bench-", dir=fixtures.cache_dir()))
    try:
        pg.start()
        s3.start()
        generated = {}
        names = []
        for gib in db_sizes:
            name, seconds = fixtures.ensure_database(pg, gib, log)
            generated[name] = seconds
            names.append(name)
        tree, tree_seconds = fixtures.ensure_uploads(*uploads, log)
        results["generation_seconds"] = {**generated, tree.name: tree_seconds}
        many: Path | None = None
        if many_files:
            many, many_seconds = fixtures.ensure_many_files(many_files, log)
            results["generation_seconds"][many.name] = many_seconds
        bench = AgentBench(pg, s3, work, log)
        results["database"] = bench.database(names[-1])
        results["uploads"] = bench.uploads(tree)
        if many is not None:
            results["many_files"] = bench.many_files(many)
        # The largest database's backup above is the last point of the memory series.
        results["memory"] = bench.memory(names[:-1])
        results["memory"].append({"database": results["database"]["database"],
                                  **{k: v for k, v in results["database"]["agent"].items()
                                     if k != "command"}})
        results["versions"] = {
            "postgres_server": pg.version,
            "pg_dump": shell("pg_dump --version", env=bench.env).stdout.strip(),
            "gzip": shell("gzip --version | head -1", env=bench.env).stdout.strip(),
            "tar": shell("tar --version | head -1", env=bench.env).stdout.strip(),
            "zstd": shell("zstd --version", env=bench.env).stdout.strip(" *\n"),
        }
    finally:
        s3.cleanup()
        pg.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    return results
