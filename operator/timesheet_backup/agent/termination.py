"""The JSON result the operator reads from the container's termination message (pure, plus
a writer). Kubernetes keeps at most 4096 bytes of it, so it is kept compact and, if need be,
shortened: the error text first, then the per-artifact details."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any, Final

log = logging.getLogger(__name__)

DEFAULT_PATH: Final = "/dev/termination-log"
MAX_BYTES: Final = 4096


def _encode(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), sort_keys=False, default=str)


def success(result: Mapping[str, Any]) -> str:
    payload = {"ok": True, **result}
    text = _encode(payload)
    if len(text.encode()) <= MAX_BYTES:
        return text
    slim = {k: v for k, v in payload.items() if k != "artifacts"}
    slim["truncated"] = True
    return _encode(slim)[:MAX_BYTES]


def failure(error: str, reason: str) -> str:
    payload: dict[str, Any] = {"ok": False, "reason": reason, "error": error}
    text = _encode(payload)
    while len(text.encode()) > MAX_BYTES:
        payload["error"] = payload["error"][: max(0, len(payload["error"]) - 256)] + "..."
        text = _encode(payload)
    return text


def write(path: str, text: str) -> None:
    """Write the message where Kubernetes reads it. The default path is only written if the
    kubelet created it (outside a pod /dev exists but the file does not); another path is
    written if its directory exists."""
    if not path:
        return
    if path == DEFAULT_PATH:
        if not os.path.isfile(path):
            return
    elif not os.path.isdir(os.path.dirname(path) or "."):
        return
    try:
        with open(path, "w", encoding="utf-8") as file:
            file.write(text)
    except OSError as exc:
        log.warning("could not write the termination message to %s: %s", path, exc)
