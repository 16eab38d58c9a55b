"""Feed the metrics store from watch events and serve /metrics (see timesheet_backup.metrics).

Watch events, not timers: timers stop once an object is finished, but the metrics need every
object, finished ones most of all, and need to forget deleted ones at once."""

from __future__ import annotations

import logging
import os
import socket
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import kopf
from prometheus_client import REGISTRY, make_wsgi_app

from timesheet_backup import constants as c
from timesheet_backup.actions.common import now
from timesheet_backup.metrics import STORE, StoreCollector

log = logging.getLogger(__name__)

# host:port to serve /metrics on; empty disables. The chart sets it from metrics.port.
ADDRESS_ENV = "TSB_METRICS_ADDRESS"
DEFAULT_ADDRESS = "0.0.0.0:8080"
_serving = False


def _key(body: kopf.Body) -> tuple[str, str]:
    return (body.metadata.namespace or "", body.metadata.name or "")


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every 30 s would drown the operator's log


def serve() -> None:
    """Serve /metrics from the start, before leader election: a standby replica answers too
    (process metrics, no tsb_ series), so its scrape target is up rather than down."""
    global _serving
    address = os.environ.get(ADDRESS_ENV, DEFAULT_ADDRESS)
    if not address or _serving:
        return
    host, _sep, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104  (a pod's own interfaces)
    REGISTRY.register(StoreCollector(STORE))
    server_class = type("Server", (_Server,), {
        "address_family": socket.AF_INET6 if ":" in host else socket.AF_INET})
    httpd: WSGIServer = make_server(host, int(port), make_wsgi_app(REGISTRY), server_class,
                                    handler_class=_QuietHandler)
    threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()
    _serving = True
    log.info("serving Prometheus metrics on %s/metrics", address)


def on_event(event: kopf.RawEvent, body: kopf.Body, resource: kopf.Resource,
             **_: Any) -> None:
    kind = KINDS[resource.plural]
    if event["type"] == "DELETED":
        STORE.forget(kind, _key(body))
    else:
        STORE.observe(kind, _key(body), body, now())


KINDS = {c.PLURAL_BACKUP: c.KIND_BACKUP, c.PLURAL_RESTORE: c.KIND_RESTORE,
         c.PLURAL_SCHEDULE: c.KIND_SCHEDULE}
for _plural in KINDS:
    kopf.on.event(c.GROUP, c.VERSION, _plural, id=f"metrics-{_plural}")(on_event)
