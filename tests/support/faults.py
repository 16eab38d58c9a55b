"""Fault injection for the e2e tier: a toxiproxy on this host between the pods and the host's
PostgreSQL / S3 server.

Pods reach host services through selectorless Services whose EndpointSlice points at the
host alias (192.0.2.1, see docs/test-cluster.md). A *proxied* Service is the same thing with the
EndpointSlice pointing at a toxiproxy listener instead of the real port, so a test can cut,
slow or refuse the traffic of one Backup or Restore (the one whose spec names that Service)
while the rest of the namespace talks to the real servers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tests.support.cluster import Cluster
from tests.support.s3server import Proxy, ToxiProxy


@dataclass
class ProxiedService:
    """A Service `name.<namespace>.svc:port` whose traffic goes through `proxy`."""

    name: str
    namespace: str
    port: int
    proxy: Proxy

    @property
    def host(self) -> str:
        return f"{self.name}.{self.namespace}.svc"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def start_toxiproxy(cluster: Cluster) -> ToxiProxy:
    """A toxiproxy-server whose proxies listen where pods can reach this host (the host
    alias for the local node, every address on kind)."""
    server = ToxiProxy()
    server.host = cluster.host_bind_address
    return server.start()


def proxied_service(cluster: Cluster, toxiproxy: ToxiProxy, namespace: str, name: str,
                    port: int, upstream: str) -> ProxiedService:
    """A toxiproxy proxy to `upstream` (host:port) and a Service `name:port` in `namespace`
    whose backend is that proxy."""
    proxy = toxiproxy.create_proxy(upstream, name=f"{namespace}-{name}")
    cluster.expose_host_port(namespace, name, port, proxy.port)
    return ProxiedService(name, namespace, port, proxy)


def pg_upstream(cluster: Cluster) -> str:
    """host:port of the PostgreSQL server the e2e apps use."""
    return f"{cluster.env['PGHOST']}:{cluster.env['PGPORT']}"


def s3_upstream(cluster: Cluster) -> str:
    """host:port of the S3 server the e2e apps use."""
    return urlsplit(cluster.env["S3_ENDPOINT"]).netloc


def multipart_uploads(s3: Any, bucket: str, prefix: str = "") -> list[dict[str, Any]]:
    """Unfinished multipart uploads in `bucket` (orphans hold storage and are invisible to
    ordinary listings)."""
    response = s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix)
    return list(response.get("Uploads") or [])

