"""`timesheet-backup crds`: print the CustomResourceDefinitions, or apply them server-side.

Helm installs the chart's `crds/` once and never upgrades them; the chart's pre-upgrade hook
runs `timesheet-backup crds apply` in the operator's image, so the CRDs always match the
operator that is about to start (docs/upgrading.md). The definitions come from the models
(`api/crds.py`), the same source as the committed files, so the image cannot apply stale ones.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import yaml

from timesheet_backup import constants as c
from timesheet_backup.api import crds

FIELD_MANAGER: Final = c.MANAGED_BY


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "crds", help="print or apply the CustomResourceDefinitions",
        description="The three CustomResourceDefinitions of this version of the operator.")
    actions = parser.add_subparsers(dest="crds_command", required=True, metavar="ACTION")
    show = actions.add_parser("print", help="write them as YAML to stdout "
                                            "(for `kubectl apply --server-side -f -`)")
    show.set_defaults(run=run_print)
    apply = actions.add_parser(
        "apply", help="server-side apply them (in-cluster config, else the kubeconfig) and "
                      "wait until the API server serves them")
    apply.add_argument("--field-manager", default=FIELD_MANAGER,
                       help="server-side apply field manager (default %(default)s)")
    apply.add_argument("--timeout", type=float, default=60,
                       help="seconds to wait for the Established condition (default "
                            "%(default)s)")
    apply.set_defaults(run=run_apply)


def manifests() -> list[dict[str, Any]]:
    return [crds.crd(definition) for definition in crds.DEFINITIONS]


def established(crd: Mapping[str, Any] | None) -> bool:
    """The API server serves the CRD's (new) schema: condition Established is True."""
    conditions = ((crd or {}).get("status") or {}).get("conditions") or []
    return any(cond.get("type") == "Established" and cond.get("status") == "True"
               for cond in conditions)


def apply_all(
    bodies: Iterable[Mapping[str, Any]],
    apply: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    get: Callable[[str], Mapping[str, Any] | None],
    timeout: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> list[str]:
    """Apply each body, then wait until all are Established; the applied names, in order.

    Raises TimeoutError naming the CRDs that are not Established in time."""
    names = []
    for body in bodies:
        apply(body)
        names.append(str(body["metadata"]["name"]))
    deadline = clock() + timeout
    waiting = list(names)
    while True:
        waiting = [name for name in waiting if not established(get(name))]
        if not waiting:
            return names
        if clock() >= deadline:
            raise TimeoutError(f"not Established after {timeout:.0f}s: {', '.join(waiting)}")
        sleep(1.0)


def run_print(args: argparse.Namespace) -> int:
    sys.stdout.write(yaml.safe_dump_all(manifests(), sort_keys=False, width=100))
    return 0


def run_apply(args: argparse.Namespace) -> int:
    from kubernetes.client import ApiException

    from timesheet_backup import kube

    try:
        names = apply_all(manifests(),
                          apply=lambda body: kube.apply_crd(body, args.field_manager),
                          get=kube.get_crd, timeout=args.timeout)
    except ApiException as exc:
        # The API's own message (e.g. a forbidden verb, or a schema change it refuses) is
        # what the person reading the hook Job's log needs.
        print(f"error: applying the CRDs failed: {exc.status} {exc.reason}: {exc.body}",
              file=sys.stderr)
        return 1
    except TimeoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name in names:
        print(f"customresourcedefinition/{name} serverside-applied ({args.field_manager})")
    return 0
