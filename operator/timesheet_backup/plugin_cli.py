"""`kubectl timesheet-backup`: the kubectl plugin (console script `kubectl-timesheet_backup`,
which kubectl finds on PATH and runs for `kubectl timesheet-backup ...`).

The thin IO layer: it parses flags, reads and creates objects as the user (their kubeconfig,
context and namespace, like kubectl) and prints what plugin.py makes of them. Exit codes:
0 ok, 1 failure (an API error, a Failed Backup or Restore with --wait), 2 usage. Errors are
one line on stderr, no traceback. docs/plugin.md shows every command."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import yaml

from timesheet_backup import constants as c
from timesheet_backup import plugin
from timesheet_backup.api.fields import SpecError
from timesheet_backup.plugin import UsageError

PROG = "kubectl timesheet-backup"
POLL_SECONDS = 2.0
KINDS = {"backup": c.PLURAL_BACKUP, "restore": c.PLURAL_RESTORE}


class Failure(Exception):
    """Exit 1 with this one line."""


def now() -> datetime:
    return datetime.now(UTC)


# --- the cluster, as the user ---------------------------------------------------------------


class Client:
    """The user's kubeconfig: `--kubeconfig` (else $KUBECONFIG, ~/.kube/config), `--context`
    and the namespace (`-n`, else the context's, else `default`)."""

    def __init__(self, kubeconfig: str | None, context: str | None,
                 namespace: str | None) -> None:
        import kubernetes

        try:
            self.api = kubernetes.config.new_client_from_config(config_file=kubeconfig,
                                                                context=context)
            contexts, active = kubernetes.config.list_kube_config_contexts(kubeconfig)
        except (kubernetes.config.ConfigException, OSError) as exc:
            raise Failure(f"kubeconfig: {exc}") from exc
        chosen = next((x for x in contexts if x["name"] == context), active) \
            if context else active
        self.namespace = namespace or ((chosen or {}).get("context") or {}).get(
            "namespace") or "default"
        # Any: the client's own annotations say `object` for the custom objects' dicts.
        self.custom: Any = kubernetes.client.CustomObjectsApi(self.api)
        self.core: Any = kubernetes.client.CoreV1Api(self.api)
        self.batch: Any = kubernetes.client.BatchV1Api(self.api)

    def plain(self, obj: Any) -> Any:
        return self.api.sanitize_for_serialization(obj)

    def list_objects(self, plural: str, all_namespaces: bool = False) -> list[dict[str, Any]]:
        if all_namespaces:
            found = self.custom.list_cluster_custom_object(c.GROUP, c.VERSION, plural)
        else:
            found = self.custom.list_namespaced_custom_object(c.GROUP, c.VERSION,
                                                              self.namespace, plural)
        return list(found.get("items", []))

    def get(self, plural: str, name: str) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(c.GROUP, c.VERSION,
                                                             self.namespace, plural, name))

    def create(self, plural: str, body: Mapping[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(c.GROUP, c.VERSION, self.namespace,
                                                    plural, dict(body))

    def jobs(self, label: str, value: str) -> list[dict[str, Any]]:
        found = self.batch.list_namespaced_job(self.namespace,
                                               label_selector=f"{label}={value}")
        return list(self.plain(found)["items"])

    def pods(self, job: str) -> list[dict[str, Any]]:
        found = self.core.list_namespaced_pod(self.namespace, label_selector=f"job-name={job}")
        return list(self.plain(found)["items"])

    def log(self, pod: str) -> str:
        return str(self.core.read_namespaced_pod_log(pod, self.namespace) or "")

    def follow_log(self, pod: str) -> None:
        # Not preloaded: the urllib3 response, read as the pod writes.
        stream: Any = self.core.read_namespaced_pod_log(pod, self.namespace, follow=True,
                                                   _preload_content=False)
        try:
            for chunk in stream.stream(1024):
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
        finally:
            stream.release_conn()


def api_failure(exc: Any, what: str) -> Failure:
    """One line from an ApiException: the server's own message when it sent one."""
    message = exc.reason
    with contextlib.suppress(TypeError, ValueError, AttributeError):  # no JSON body
        message = json.loads(exc.body).get("message") or message
    if exc.status == 404 and "could not find the requested resource" in str(message):
        message += f" (are the {c.GROUP} CRDs installed?)"
    return Failure(f"{what}: {message}")


# --- commands -------------------------------------------------------------------------------


def out(text: str) -> None:
    print(text, flush=True)


def print_table(args: argparse.Namespace, client: Client, plural: str, kind: str,
                rows: Callable[..., Any]) -> int:
    """Objects of one kind as a kubectl-style table (kubectl's words when there are none)."""
    objects = client.list_objects(plural, args.all_namespaces)
    if not objects:
        where = "any namespace" if args.all_namespaces else f"namespace {client.namespace}"
        print(f"No {kind}s found in {where}.", file=sys.stderr)
        return 0
    out(plugin.table(rows(objects, now(), args.all_namespaces)))
    return 0


def run_list(args: argparse.Namespace, client: Client) -> int:
    return print_table(args, client, c.PLURAL_BACKUP, c.KIND_BACKUP, plugin.backup_rows)


def run_status(args: argparse.Namespace, client: Client) -> int:
    return print_table(args, client, c.PLURAL_SCHEDULE, c.KIND_SCHEDULE, plugin.schedule_rows)


def read_manifest(path: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        docs = [d for d in yaml.safe_load_all(text) if d]
    except (OSError, yaml.YAMLError) as exc:
        raise Failure(f"-f {path}: {exc}") from exc
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise UsageError(f"-f {path}: expected one Backup")
    return docs[0]


def run_backup_now(args: argparse.Namespace, client: Client) -> int:
    if args.from_schedule:
        if args.filename or args.component:
            raise UsageError("--from-schedule takes the Backup from the schedule's template: "
                             "not with -f or --component")
        schedule = client.get(c.PLURAL_SCHEDULE, args.from_schedule)
        try:
            body = plugin.backup_from_schedule(schedule, args.name, now())
        except SpecError as exc:
            raise Failure(f"BackupSchedule {args.from_schedule}: {exc}") from exc
    else:
        manifest = read_manifest(args.filename) if args.filename else None
        body = plugin.backup_from_flags(client.namespace, args.name, args.component or (),
                                        manifest, now(), args.namespace)
        client.namespace = body["metadata"]["namespace"]  # -f may name it
    return create_and_follow(args, client, "backup", body)


def restore_request(args: argparse.Namespace) -> plugin.RestoreRequest:
    return plugin.RestoreRequest(
        source=args.source, schedule=args.schedule, before=args.before,
        verified_only=args.verified_only, tables=args.table or (), schemas=args.schema or (),
        into=args.into, data_only=args.data_only, schema_only=args.schema_only,
        components=args.component or (), quiesce=args.quiesce or (), name=args.name,
        bucket=args.bucket, backup_namespace=args.backup_namespace, db_host=args.db_host,
        db_port=args.db_port, db_user=args.db_user, db_secret=args.db_secret,
        owner=args.owner, globals=args.globals)


def run_restore(args: argparse.Namespace, client: Client) -> int:
    body = plugin.restore_body(restore_request(args), client.namespace, now())
    return create_and_follow(args, client, "restore", body)


def create_and_follow(args: argparse.Namespace, client: Client, kind: str,
                      body: Mapping[str, Any]) -> int:
    if args.dry_run:
        out(yaml.safe_dump(dict(body), sort_keys=False).rstrip())
        return 0
    name = body["metadata"]["name"]
    client.create(KINDS[kind], body)
    out(f"{kind}/{name} created")
    if not args.wait:
        return 0
    return follow(client, kind, name, args.timeout)


def follow(client: Client, kind: str, name: str, timeout: float,
           sleep: Callable[[float], None] = time.sleep) -> int:
    """Print each new phase/step until the object ends; 0 when it Succeeded."""
    deadline = time.monotonic() + timeout
    said = ""
    while True:
        obj = client.get(KINDS[kind], name)
        ended = plugin.outcome(kind, obj)
        if ended is not None:
            succeeded, line = ended
            if succeeded:
                out(line)
                return 0
            raise Failure(line)
        line = plugin.progress(kind, obj)
        if line != said:
            out(line)
            said = line
        if time.monotonic() >= deadline:
            raise Failure(f"{kind}/{name} did not end within {timeout:.0f}s ({line})")
        sleep(POLL_SECONDS)


def run_logs(args: argparse.Namespace, client: Client) -> int:
    obj = client.get(KINDS[args.kind], args.name)
    jobs = plugin.jobs_in_order(obj, client.jobs(plugin.job_label(args.kind), args.name))
    if args.follow:
        # The Job at work now: the one status names (a Restore's latest), else the newest.
        job = (obj.get("status") or {}).get("jobName") or (jobs[-1] if jobs else None)
        if job is None:
            raise Failure(f"{args.kind}/{args.name} has no Job yet")
        pod = wait_for_pod(client, job, args.timeout)
        client.follow_log(pod)
        return 0
    sources = [(job, pod) for job in jobs for pod in plugin.pods_in_order(client.pods(job))]
    if not sources:
        st = obj.get("status") or {}
        why = f" ({st.get('phase')}: {st['message']})" if st.get("message") else ""
        raise Failure(f"{args.kind}/{args.name}: no Job pods to read logs from (finished Jobs "
                      f"are removed after a day, jobTtlSecondsAfterFinished){why}")
    for job, pod in sources:
        if len(sources) > 1:
            out(f"==> job/{job} pod/{pod} <==")
        text = client.log(pod)
        sys.stdout.write(text if not text or text.endswith("\n") else text + "\n")
    sys.stdout.flush()
    return 0


def wait_for_pod(client: Client, job: str, timeout: float) -> str:
    """The Job's newest pod once its container started (a pending pod has no log yet)."""
    deadline = time.monotonic() + timeout
    while True:
        pods = client.pods(job)
        if pods:
            newest = plugin.pods_in_order(pods)[-1]
            pod = next(p for p in pods if p["metadata"]["name"] == newest)
            if (pod.get("status") or {}).get("phase") not in (None, "Pending"):
                return newest
        if time.monotonic() >= deadline:
            raise Failure(f"job/{job}: no started pod within {timeout:.0f}s")
        time.sleep(POLL_SECONDS)


# --- parser ---------------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message}\n")


def _connection(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster (as kubectl)")
    group.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, "
                       "~/.kube/config)")
    group.add_argument("--context", help="kubeconfig context (default: the current one)")
    group.add_argument("-n", "--namespace", help="namespace (default: the context's)")


def _create_flags(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--name", help=f"name of the {what} (default: generated)")
    parser.add_argument("--dry-run", action="store_true",
                        help=f"print the {what} as YAML, create nothing")
    parser.add_argument("--wait", action="store_true",
                        help="follow its phase until it ends; exit 1 if it failed")
    parser.add_argument("--timeout", type=float, default=3600,
                        help="seconds --wait (or logs -f) waits (default 3600)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Backups, schedules and restores of the "
                    "timesheet-backup operator, from kubectl.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=Parser)

    listing = commands.add_parser("list", help="Backups, newest first")
    listing.add_argument("-A", "--all-namespaces", action="store_true")
    _connection(listing)
    listing.set_defaults(run=run_list)

    status = commands.add_parser("status", help="BackupSchedules: last success, next run, "
                                 "last restore test")
    status.add_argument("-A", "--all-namespaces", action="store_true")
    _connection(status)
    status.set_defaults(run=run_status)

    backup = commands.add_parser("backup", help="take a Backup")
    backup_commands = backup.add_subparsers(dest="action", required=True, metavar="ACTION",
                                            parser_class=Parser)
    now_ = backup_commands.add_parser("now", help="create a Backup now")
    now_.add_argument("--from-schedule", metavar="SCHEDULE",
                      help="as a run of this BackupSchedule: its template, its label "
                      "(retention and `restore latest` count it)")
    now_.add_argument("-f", "--filename", help="a Backup manifest (its spec and labels); "
                      "- reads stdin")
    now_.add_argument("--component", action="append", choices=c.COMPONENTS,
                      help="only this component (repeatable; default: the spec's or both)")
    _create_flags(now_, "Backup")
    _connection(now_)
    now_.set_defaults(run=run_backup_now)

    restore = commands.add_parser(
        "restore", help="restore `latest` of a schedule, or a Backup by name",
        description="SOURCE is `latest` (with --schedule) or the name of a Backup.")
    restore.add_argument("source", metavar="SOURCE", help="latest, or a Backup's name")
    restore.add_argument("--schedule", help="latest: the BackupSchedule whose newest "
                         "Succeeded Backup is restored")
    restore.add_argument("--before", metavar="TIME", help="latest: only Backups completed "
                         "before this RFC 3339 time, e.g. 2026-03-14T09:00:00Z")
    restore.add_argument("--verified-only", action="store_true",
                         help="latest: only Backups that passed a restore test")
    restore.add_argument("--from-bucket", metavar="BUCKET", dest="bucket",
                         help="latest: choose from the manifests in this bucket alone (no "
                         "Backup objects: disaster recovery); the rest of the storage "
                         "settings are the operator's defaults")
    restore.add_argument("--backup-namespace", metavar="NAMESPACE",
                         help="--from-bucket: the namespace the backups were taken in "
                         "(default: the Restore's)")
    restore.add_argument("--into", metavar="DATABASE", help="restore into this database "
                         "(created if missing), e.g. a side database next to production")
    restore.add_argument("--table", action="append", help="only this table (repeatable)")
    restore.add_argument("--schema", action="append", help="only this schema (repeatable)")
    restore.add_argument("--data-only", action="store_true",
                         help="only rows, into the existing tables (no drop)")
    restore.add_argument("--schema-only", action="store_true", help="only definitions")
    restore.add_argument("--component", action="append", choices=c.COMPONENTS,
                         help="only this component (repeatable; default: every one of the "
                         "backup, or database with --into/--table/--schema)")
    restore.add_argument("--quiesce", action="append", metavar="DEPLOYMENT",
                         help="scale this Deployment to 0 during the restore (repeatable)")
    server = restore.add_argument_group(
        "another server (disaster recovery; default: the backup's database)")
    server.add_argument("--db-host", metavar="HOST", help="the server to restore into")
    server.add_argument("--db-port", metavar="PORT", type=int)
    server.add_argument("--db-user", metavar="ROLE", help="the role to connect as")
    server.add_argument("--db-secret", metavar="NAME[:KEY]",
                        help="Secret (and key, default `password`) with that role's password")
    server.add_argument("--owner", metavar="ROLE",
                        help="owner of the database --into creates (CREATE DATABASE ... OWNER)")
    server.add_argument("--globals", action="store_true",
                        help="first recreate the roles the backup dumped (a backup taken "
                        "with database.globals; needs a superuser or CREATEROLE)")
    _create_flags(restore, "Restore")
    _connection(restore)
    restore.set_defaults(run=run_restore)

    logs = commands.add_parser("logs", help="logs of a Backup's or Restore's Job")
    logs.add_argument("kind", choices=sorted(KINDS))
    logs.add_argument("name")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="stream the running Job's log")
    logs.add_argument("--timeout", type=float, default=300,
                      help="-f: seconds to wait for the pod to start (default 300)")
    _connection(logs)
    logs.set_defaults(run=run_logs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from kubernetes.client import ApiException
    from urllib3.exceptions import HTTPError

    try:
        client = Client(args.kubeconfig, args.context, args.namespace)
        result: int = args.run(args, client)
        return result
    except UsageError as exc:
        parser.error(str(exc))
    except Failure as exc:
        print(f"error: {exc}", file=sys.stderr)
    except ApiException as exc:
        print(f"error: {api_failure(exc, args.command)}", file=sys.stderr)
    except HTTPError as exc:
        print(f"error: cannot reach the API server: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an object we did not expect: still one line
        print(f"error: internal: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
