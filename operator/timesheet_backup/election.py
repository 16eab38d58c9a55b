"""Leader election for `timesheet-backup operator` (decisions in leader.py, calls in kube.py)
and the probe endpoint every replica serves.

A replica first waits as a candidate until it holds the Lease, then starts kopf; a thread
renews the Lease every `retry_period`. A leader that cannot renew within `renew_deadline`, or
finds someone else in the Lease, exits at once (the pod restarts and waits as a candidate
again), as controller-runtime's managers do: it must stop acting before another replica may
take over. A leader that stops cleanly releases the Lease so its successor need not wait.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import urlsplit

from timesheet_backup import kube, leader

log = logging.getLogger(__name__)


class LeaseClient(Protocol):
    """The Lease calls the election makes (kube.py's; a fake in unit tests)."""

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def create_lease(self, namespace: str, name: str, spec: Mapping[str, Any]) -> bool: ...

    def replace_lease(self, namespace: str, name: str, resource_version: str,
                      spec: Mapping[str, Any]) -> bool: ...


class Elector:
    """One replica's view of the Lease `namespace/name`."""

    def __init__(self, namespace: str, name: str, identity: str, timing: leader.Timing,
                 clock: Callable[[], float] = time.monotonic,
                 leases: LeaseClient = kube) -> None:
        timing.check()
        self.namespace, self.name, self.identity, self.timing = namespace, name, identity, timing
        self.clock = clock
        self.leases = leases
        self.observation: leader.Observation | None = None
        self.holder: str | None = None
        self.last_renewal: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def try_acquire(self) -> bool:
        """One attempt to take or renew the Lease; True when this replica holds it now."""
        lease = self.leases.get_lease(self.namespace, self.name)
        wall = datetime.now(UTC)
        if lease is None:
            spec = leader.claimed_spec(None, self.identity, wall, self.timing)
            won = self.leases.create_lease(self.namespace, self.name, spec)
            self.holder = self.identity if won else None
            return won
        record = leader.Record.of(lease)
        if record is None:  # pragma: no cover  (lease is not None here)
            return False
        self.holder = record.holder
        now = self.clock()
        self.observation = leader.observe(self.observation, record, now)
        if not leader.may_take(self.observation, self.identity, now, self.timing.lease_duration):
            return False
        spec = leader.claimed_spec(record, self.identity, wall, self.timing)
        won = self.leases.replace_lease(self.namespace, self.name,
                                 str(lease["metadata"]["resourceVersion"]), spec)
        if won:
            if record.holder != self.identity:
                log.info("took the Lease %s/%s from %s", self.namespace, self.name,
                         record.holder or "nobody")
            self.holder = self.identity
        return won

    def _attempt(self) -> bool:
        try:
            return self.try_acquire()
        except Exception as exc:  # the API server may be briefly unreachable: retry
            log.warning("leader election: cannot read or write the Lease %s/%s: %s",
                        self.namespace, self.name, exc)
            return False

    def acquire(self) -> None:
        """Block until this replica holds the Lease."""
        log.info("waiting to lead: Lease %s/%s as %s", self.namespace, self.name,
                 self.identity)
        reported = None
        while not self._attempt():
            if self.holder != reported:
                log.info("the Lease is held by %s; waiting as a candidate", self.holder)
                reported = self.holder
            time.sleep(self.timing.retry_period)
        self.last_renewal = self.clock()
        log.info("became the leader (Lease %s/%s)", self.namespace, self.name)

    def keep_renewing(self, on_lost: Callable[[str], None]) -> None:
        """Renew in a thread; call `on_lost(reason)` when leadership cannot be kept."""
        def loop() -> None:
            while not self._stop.wait(self.timing.retry_period):
                if self._attempt():
                    self.last_renewal = self.clock()
                    continue
                if self.holder not in (None, self.identity):
                    on_lost(f"the Lease is now held by {self.holder}")
                    return
                since = self.clock() - (self.last_renewal or 0.0)
                if since > self.timing.renew_deadline:
                    on_lost(f"could not renew the Lease for {since:.0f}s")
                    return

        self._thread = threading.Thread(target=loop, name="lease-renewal", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and give the Lease up if this replica still holds it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timing.retry_period + kube.LEASE_REQUEST_TIMEOUT)
        try:
            lease = self.leases.get_lease(self.namespace, self.name)
            record = leader.Record.of(lease)
            if lease is not None and record is not None and record.holder == self.identity:
                self.leases.replace_lease(self.namespace, self.name,
                                   str(lease["metadata"]["resourceVersion"]),
                                   leader.released_spec(record))
                log.info("released the Lease %s/%s", self.namespace, self.name)
        except Exception as exc:  # it expires by itself
            log.warning("could not release the Lease %s/%s: %s", self.namespace, self.name,
                        exc)


def exit_on_lost(reason: str) -> None:
    """Leadership is gone: stop acting now. No graceful kopf shutdown (handlers could still
    create Jobs meanwhile); the pod restarts and waits as a candidate."""
    log.error("lost leadership: %s; exiting", reason)
    logging.shutdown()
    os._exit(1)


class Health:
    """The probe endpoint (`/healthz`, any path), served by every replica from the start.

    200 while waiting as a candidate (the replica is healthy; leadership is in the Lease and in
    this answer's `role`), 200 for the leader once kopf runs its watches, 503 before that."""

    def __init__(self, url: str, identity: str) -> None:
        parts = urlsplit(url)
        self.role = "candidate"
        self.identity = identity
        self.ready = threading.Event()
        health = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                ok, body = health.status()
                data = json.dumps(body).encode()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # probes every few seconds would drown the operator's log

        host = parts.hostname or "0.0.0.0"  # noqa: S104  (a probe endpoint)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        self.server = Server((host, parts.port or 8081), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="health",
                                       daemon=True)
        self.thread.start()

    def status(self) -> tuple[bool, dict[str, str]]:
        body = {"role": self.role, "identity": self.identity}
        if self.role == "candidate":
            return True, body
        body["kopf"] = "running" if self.ready.is_set() else "starting"
        return self.ready.is_set(), body

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
