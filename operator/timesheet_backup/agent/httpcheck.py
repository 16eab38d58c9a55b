"""`timesheet-backup agent http-check`: the Restore's health check, run from inside the
cluster (the app's Service name resolves there, not in the operator's pod necessarily).

Retries until the URL answers with the expected status or the timeout passes: right after a
restore the app's pods are still starting."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from timesheet_backup.errors import AgentError


class HealthCheckFailed(AgentError):
    reason = "HealthCheckFailed"


def probe(url: str) -> tuple[int | None, str]:
    """(status, detail) of one GET; status None when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (http(s) only, CRD pattern)
            return int(response.status), "ok"
    except urllib.error.HTTPError as exc:
        return int(exc.code), str(exc.reason)
    except (urllib.error.URLError, OSError) as exc:
        return None, str(getattr(exc, "reason", exc))


def wait_healthy(
    url: str,
    expected: int,
    timeout: float,
    get: Callable[[str], tuple[int | None, str]] = probe,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    if not url.startswith(("http://", "https://")):
        raise HealthCheckFailed(f"{url!r} is not an http(s) URL")
    deadline = clock() + timeout
    attempts = 0
    while True:
        attempts += 1
        status, detail = get(url)
        if status == expected:
            return {"url": url, "status": status, "attempts": attempts}
        if clock() >= deadline:
            got = f"HTTP {status} ({detail})" if status is not None else detail
            raise HealthCheckFailed(
                f"{url} did not answer HTTP {expected} within {timeout:.0f}s: last answer {got}"
            )
        sleep(min(2.0, max(0.0, deadline - clock())))
