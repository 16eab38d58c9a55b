"""`timesheet-backup operator`: run the kopf operator."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, cast

from timesheet_backup import settings
from timesheet_backup.api.fields import SpecError


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("operator", help="run the operator",
                                 description="Run the kopf operator (in a pod or locally).")
    parser.add_argument("--namespace", action="append", default=[],
                        help="watch this namespace (repeatable); default: TSB_NAMESPACES, "
                             "else all namespaces")
    parser.add_argument("--liveness", default=None,
                        help="probe endpoint for liveness and readiness (empty to disable); "
                             f"default: {DEFAULT_PROBE_URL}")
    parser.add_argument("--leader-election", action=argparse.BooleanOptionalAction,
                        default=None,
                        help="act only while holding a Lease in POD_NAMESPACE, so that "
                             "several replicas can run; default: TSB_LEADER_ELECTION, else off")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.set_defaults(run=run)


# Every address of the pod: the kubelet probes the pod IP, and a pod's network is its own.
DEFAULT_PROBE_URL = "http://0.0.0.0:8081/healthz"
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def configure_logging(verbose: bool) -> None:
    """TSB_LOG_FORMAT=json gives one JSON object per line (kopf's formatter, which adds the
    object's namespace and name), for log pipelines; text is for people. TSB_LOG_LEVEL sets
    the level (--verbose forces DEBUG)."""
    import kopf

    fmt = os.environ.get("TSB_LOG_FORMAT", "text").lower()
    level = "DEBUG" if verbose else os.environ.get("TSB_LOG_LEVEL", "INFO").upper()
    if fmt not in LOG_FORMATS or level not in LOG_LEVELS:
        raise SystemExit(f"error: TSB_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)} and "
                         f"TSB_LOG_LEVEL one of {', '.join(LOG_LEVELS)}")
    kopf.configure(log_format=kopf.LogFormat.JSON if fmt == "json" else kopf.LogFormat.FULL,
                   log_refkey="k8s" if fmt == "json" else None)
    logging.getLogger().setLevel(level)


def run(args: argparse.Namespace) -> int:
    import kopf

    import timesheet_backup.handlers  # noqa: F401  (registers the handlers)
    from timesheet_backup.election import Elector, Health, exit_on_lost
    from timesheet_backup.handlers import metrics
    from timesheet_backup.leader import Timing

    try:
        config = settings.load()
    except (SpecError, OSError) as exc:
        print(f"error: invalid operator configuration: {exc}", file=sys.stderr)
        return 2
    try:
        election = settings.leader_election(enabled=args.leader_election)
    except SpecError as exc:
        print(f"error: invalid leader election settings: {exc}", file=sys.stderr)
        return 2
    try:
        webhook_settings = settings.webhook()
    except SpecError as exc:
        print(f"error: invalid webhook settings: {exc}", file=sys.stderr)
        return 2
    configure_logging(args.verbose)
    metrics.serve()
    if webhook_settings is not None:
        # Every replica, before the Lease: the API server calls whichever the Service picks.
        from timesheet_backup import webhook

        webhook.serve(webhook_settings, config.defaults)
    namespaces = args.namespace or config.namespaces
    # Our own probe endpoint instead of kopf's: a candidate waiting for the Lease must answer
    # probes before kopf starts (see election.Health for what it reports).
    probe = DEFAULT_PROBE_URL if args.liveness is None else args.liveness
    health = Health(probe, election.identity) if probe else None
    elector = None
    if election.enabled:
        elector = Elector(election.namespace, election.lease_name, election.identity,
                          Timing(election.lease_duration, election.renew_deadline,
                                 election.retry_period))
        elector.acquire()
        elector.keep_renewing(on_lost=exit_on_lost)
    if health is not None:
        health.role = "leader" if elector else "standalone"
    try:
        kopf.run(
            # kopf derives its identity from the login name by default, which fails for a
            # uid without a passwd entry (the image's non-root 65532): name it after the pod.
            identity=cast(Any, election.identity),  # kopf's Identity is a NewType of str
            # The Lease, not kopf's peering, keeps other replicas from acting.
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            ready_flag=health.ready if health else None,
        )
    finally:
        if elector is not None:
            elector.release()
    return 0
