"""A small JSON-over-HTTP Kubernetes API client plus list/watch informers.

Why not the generated ``kubernetes`` client for everything: the provisioner handles
objects as plain dicts (whole PersistentVolume manifests, merge patches of claims and
watches that run for hours), and the generated models add a round-trip through typed
objects for no gain. The kubeconfig is still parsed by
``kubernetes.config`` so every kubeconfig form that library accepts works here.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

log = logging.getLogger("provisioner.kube")

Obj = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


class ApiError(Exception):
    """A non-2xx answer from the API server, with its Status object when it sent one."""

    def __init__(self, status: int, body: Any, method: str, path: str) -> None:
        self.status = status
        self.body = body
        message = body.get("message") if isinstance(body, dict) else str(body)[:300]
        super().__init__(f"{method} {path}: HTTP {status}: {message}")

    @property
    def reason(self) -> str:
        return self.body.get("reason", "") if isinstance(self.body, dict) else ""


class Kube:
    """Thread-safe API access (urllib3's pool manager is thread-safe)."""

    def __init__(self, kubeconfig: str) -> None:
        cfg = k8s_client.Configuration()
        k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        self.host = cfg.host.rstrip("/")
        parsed = urllib.parse.urlsplit(self.host)
        self.server_host = parsed.hostname or "127.0.0.1"
        self.server_port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self.ca_file = cfg.ssl_ca_cert
        self._headers = {"Accept": "application/json", "User-Agent": "tsb-provisioner/0.1"}
        for setting in cfg.auth_settings().values():
            if setting.get("in") == "header" and setting.get("value"):
                self._headers[setting["key"]] = setting["value"]
        if not cfg.verify_ssl:
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self._pool = urllib3.PoolManager(
            num_pools=2,
            maxsize=32,
            cert_reqs="CERT_REQUIRED" if cfg.verify_ssl else "CERT_NONE",
            ca_certs=cfg.ssl_ca_cert,
            cert_file=cfg.cert_file,
            key_file=cfg.key_file,
        )

    # ---- plain requests ---------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, Any] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> Any:
        url = self._url(path, query)
        headers = dict(self._headers)
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        resp = self._pool.request(
            method, url, body=data, headers=headers, timeout=timeout, retries=False
        )
        payload: Any
        try:
            payload = json.loads(resp.data) if resp.data else None
        except ValueError:
            payload = resp.data.decode(errors="replace")
        if resp.status >= 400:
            raise ApiError(resp.status, payload, method, path)
        return payload

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query or None)

    def get_or_none(self, path: str) -> Any:
        try:
            return self.get(path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, body)

    def patch(self, path: str, body: Any, content_type: str = MERGE_PATCH) -> Any:
        return self.request("PATCH", path, body, content_type=content_type)

    def delete(self, path: str, body: Any = None) -> Any:
        return self.request("DELETE", path, body)

    def _url(self, path: str, query: dict[str, Any] | None) -> str:
        url = self.host + path
        if query:
            url += "?" + urllib.parse.urlencode(
                {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in query.items()}
            )
        return url

    # ---- watch ------------------------------------------------------------------

    def watch(self, path: str, resource_version: str, timeout_seconds: int = 240) -> Iterator[Obj]:
        """Yield watch events (dicts with type/object) until the server closes the stream."""
        query = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout_seconds,
        }
        resp = self._pool.request(
            "GET",
            self._url(path, query),
            headers=self._headers,
            preload_content=False,
            timeout=urllib3.Timeout(connect=10, read=timeout_seconds + 30),
            retries=False,
        )
        try:
            if resp.status >= 400:
                body = resp.read()
                try:
                    payload = json.loads(body)
                except ValueError:
                    payload = body.decode(errors="replace")
                raise ApiError(resp.status, payload, "WATCH", path)
            buffer = b""
            for chunk in resp.stream(amt=None, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            resp.release_conn()


def obj_key(obj: Obj) -> str:
    meta = obj.get("metadata", {})
    ns = meta.get("namespace")
    return f"{ns}/{meta['name']}" if ns else meta["name"]


class Informer:
    """List then watch one resource forever, keeping a cache and calling a handler.

    The handler gets ``(event_type, obj)`` with event_type ADDED/MODIFIED/DELETED, in
    the informer's own thread; it must not block for long. After a relist (410 Gone,
    or a watch error) objects that vanished meanwhile are reported as DELETED, so
    consumers never miss a deletion.
    """

    def __init__(
        self,
        kube: Kube,
        path: str,
        handler: Callable[[str, Obj], None] | None = None,
        name: str | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.kube = kube
        self.path = path
        self.name = name or path
        self.handlers: list[Callable[[str, Obj], None]] = [handler] if handler else []
        self.stop = stop or threading.Event()
        self.synced = threading.Event()
        self._lock = threading.Lock()
        self._cache: dict[str, Obj] = {}
        self._thread = threading.Thread(target=self._run, name=f"informer:{self.name}", daemon=True)

    def start(self) -> Informer:
        self._thread.start()
        return self

    def items(self) -> list[Obj]:
        with self._lock:
            return list(self._cache.values())

    def get(self, key: str) -> Obj | None:
        with self._lock:
            return self._cache.get(key)

    def _emit(self, event: str, obj: Obj) -> None:
        for handler in self.handlers:
            try:
                handler(event, obj)
            except Exception:
                log.exception("%s: handler failed for %s %s", self.name, event, obj_key(obj))

    def _relist(self) -> str:
        listing = self.kube.get(self.path)
        fresh = {obj_key(o): o for o in listing.get("items", [])}
        with self._lock:
            old = self._cache
            self._cache = fresh
        for key, obj in old.items():
            if key not in fresh:
                self._emit("DELETED", obj)
        for key, obj in fresh.items():
            self._emit("MODIFIED" if key in old else "ADDED", obj)
        self.synced.set()
        return str(listing["metadata"]["resourceVersion"])

    def _run(self) -> None:
        rv: str | None = None
        while not self.stop.is_set():
            try:
                if rv is None:
                    rv = self._relist()
                for event in self.kube.watch(self.path, rv):
                    if self.stop.is_set():
                        return
                    etype, obj = event.get("type"), event.get("object", {})
                    if etype == "ERROR":
                        if obj.get("code") == 410:
                            log.info("%s: watch expired (410), relisting", self.name)
                            rv = None
                        else:
                            log.warning("%s: watch error %s", self.name, obj.get("message"))
                        break
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if etype == "BOOKMARK":
                        continue
                    key = obj_key(obj)
                    with self._lock:
                        if etype == "DELETED":
                            self._cache.pop(key, None)
                        else:
                            self._cache[key] = obj
                    self._emit(str(etype), obj)
            except ApiError as exc:
                if exc.status == 410:
                    rv = None
                    continue
                log.warning("%s: %s; retrying", self.name, exc)
                self.stop.wait(1.0)
            except Exception as exc:
                if self.stop.is_set():
                    return
                log.warning("%s: watch broke (%s: %s); reconnecting", self.name,
                            type(exc).__name__, exc)
                self.stop.wait(1.0)


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
