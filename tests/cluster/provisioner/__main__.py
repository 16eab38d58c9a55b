"""``python -m tests.cluster.provisioner --kubeconfig K --root DIR --node-name N``.

The e2e node's dynamic provisioner, run on the node by cluster-up.sh the way
local-path-provisioner runs on kind: it creates a directory per claim under ``--root`` and a
hostPath PersistentVolume pinned to the node; the real kubelet mounts it. It stands in for a
storage system, not for anything the operator is tested against.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from .kube import Informer, Kube
from .provisioner import Provisioner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.provisioner",
                                     description=__doc__)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--node-name", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    kube = Kube(args.kubeconfig)
    args.root.mkdir(parents=True, exist_ok=True)
    provisioner = Provisioner(kube, args.root.resolve(), args.node_name, stop)
    provisioner.install_class()
    pvcs = Informer(kube, "/api/v1/persistentvolumeclaims", provisioner.on_pvc, "pvcs", stop)
    pvs = Informer(kube, "/api/v1/persistentvolumes", provisioner.on_pv, "pvs", stop)
    pvcs.start()
    pvs.start()
    provisioner.start(pvcs, pvs)
    stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
