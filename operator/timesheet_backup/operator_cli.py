"""`timesheet-backup operator`: run the kopf operator."""

from __future__ import annotations

import argparse
import logging
import socket
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
    parser.add_argument("--liveness", default="http://0.0.0.0:8081/healthz",
                        help="liveness probe endpoint (empty to disable)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import kopf

    import timesheet_backup.handlers  # noqa: F401  (registers the handlers)

    try:
        config = settings.load()
    except (SpecError, OSError) as exc:
        print(f"error: invalid operator configuration: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    namespaces = args.namespace or config.namespaces
    kopf.run(
        # kopf derives its identity from the login name by default, which fails for a uid
        # without a passwd entry (the image's non-root 65532): name it after the pod.
        identity=cast(Any, socket.gethostname()),  # kopf's Identity is a NewType of str
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=args.liveness or None,
    )
    return 0
