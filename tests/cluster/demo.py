"""`make demo`: a real backup and restore of sample timesheet data on the local cluster.

Loads sample data into `timesheet_db` and files into the uploads volume, applies
examples/backup.yaml, simulates data loss, applies examples/restore.yaml, and checks that
database and files are back exactly, printing `kubectl get` output along the way."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.cluster import operator_up
from tests.support.cluster import Cluster, start_cluster
from tests.support.dbsnapshot import diff, load_sample, load_schema, row_counts, snapshot
from tests.support.operator import claim_directory, fill_volume, run_tool
from tests.support.trees import diff_trees, snapshot_tree

NS = operator_up.APP_NAMESPACE
EXAMPLES = operator_up.EXAMPLES
say = operator_up.say


def kubectl(cluster: Cluster, *args: str, check: bool = True) -> str:
    return run_tool(cluster, "kubectl", *args, check=check).stdout


def show(cluster: Cluster, *args: str) -> None:
    print(f"$ kubectl {' '.join(args)}")
    print(kubectl(cluster, *args, check=False).rstrip(), flush=True)


def follow(cluster: Cluster, kind: str, name: str, timeout: float = 300) -> dict[str, Any]:
    """Print `kubectl get` whenever the phase or step changes, until a terminal phase."""
    last = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = json.loads(kubectl(cluster, "get", kind, name, "-n", NS, "-o", "json"))
        st = obj.get("status") or {}
        now = (st.get("phase"), st.get("currentStep"))
        if now != last:
            show(cluster, "get", kind, name, "-n", NS)
            last = now
        if st.get("phase") in ("Succeeded", "Failed"):
            return dict(obj)
        time.sleep(1)
    raise SystemExit(f"{kind}/{name} did not finish within {timeout:.0f}s")


def reset(cluster: Cluster) -> None:
    """A fresh run: remove the demo's previous Backup and Restore (and their objects)."""
    for kind, name in (("restore", "restore-before-upgrade"), ("backup", "before-upgrade")):
        kubectl(cluster, "delete", kind, name, "-n", NS, "--ignore-not-found", "--wait=true",
                "--timeout=120s")


def load_data(cluster: Cluster, uploads: Path) -> None:
    with operator_up.pg_connect(cluster) as conn:
        conn.execute("DROP DATABASE IF EXISTS timesheet_db WITH (FORCE)")
        conn.execute("CREATE DATABASE timesheet_db OWNER timesheet")
    with operator_up.pg_connect(cluster, "timesheet_db") as conn:
        load_schema(conn)
        load_sample(conn, scale=2)
    subprocess.run(["find", str(uploads), "-mindepth", "1", "-delete"], check=True)
    fill_volume(uploads, "receipts", seed=1)


def main() -> int:
    operator_up.main()
    cluster = start_cluster()
    uploads = claim_directory(cluster, NS, "timesheet-uploads")
    reset(cluster)

    say("loading sample timesheet data into timesheet_db and files into the uploads volume")
    load_data(cluster, uploads)
    with operator_up.pg_connect(cluster, "timesheet_db") as conn:
        db_before = snapshot(conn)
    tree_before = snapshot_tree(uploads, owners=False)
    counts = row_counts(db_before)
    some = ", ".join(f"{table} {rows}" for table, rows in list(counts.items())[:4])
    print(f"    {sum(counts.values())} rows in {len(counts)} tables ({some}, ...); "
          f"{len(tree_before)} entries in the uploads volume")
    show(cluster, "get", "deployment,pvc,svc", "-n", NS)

    say("kubectl apply -f examples/backup.yaml")
    kubectl(cluster, "apply", "-f", str(EXAMPLES / "backup.yaml"))
    backup = follow(cluster, "backup", "before-upgrade")
    if backup["status"]["phase"] != "Succeeded":
        print(backup["status"].get("message"))
        return 1
    for artifact in backup["status"]["artifacts"]:
        print(f"    {artifact['component']:9} {artifact['key']}  {artifact['sizeBytes']} bytes"
              f"  sha256 {artifact['sha256'][:16]}...")
    show(cluster, "get", "jobs", "-n", NS)

    say("simulating data loss: all timesheet entries deleted, uploads volume emptied")
    with operator_up.pg_connect(cluster, "timesheet_db") as conn:
        conn.execute("TRUNCATE public.entries, public.attachments CASCADE")
    subprocess.run(["find", str(uploads), "-mindepth", "1", "-delete"], check=True)

    say("kubectl apply -f examples/restore.yaml")
    kubectl(cluster, "apply", "-f", str(EXAMPLES / "restore.yaml"))
    restore = follow(cluster, "restore", "restore-before-upgrade")
    for step in restore["status"].get("steps", []):
        print(f"    {step['name']:10} {step['phase']:10} {step.get('message', '')}")
    for kind, name in (("Backup", "before-upgrade"), ("Restore", "restore-before-upgrade")):
        show(cluster, "get", "events", "-n", NS, "--sort-by=.lastTimestamp", "--field-selector",
             f"involvedObject.kind={kind},involvedObject.name={name}")
    if restore["status"]["phase"] != "Succeeded":
        print(restore["status"].get("message"))
        return 1

    with operator_up.pg_connect(cluster, "timesheet_db") as conn:
        db_diff = diff(db_before, snapshot(conn))
    tree_diff = diff_trees(tree_before, snapshot_tree(uploads, owners=False))
    if db_diff or tree_diff:
        print("restored data differs:", *db_diff[:20], *tree_diff[:20], sep="\n  ")
        return 1
    say("restored: database identical (contents, catalog, sequences) and uploads identical "
        "(types, modes, mtimes, links, contents)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
