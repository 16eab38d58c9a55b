"""The `timesheet-backup` command: `operator` runs the kopf operator, `agent` is what Job pods run,
`catalog` reads a bucket without a cluster, `crds` prints or applies the CRDs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="timesheet-backup", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from timesheet_backup import crds_cli, operator_cli
    from timesheet_backup.agent import cli as agent_cli

    operator_cli.add_parser(commands)
    agent_cli.add_parsers(commands)
    crds_cli.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
