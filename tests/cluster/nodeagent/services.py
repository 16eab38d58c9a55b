"""Service names and traffic, without cluster DNS or kube-proxy.

Each Service gets a loopback address of its own (127.1.x.y). Pods see the names
through their per-pod /etc/hosts (``<svc>`` for their own namespace, and
``<svc>.<ns>[.svc[.cluster.local]]`` for all), and a TCP forwarder listens on
that address at every Service port, relaying to the Service's backends:

- with a selector: the pods run on the host, so ``127.0.0.1:targetPort`` (a named
  targetPort is looked up in the ports of the selected pods);
- without a selector: the addresses of its EndpointSlices (or Endpoints). Those
  may not hold loopback addresses (API validation), so the node's *host alias*
  (default 192.0.2.1, TEST-NET-1) stands for "this host" and is relayed to
  127.0.0.1 — that is how tests expose the host PostgreSQL and S3 server;
- ExternalName: the named host; ``default/kubernetes``: the API server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("nodeagent.services")

Obj = dict[str, Any]
CLUSTER_DOMAIN = "cluster.local"


class ServiceProxy:
    def __init__(
        self,
        host_aliases: set[str],
        apiserver: tuple[str, int],
        lookup: Callable[[str, str], list[Obj]],
    ) -> None:
        """``lookup(kind, namespace)`` returns cached objects: kind is one of
        "services", "endpointslices", "endpoints", "pods"."""
        self.host_aliases = host_aliases | {"127.0.0.1"}
        self.apiserver = apiserver
        self.lookup = lookup
        self.on_change: list[Callable[[], None]] = []
        self._addresses: dict[str, str] = {}  # ns/name -> 127.1.x.y
        self._next = itertools.count(0)
        self._servers: dict[tuple[str, int], asyncio.base_events.Server] = {}
        self._wanted: dict[str, Obj] = {}  # ns/name -> Service
        self._lock = threading.Lock()
        self._rr = itertools.count()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="svc-proxy",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        async def close_all() -> None:
            for server in self._servers.values():
                server.close()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close_all(), self.loop).result(timeout=5)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)

    # ---- names -----------------------------------------------------------------

    def _allocate(self, key: str, ports: list[int]) -> str:
        """A loopback address whose ports are free (another agent, or any program, may
        already listen on some 127.1.x.y)."""
        while key not in self._addresses:
            n = next(self._next)
            ip = f"127.1.{n // 254 % 256}.{n % 254 + 1}"
            if all(_port_free(ip, port) for port in ports):
                self._addresses[key] = ip
        return self._addresses[key]

    def hosts_entries(self, namespace: str) -> str:
        """/etc/hosts lines for a pod in ``namespace``."""
        lines = []
        with self._lock:
            services = sorted(self._wanted.items())
            for key, _svc in services:
                ns, name = key.split("/", 1)
                names = [f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.{CLUSTER_DOMAIN}"]
                if ns == namespace:
                    names.insert(0, name)
                lines.append(f"{self._addresses[key]}\t{' '.join(names)}")
        return "\n".join(lines) + "\n"

    def service_env(self, namespace: str) -> dict[str, str]:
        """The docker-link style variables the kubelet injects (enableServiceLinks)."""
        env: dict[str, str] = {}
        with self._lock:
            items = list(self._wanted.items())
        for key, svc in items:
            ns, name = key.split("/", 1)
            if ns != namespace and key != "default/kubernetes":
                continue
            ports = [p for p in svc["spec"].get("ports") or [] if p.get("protocol", "TCP") == "TCP"]
            if not ports or svc["spec"].get("type") == "ExternalName":
                continue
            prefix = name.upper().replace("-", "_")
            ip = self._addresses[key]
            env[f"{prefix}_SERVICE_HOST"] = ip
            env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
            env[f"{prefix}_PORT"] = f"tcp://{ip}:{ports[0]['port']}"
            for port in ports:
                base = f"{prefix}_PORT_{port['port']}_TCP"
                if port.get("name"):
                    env[f"{prefix}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(
                        port["port"])
                env[base] = f"tcp://{ip}:{port['port']}"
                env[f"{base}_PROTO"] = "tcp"
                env[f"{base}_PORT"] = str(port["port"])
                env[f"{base}_ADDR"] = ip
        return env

    # ---- reconcile -------------------------------------------------------------

    def handle(self, event: str, svc: Obj) -> None:
        """Informer callback (informer thread)."""
        meta = svc["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        with self._lock:
            if event == "DELETED" or meta.get("deletionTimestamp"):
                self._wanted.pop(key, None)
            else:
                self._allocate(key, [int(p["port"]) for p in svc["spec"].get("ports") or []
                                     if p.get("protocol", "TCP") == "TCP"])
                self._wanted[key] = svc
        asyncio.run_coroutine_threadsafe(self._reconcile(), self.loop)
        for callback in self.on_change:
            callback()

    async def _reconcile(self) -> None:
        with self._lock:
            wanted: dict[tuple[str, int], str] = {}
            for key, svc in self._wanted.items():
                for port in svc["spec"].get("ports") or []:
                    if port.get("protocol", "TCP") == "TCP":
                        wanted[(self._addresses[key], int(port["port"]))] = key
        for addr in list(self._servers):
            if addr not in wanted:
                self._servers.pop(addr).close()
                log.info("service proxy: closed %s:%d", *addr)
        for addr, key in wanted.items():
            if addr in self._servers:
                continue
            ip, port = addr
            try:
                self._servers[addr] = await asyncio.start_server(
                    lambda r, w, k=key, p=port: self._serve(k, p, r, w), ip, port,
                    reuse_address=True,
                )
                log.info("service proxy: %s port %d on %s", key, port, ip)
            except OSError as exc:
                log.error("service proxy: cannot listen on %s:%d for %s: %s", ip, port, key, exc)

    # ---- traffic ---------------------------------------------------------------

    def upstreams(self, key: str, port: int) -> list[tuple[str, int]]:
        """Backends of Service ``key`` at service port ``port``."""
        with self._lock:
            svc = self._wanted.get(key)
        if svc is None:
            return []
        ns, name = key.split("/", 1)
        spec = svc["spec"]
        sport = next((p for p in spec.get("ports") or [] if int(p["port"]) == port), None)
        if sport is None:
            return []
        if key == "default/kubernetes":
            return [self.apiserver]
        if spec.get("type") == "ExternalName":
            return [(spec["externalName"], int(sport.get("targetPort") or port))]
        if spec.get("selector"):
            target = sport.get("targetPort", port)
            if isinstance(target, int) or str(target).isdigit():
                return [("127.0.0.1", int(target))]
            return [("127.0.0.1", p) for p in self._named_ports(ns, spec["selector"], target)]
        return self._endpoint_backends(ns, name, sport.get("name") or "")

    def _named_ports(self, ns: str, selector: dict[str, str], port_name: str) -> list[int]:
        found = []
        for pod in self.lookup("pods", ns):
            labels = pod["metadata"].get("labels") or {}
            if any(labels.get(k) != v for k, v in selector.items()):
                continue
            if pod.get("status", {}).get("phase") != "Running":
                continue
            for container in pod["spec"].get("containers", []):
                for cport in container.get("ports") or []:
                    if cport.get("name") == port_name:
                        found.append(int(cport["containerPort"]))
        return sorted(set(found))

    def _translate(self, ip: str) -> str:
        return "127.0.0.1" if ip in self.host_aliases else ip

    def _endpoint_backends(self, ns: str, name: str, port_name: str) -> list[tuple[str, int]]:
        backends: list[tuple[str, int]] = []
        for eps in self.lookup("endpointslices", ns):
            if (eps["metadata"].get("labels") or {}).get("kubernetes.io/service-name") != name:
                continue
            ports = [p for p in eps.get("ports") or [] if (p.get("name") or "") == port_name]
            for endpoint in eps.get("endpoints") or []:
                if (endpoint.get("conditions") or {}).get("ready") is False:
                    continue
                for address in endpoint.get("addresses") or []:
                    for p in ports:
                        backends.append((self._translate(address), int(p["port"])))
        if backends:
            return backends
        for ep in self.lookup("endpoints", ns):
            if ep["metadata"]["name"] != name:
                continue
            for subset in ep.get("subsets") or []:
                ports = [p for p in subset.get("ports") or [] if (p.get("name") or "") == port_name]
                for address in subset.get("addresses") or []:
                    for p in ports:
                        backends.append((self._translate(address["ip"]), int(p["port"])))
        return backends

    async def _serve(self, key: str, port: int, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        backends = self.upstreams(key, port)
        if backends:
            start = next(self._rr) % len(backends)
            backends = backends[start:] + backends[:start]
        upstream = None
        for host, bport in backends:
            try:
                if ipaddress.ip_address(host).is_unspecified:
                    continue
            except ValueError:
                pass  # a host name (ExternalName)
            try:
                upstream = await asyncio.wait_for(asyncio.open_connection(host, bport), 5)
                break
            except (OSError, TimeoutError) as exc:
                log.info("service proxy: %s:%d -> %s:%d failed: %s", key, port, host, bport, exc)
        if upstream is None:
            if not backends:
                log.info("service proxy: %s port %d has no backends", key, port)
            writer.close()
            return
        up_reader, up_writer = upstream
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer),
                             return_exceptions=True)
        writer.close()
        up_writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction; pass the peer's half-close on (protocols like PostgreSQL's
    terminate with it) and close on errors."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()


def _port_free(ip: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((ip, port))
        except OSError:
            return False
    return True
