"""`timesheet-backup operator`: run the kopf operator."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from timesheet_backup import settings


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("operator", help="run the operator",
                                 description="Run the kopf operator (in a pod or locally).")
    parser.add_argument("--namespace", action="append", default=[],
                        help="watch this namespace (repeatable); default: TSB_NAMESPACES, "
                             "else all namespaces")
    parser.add_argument("--liveness", default="http://0.0.0.0:8081/healthz",
                        help="liveness probe endpoint (empty to disable)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import kopf

    import timesheet_backup.handlers  # noqa: F401  (registers the handlers)

    config = settings.load()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    namespaces = args.namespace or config.namespaces
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=args.liveness or None,
    )
    return 0
