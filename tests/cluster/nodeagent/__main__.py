"""Command line: ``python -m tests.cluster.nodeagent --kubeconfig K --state-dir D``.

Extra images: ``--image NAME=JSON`` (a JSON list is the ENTRYPOINT; an object may
carry entrypoint/cmd/env/user/workingDir), or the same as a JSON object mapping
names to specs in $TSB_NODEAGENT_IMAGES. The project image name comes from
--project-image, else E2E_IMAGE (environment, then --env-file), else
timesheet-backup-operator:dev.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import sys
from pathlib import Path
from types import FrameType

from .agent import Agent, Config
from .images import PROJECT_IMAGE_DEFAULT, ImageRegistry
from .kube import Kube

REPO_ROOT = Path(__file__).resolve().parents[3]


def read_env_file(path: str | None) -> dict[str, str]:
    """``export K=V`` lines as cluster-up writes them (shell quoting allowed)."""
    values: dict[str, str] = {}
    if not path or not os.path.exists(path):
        return values
    with open(path) as fh:
        for line in fh:
            words = shlex.split(line, comments=True)
            if words[:1] == ["export"]:
                words = words[1:]
            for word in words:
                key, sep, value = word.partition("=")
                if sep and key.isidentifier():
                    values[key] = value
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.nodeagent",
                                     description=__doc__)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--env-file", help="shell exports written by cluster-up")
    parser.add_argument("--node-name", default="tsb-node")
    parser.add_argument("--project-image")
    parser.add_argument("--image", action="append", default=[], metavar="NAME=JSON")
    parser.add_argument("--host-alias", action="append", default=[], metavar="IP",
                        help="endpoint IP meaning 'this host' (default 192.0.2.1)")
    parser.add_argument("--backoff-initial", type=float, default=1.0)
    parser.add_argument("--backoff-max", type=float, default=30.0)
    parser.add_argument("--max-pods", type=int, default=110)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stdout,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    file_env = read_env_file(args.env_file)
    project_image = (args.project_image or os.environ.get("E2E_IMAGE")
                     or file_env.get("E2E_IMAGE") or PROJECT_IMAGE_DEFAULT)
    images = ImageRegistry.default(REPO_ROOT, project_image)
    extra = os.environ.get("TSB_NODEAGENT_IMAGES") or file_env.get("TSB_NODEAGENT_IMAGES")
    if extra:
        for name, spec in json.loads(extra).items():
            images.add_spec(name, json.dumps(spec))
    for item in args.image:
        name, sep, spec = item.partition("=")
        if not sep:
            parser.error(f"--image wants NAME=JSON, got {item!r}")
        images.add_spec(name, spec)
    aliases = tuple(args.host_alias or [os.environ.get("TSB_HOST_ALIAS")
                                        or file_env.get("TSB_HOST_ALIAS") or "192.0.2.1"])
    config = Config(node_name=args.node_name, max_pods=args.max_pods,
                    backoff_initial=args.backoff_initial, backoff_max=args.backoff_max,
                    host_aliases=aliases)
    agent = Agent(Kube(args.kubeconfig), args.state_dir.resolve(), images, config, REPO_ROOT)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("nodeagent").info("got signal %d", signum)
        agent.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        agent.run()
    except BaseException:
        agent.shutdown()
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
