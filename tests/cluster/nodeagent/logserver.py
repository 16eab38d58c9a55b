"""The kubelet's read-only log endpoint, so ``kubectl logs`` works against this node.

The API server proxies ``pods/log`` to ``https://<node address>:<kubelet port>/containerLogs/
<ns>/<pod>/<container>``. Without ``--kubelet-certificate-authority`` it does not verify
the kubelet's serving certificate, so a self-signed one (made with openssl) is enough.
Supported query parameters: follow, previous, tailLines, limitBytes. exec, attach and
port-forward are not (501).
"""

from __future__ import annotations

import logging
import ssl
import subprocess
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .agent import Agent
    from .pods import PodWorker, Run

log = logging.getLogger("nodeagent.logs")


def serving_cert(pki: Path, names: list[str]) -> tuple[Path, Path]:
    pki.mkdir(parents=True, exist_ok=True)
    cert, key = pki / "kubelet.crt", pki / "kubelet.key"
    if not cert.exists():
        san = ",".join(["IP:127.0.0.1"] + [f"DNS:{n}" for n in names])
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
             "-subj", "/CN=tsb-nodeagent", "-addext", f"subjectAltName={san}",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True,
        )
        key.chmod(0o600)
    return cert, key


class LogServer:
    def __init__(self, agent: Agent, port: int) -> None:
        self.agent = agent
        self.requested_port = port
        self.port = 0
        self._server: ThreadingHTTPServer | None = None

    def start(self, pki: Path, names: list[str]) -> int:
        """Listen on 127.0.0.1 (the requested port, else any free one); return the port."""
        agent = self.agent

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # chunked streaming for follow=true

            def log_message(self, fmt: str, *args: object) -> None:
                log.debug("kubelet api: " + fmt, *args)

            def do_GET(self) -> None:
                serve_get(agent, self)

            def do_POST(self) -> None:
                self.send_error(501, "not supported by the tsb node agent")

        cert, key = serving_cert(pki, names)
        try:
            server = ThreadingHTTPServer(("127.0.0.1", self.requested_port), Handler)
        except OSError:
            server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        server.socket = context.wrap_socket(server.socket, server_side=True)
        server.daemon_threads = True
        self._server = server
        self.port = int(server.server_address[1])
        threading.Thread(target=server.serve_forever, name="kubelet-api", daemon=True).start()
        log.info("kubelet log API on https://127.0.0.1:%d", self.port)
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def _find(agent: Agent, ns: str, pod: str, container: str) -> tuple[PodWorker, Run] | None:
    with agent._workers_lock:
        workers = [w for w in agent.workers.values() if w.ns == ns and w.name == pod]
    for worker in workers:
        for run in worker.all_runs:
            if run.name == container:
                return worker, run
    return None


def serve_get(agent: Agent, req: BaseHTTPRequestHandler) -> None:
    url = urllib.parse.urlsplit(req.path)
    parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
    if parts == ["healthz"]:
        _reply(req, 200, b"ok")
        return
    if len(parts) != 4 or parts[0] != "containerLogs":
        req.send_error(404 if parts[0] not in ("exec", "attach", "portForward", "run") else 501)
        return
    _, ns, pod, container = parts
    query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
    found = _find(agent, ns, pod, container)
    if found is None:
        req.send_error(404, f"container {container} of pod {ns}/{pod} is not on this node")
        return
    worker, run = found
    path = worker.dir / f"{container}.log"
    starts = run.log_starts
    if query.get("previous") == "true":
        if len(starts) < 2:
            req.send_error(400, f'previous terminated container "{container}" in pod "{pod}" '
                                "not found")
            return
        begin, end = starts[-2], starts[-1]
    else:
        begin, end = (starts[-1] if starts else 0), None
    try:
        with open(path, "rb") as fh:
            fh.seek(begin)
            data = fh.read() if end is None else fh.read(end - begin)
    except OSError:
        data = b""
    position = begin + len(data)  # where following continues
    if "tailLines" in query:
        lines = data.splitlines(keepends=True)
        data = b"".join(lines[-int(query["tailLines"]):]) if int(query["tailLines"]) else b""
    if "limitBytes" in query:
        data = data[:int(query["limitBytes"])]
    follow = query.get("follow") == "true" and end is None
    req.send_response(200)
    req.send_header("Content-Type", "text/plain")
    if not follow:
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)
        return
    req.send_header("Transfer-Encoding", "chunked")
    req.end_headers()
    try:
        _chunk(req, data)
        with open(path, "rb") as fh:
            fh.seek(position)
            while True:
                more = fh.read()
                if more:
                    _chunk(req, more)
                elif not run.running or worker.finished:
                    break
                else:
                    time.sleep(0.2)
        req.wfile.write(b"0\r\n\r\n")  # end of the chunked body
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
        pass


def _chunk(req: BaseHTTPRequestHandler, data: bytes) -> None:
    if not data:
        return  # an empty chunk would end the body
    req.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    req.wfile.flush()


def _reply(req: BaseHTTPRequestHandler, code: int, body: bytes) -> None:
    req.send_response(code)
    req.send_header("Content-Length", str(len(body)))
    req.end_headers()
    req.wfile.write(body)
