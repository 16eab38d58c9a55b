"""`python -m bench [--scale full|small] [--part agent] [--part operator]`

Writes bench/results/<scale>.json and bench/results/<scale>.md (the tables that
docs/benchmarks.md includes). BENCH_SCALE=small is for development: minutes, not half an hour.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import report

RESULTS = Path(__file__).resolve().parent / "results"
DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"

SCALES: dict[str, dict[str, Any]] = {
    # Database sizes in GiB (the last is the main one; all three give the memory series),
    # uploads tree (small files, large files, MiB each), files of the many-small-files tree,
    # operator-level counts.
    "full": {"db_gib": [0.25, 0.75, 2.5], "uploads": (20_000, 10, 50), "many_files": 200_000,
             "latency_backups": 50, "schedules": 200, "retention_backups": 5000},
    "small": {"db_gib": [0.02, 0.05, 0.1], "uploads": (500, 2, 5), "many_files": 5_000,
              "latency_backups": 10, "schedules": 20, "retention_backups": 300},
}


def log(message: str) -> None:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%H:%M:%S")
    print(f"[bench {stamp}] {message}", flush=True)


def machine() -> dict[str, Any]:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    os_name = ""
    release = Path("/etc/os-release")
    if release.exists():
        for line in release.read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    load = os.getloadavg()
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gib": round(mem_kib / 2**20, 1),
            "os": os_name, "kernel": platform.release(), "python": platform.python_version(),
            "loadavg_at_start": [round(x, 2) for x in load]}


def git_commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=False)
    return proc.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--scale", choices=sorted(SCALES),
                        default=os.environ.get("BENCH_SCALE", "full"))
    parser.add_argument("--part", action="append", choices=["agent", "operator"])
    args = parser.parse_args(argv)
    parts = args.part or ["agent", "operator"]
    scale = SCALES[args.scale]
    results: dict[str, Any] = {"scale": args.scale, "parameters": scale, "machine": machine(),
                               "commit": git_commit(),
                               "started": datetime.datetime.now(datetime.UTC).isoformat(
                                   timespec="seconds")}
    start = time.monotonic()
    if "agent" in parts:
        from bench import agentbench

        log("agent vs the guide")
        t = time.monotonic()
        results["agent"] = agentbench.run_all(scale["db_gib"], scale["uploads"], log,
                                              many_files=scale.get("many_files", 0))
        results["agent"]["seconds"] = round(time.monotonic() - t, 1)
    if "operator" in parts:
        from bench import operatorbench

        log("operator on the local cluster")
        t = time.monotonic()
        results["operator"] = operatorbench.run_all(scale, log)
        results["operator"]["seconds"] = round(time.monotonic() - t, 1)
    results["total_seconds"] = round(time.monotonic() - start, 1)
    RESULTS.mkdir(exist_ok=True)
    name = args.scale if parts == ["agent", "operator"] else f"{args.scale}-{'-'.join(parts)}"
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    tables = report.markdown(results)
    (RESULTS / f"{name}.md").write_text(tables)
    if name == "full":
        report.update_doc(DOC, tables)
    log(f"done in {results['total_seconds']:.0f} s: {RESULTS / name}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
