"""A throwaway S3-compatible server (versitygw) and a fault-injecting proxy (toxiproxy).

The agent streams backups into S3 with multipart uploads and reads them back; the tests
use a real S3 implementation for that rather than a mock, so request signing, multipart
semantics, checksums and error responses are the real thing. versitygw with its POSIX
backend stores each bucket as a directory under a temporary root, answers on 127.0.0.1
and uses generated root credentials.

toxiproxy sits between a client and a server (PostgreSQL or S3) and misbehaves on demand:
cut the connection after N bytes, add latency, throttle, stall, reset. Tests use it for
"connection lost mid-upload" and "database gone mid-dump" without touching the servers.

Both binaries come from the pinned Go build (tests/cluster/build-tools.sh): ``TSB_TOOLS_BIN``
names their directory, otherwise the script is run (it returns at once when its cache is
current). A missing binary is an error, never a skip: a silently skipped integration suite
looks exactly like a passing one.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from tests.support.tlscerts import CertFiles

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_TOOLS = REPO_ROOT / "tests" / "cluster" / "build-tools.sh"
REGION = "us-east-1"


class ToolError(RuntimeError):
    """A test tool is missing or misbehaved; the message says what to do about it."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@functools.cache
def tools_bin_dir() -> Path:
    """Directory holding versitygw and toxiproxy-server (built and cached on first use)."""
    env = os.environ.get("TSB_TOOLS_BIN")
    if env:
        return Path(env)
    try:
        proc = subprocess.run(
            ["bash", str(BUILD_TOOLS)],
            stdout=subprocess.PIPE,
            stderr=None,  # build progress goes to the terminal / pytest's captured stderr
            text=True,
            check=False,
            timeout=3600,
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"{BUILD_TOOLS} did not finish within an hour") from exc
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise ToolError(
            f"{BUILD_TOOLS} failed (exit {proc.returncode}); it builds versitygw and toxiproxy "
            "from the Go module proxy (needs Go >= 1.26), or set TSB_TOOLS_BIN to a directory "
            "that has them"
        )
    return Path(lines[-1])


def find_tool(name: str) -> Path:
    path = tools_bin_dir() / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ToolError(f"{name} not found in {path.parent} (from TSB_TOOLS_BIN or {BUILD_TOOLS})")
    return path


def _wait_port(
    host: str, port: int, proc: subprocess.Popen[bytes], timeout: float, what: str, log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ToolError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise ToolError(f"{what} not listening on {host}:{port} after {timeout}s:\n{_tail(log)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def xattrs_supported(directory: Path) -> bool:
    """versitygw keeps object metadata (ETag, content type) in user xattrs when it can."""
    probe = directory / f".xattr-probe-{uuid.uuid4().hex}"
    probe.touch()
    try:
        os.setxattr(probe, "user.tsb-probe", b"1")
        return os.getxattr(probe, "user.tsb-probe") == b"1"
    except OSError:
        return False
    finally:
        probe.unlink()


class S3Server:
    """versitygw (POSIX backend) on 127.0.0.1 with generated root credentials.

    Attributes: ``host``, ``port``, ``endpoint`` (``http://127.0.0.1:<port>``),
    ``access_key``, ``secret_key``, ``region``, ``root_dir`` (buckets are directories there),
    ``sidecar_dir`` (None when xattrs hold the metadata), ``log_path``.
    """

    def __init__(self, *, binary: str | Path | None = None, port: int | None = None,
                 tls: CertFiles | None = None, ca_bundle: Path | None = None,
                 host: str = "127.0.0.1", versioning: bool = False, iam: bool = False) -> None:
        """`tls`: serve https with this certificate (its CA's file is `ca_bundle`, which the
        test client trusts)."""
        self.binary = Path(binary) if binary else find_tool("versitygw")
        self.tls = tls
        self.ca_bundle = ca_bundle
        # versitygw's POSIX backend versions buckets only with --versioning-dir; without it
        # an Object Lock bucket is unversioned (locked objects refuse plain deletes), with it
        # the bucket behaves as on AWS (a plain delete adds a delete marker, the locked
        # version stays and refuses deletion).
        self.versioning = versioning
        # IAM accounts besides root (`--iam-dir`): create_user() and bucket policies, for
        # keys with less than the root's rights (a writer that cannot delete).
        self.iam = iam
        self.host = host
        self.port = port or free_port()
        self.region = REGION
        # versitygw's own rules for keys are loose; stay inside what AWS would issue.
        self.access_key = "TSB" + secrets.token_hex(8).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self.base_dir = Path(tempfile.mkdtemp(prefix="tsb-s3-"))
        self.root_dir = self.base_dir / "buckets"
        self.root_dir.mkdir()
        self.sidecar_dir: Path | None = None
        if not xattrs_supported(self.root_dir):
            self.sidecar_dir = self.base_dir / "meta"
            self.sidecar_dir.mkdir()
        self.log_path = self.base_dir / "versitygw.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._client: Any = None

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def start(self, timeout: float = 30) -> S3Server:
        if self._proc is not None and self._proc.poll() is None:
            return self
        argv = [
            str(self.binary),
            "--port",
            f"{self.host}:{self.port}",
            "--region",
            self.region,
            "posix",
        ]
        if self.tls is not None:
            argv[1:1] = ["--cert", str(self.tls.cert), "--key", str(self.tls.key)]
        if self.sidecar_dir is not None:
            argv += ["--sidecar", str(self.sidecar_dir)]
        if self.versioning:
            versions = self.base_dir / "versions"
            versions.mkdir(exist_ok=True)
            argv += ["--versioning-dir", str(versions)]
        if self.iam:
            iam_dir = self.base_dir / "iam"
            iam_dir.mkdir(exist_ok=True)
            argv[1:1] = ["--iam-dir", str(iam_dir)]
        argv.append(str(self.root_dir))
        # Credentials travel in the environment, not in argv (visible to every local user).
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "ROOT_ACCESS_KEY_ID": self.access_key,
            "ROOT_SECRET_ACCESS_KEY": self.secret_key,
        }
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                argv,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        _wait_port(self.host, self.port, self._proc, timeout, "versitygw", self.log_path)
        self._wait_answers(timeout)
        return self

    def _wait_answers(self, timeout: float) -> None:
        """Listening is not serving: wait for an authenticated request to succeed."""
        client = self.client(retries=0)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                client.list_buckets()
                return
            except Exception as exc:  # any failure: not ready yet
                last = exc
                if self._proc is not None and self._proc.poll() is not None:
                    break
                time.sleep(0.1)
        raise ToolError(f"versitygw does not answer: {last}\n{_tail(self.log_path)}")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        _stop_process(self._proc)

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines)

    # ---------------------------------------------------------------- client side

    def client(self, *, endpoint: str | None = None, retries: int = 2, **config: Any) -> Any:
        """A boto3 S3 client for this server (path-style addressing, us-east-1).

        ``endpoint`` overrides the URL, e.g. a toxiproxy in front of the server. The default
        client is created once and reused (creating one costs a few hundred milliseconds).
        """
        default = endpoint is None and retries == 2 and not config
        if default and self._client is not None:
            return self._client
        cfg = Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": retries + 1, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            **config,
        )
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint or self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=cfg,
            verify=str(self.ca_bundle) if self.ca_bundle else None,
        )
        if default:
            self._client = client
        return client

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """Environment for a child process (the agent) to reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "S3_ENDPOINT": endpoint or self.endpoint,
        }

    def create_user(self, role: str = "user") -> tuple[str, str]:
        """A new IAM account (needs `iam=True`); returns its (access key, secret key)."""
        if not self.iam:
            raise ToolError("create_user needs an S3Server(iam=True)")
        return create_user(self.binary, self.endpoint, self.access_key, self.secret_key,
                           role=role, ca_bundle=self.ca_bundle)

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a unique name unless given) and return its name."""
        name = name or f"tsb-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def delete_bucket(self, name: str) -> None:
        """Delete a bucket with everything in it, pending multipart uploads included."""
        client = self.client()
        for upload in self.list_multipart_uploads(name):
            client.abort_multipart_upload(
                Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"]
            )
        for key in self.list_keys(name):
            client.delete_object(Bucket=name, Key=key)
        client.delete_bucket(Bucket=name)

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """All object keys under ``prefix``, sorted."""
        keys: list[str] = []
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        for page in pages:
            keys += [obj["Key"] for obj in page.get("Contents", [])]
        return sorted(keys)

    def list_multipart_uploads(self, bucket: str, prefix: str = "") -> list[dict[str, Any]]:
        """Multipart uploads started but neither completed nor aborted (orphans, if any).

        Each item has at least ``Key`` and ``UploadId``. A backup that failed must leave
        this list empty, or the bucket accumulates invisible, billed parts.
        """
        client = self.client()
        uploads: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        while True:
            page = client.list_multipart_uploads(**kwargs)
            uploads += page.get("Uploads", [])
            if not page.get("IsTruncated"):
                return uploads
            kwargs["KeyMarker"] = page.get("NextKeyMarker", "")
            kwargs["UploadIdMarker"] = page.get("NextUploadIdMarker", "")

    def get_bytes(self, bucket: str, key: str) -> bytes:
        body: bytes = self.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    def put_bytes(self, bucket: str, key: str, data: bytes, **kwargs: Any) -> None:
        self.client().put_object(Bucket=bucket, Key=key, Body=data, **kwargs)


# ------------------------------------------------------------------ least-privilege keys


def create_user(binary: str | Path, endpoint: str, root_access: str, root_secret: str, *,
                role: str = "user", ca_bundle: Path | None = None) -> tuple[str, str]:
    """A new account on a versitygw started with `--iam-dir`, through its admin API (the
    `versitygw admin` CLI, root credentials in its environment, never in argv). Role `user`
    may touch only buckets it owns or that a bucket policy opens to it. Returns (access key,
    secret key)."""
    access = "TSBU" + secrets.token_hex(8).upper()
    secret = secrets.token_urlsafe(30)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "ADMIN_ACCESS_KEY_ID": root_access, "ADMIN_SECRET_ACCESS_KEY": root_secret}
    argv = [str(binary), "admin", "--endpoint-url", endpoint]
    if ca_bundle is not None:
        argv.append("--allow-insecure")  # the CLI takes no CA file; the test's own CA
    argv += ["create-user", "--access", access, "--secret", secret, "--role", role]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    if proc.returncode != 0:
        raise ToolError(f"versitygw admin create-user failed ({proc.returncode}): "
                        f"{proc.stdout}{proc.stderr} (is the gateway running with --iam-dir?)")
    return access, secret


def write_only_policy(bucket: str, prefix: str, writer: str, deleter: str) -> dict[str, Any]:
    """The bucket policy of docs/security.md ("Writers that cannot delete"): `writer` may put,
    read, list and abort uploads under `prefix` but never delete; `deleter` may list and
    delete. versitygw authorizes DeleteObjects against the bucket itself (AWS: each key), so
    the deleter's s3:DeleteObject also names the bucket ARN here."""
    objects = f"arn:aws:s3:::{bucket}/{prefix}/*"
    whole = f"arn:aws:s3:::{bucket}"
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "WriterObjects", "Effect": "Allow", "Principal": {"AWS": [writer]},
         "Action": ["s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload"],
         "Resource": [objects]},
        {"Sid": "WriterBucket", "Effect": "Allow", "Principal": {"AWS": [writer]},
         "Action": ["s3:ListBucket", "s3:ListBucketMultipartUploads"], "Resource": [whole]},
        {"Sid": "DeleterObjects", "Effect": "Allow", "Principal": {"AWS": [deleter]},
         "Action": ["s3:DeleteObject"], "Resource": [objects, whole]},
        {"Sid": "DeleterBucket", "Effect": "Allow", "Principal": {"AWS": [deleter]},
         "Action": ["s3:ListBucket"], "Resource": [whole]},
    ]}


# ------------------------------------------------------------------------ toxiproxy


class ToxiProxyError(RuntimeError):
    pass


class ToxiProxy:
    """toxiproxy-server on 127.0.0.1, driven through its HTTP API (urllib, no extra deps)."""

    def __init__(self, *, binary: str | Path | None = None, port: int | None = None) -> None:
        self.binary = Path(binary) if binary else find_tool("toxiproxy-server")
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.base_dir = Path(tempfile.mkdtemp(prefix="tsb-toxiproxy-"))
        self.log_path = self.base_dir / "toxiproxy.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 15) -> ToxiProxy:
        if self._proc is not None and self._proc.poll() is None:
            return self
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [str(self.binary), "-host", self.host, "-port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        _wait_port(self.host, self.port, self._proc, timeout, "toxiproxy-server", self.log_path)
        self.api("GET", "/version")
        return self

    def stop(self) -> None:
        _stop_process(self._proc)

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> ToxiProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines)

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """One API call; returns the decoded JSON answer (None when empty)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.api_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise ToxiProxyError(
                f"toxiproxy {method} {path}: {exc.code} {exc.read().decode(errors='replace')}"
            ) from exc
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    def create_proxy(
        self, upstream: str, name: str | None = None, listen_port: int | None = None
    ) -> Proxy:
        """A new proxy on 127.0.0.1 (free port unless given) forwarding to ``upstream``."""
        name = name or f"proxy-{uuid.uuid4().hex[:8]}"
        listen = f"{self.host}:{listen_port or free_port()}"
        answer = self.api(
            "POST",
            "/proxies",
            {"name": name, "listen": listen, "upstream": upstream, "enabled": True},
        )
        host, _, port = str(answer.get("listen", listen)).rpartition(":")
        return Proxy(self, name, host or self.host, int(port), upstream)

    def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        self.api("POST", "/reset")


class Proxy:
    """One toxiproxy proxy. ``host``/``port`` is where clients connect instead of upstream.

    Toxics act on a ``stream``: ``upstream`` is client → server (an S3 upload's body),
    ``downstream`` is server → client (``pg_dump`` reading rows).
    """

    def __init__(self, server: ToxiProxy, name: str, host: str, port: int, upstream: str):
        self.server = server
        self.name = name
        self.host = host
        self.port = port
        self.upstream = upstream

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``http://host:port`` — an S3 endpoint through this proxy."""
        return f"http://{self.address}"

    def add_toxic(
        self,
        type: str,
        stream: str = "downstream",
        toxicity: float = 1.0,
        name: str | None = None,
        **attributes: Any,
    ) -> str:
        """Add a toxic of ``type`` (latency, bandwidth, timeout, limit_data, reset_peer,
        slow_close, slicer); returns its name."""
        if stream not in ("upstream", "downstream"):
            raise ValueError(f"stream must be upstream or downstream, not {stream!r}")
        name = name or f"{type}_{stream}_{uuid.uuid4().hex[:6]}"
        self.server.api(
            "POST",
            f"/proxies/{self.name}/toxics",
            {
                "name": name,
                "type": type,
                "stream": stream,
                "toxicity": toxicity,
                "attributes": attributes,
            },
        )
        return name

    def remove_toxic(self, name: str) -> None:
        self.server.api("DELETE", f"/proxies/{self.name}/toxics/{name}")

    def toxics(self) -> list[dict[str, Any]]:
        return list(self.server.api("GET", f"/proxies/{self.name}/toxics") or [])

    def clear(self) -> None:
        """Remove all toxics and enable the proxy again."""
        for toxic in self.toxics():
            self.remove_toxic(toxic["name"])
        self.enable()

    @contextlib.contextmanager
    def toxic(self, type: str, stream: str = "downstream", **attributes: Any) -> Iterator[str]:
        """``with proxy.toxic("latency", latency=500):`` — the toxic is gone afterwards."""
        name = self.add_toxic(type, stream, **attributes)
        try:
            yield name
        finally:
            with contextlib.suppress(ToxiProxyError):
                self.remove_toxic(name)

    # Convenience for the faults the tests need; each returns the toxic's name.

    def cut_after(self, nbytes: int, stream: str = "upstream") -> str:
        """Close each connection once ``nbytes`` passed in ``stream`` (per connection)."""
        return self.add_toxic("limit_data", stream, bytes=int(nbytes))

    def latency(self, ms: int, jitter: int = 0, stream: str = "downstream") -> str:
        return self.add_toxic("latency", stream, latency=int(ms), jitter=int(jitter))

    def bandwidth(self, kb_per_s: int, stream: str = "downstream") -> str:
        return self.add_toxic("bandwidth", stream, rate=int(kb_per_s))

    def stall(self, timeout_ms: int = 0, stream: str = "downstream") -> str:
        """Stop passing data; with ``timeout_ms`` > 0 close the connection after that long
        (toxiproxy's ``timeout`` toxic; 0 holds it open until the toxic is removed)."""
        return self.add_toxic("timeout", stream, timeout=int(timeout_ms))

    def reset_peer(self, timeout_ms: int = 0, stream: str = "downstream") -> str:
        """Answer with TCP RST (after ``timeout_ms``) instead of a clean close."""
        return self.add_toxic("reset_peer", stream, timeout=int(timeout_ms))

    def disable(self) -> None:
        """Close all connections and refuse new ones (the server is "gone")."""
        self.server.api("POST", f"/proxies/{self.name}", {"enabled": False})

    def enable(self) -> None:
        self.server.api("POST", f"/proxies/{self.name}", {"enabled": True})

    def delete(self) -> None:
        with contextlib.suppress(ToxiProxyError):
            self.server.api("DELETE", f"/proxies/{self.name}")


# ------------------------------------------------------------------------------ wire tap


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # path and query, as sent
    headers: dict[str, str]  # names lower-cased


class WireTap:
    """A TCP relay to an S3 server that keeps the bytes clients send through it, read back
    as the requests they were (``requests()``): for what a request carried that the server
    does not keep. versitygw's POSIX backend, for one, reports every object's storage class
    as STANDARD whatever the upload asked for. Use as a context manager; ``url`` is the
    endpoint to give the client instead of the server's."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = self._listener.getsockname()[:2]
        self._sent: list[bytearray] = []  # per connection, client -> server
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> WireTap:
        threading.Thread(target=self._accept, daemon=True, name="wiretap").start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(self.upstream)
            sent = bytearray()
            with self._lock:
                self._sent.append(sent)
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, sent), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, None), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, keep: bytearray | None) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if keep is not None:
                    keep += data
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def requests(self) -> list[Request]:
        with self._lock:
            streams = [bytes(sent) for sent in self._sent]
        return [request for stream in streams for request in _parse_requests(stream)]


def _parse_requests(stream: bytes) -> Iterator[Request]:
    """HTTP/1.1 requests one after another on a connection: a head, then a body of
    Content-Length bytes or in chunks (botocore streams uploads with both)."""
    pos = 0
    while pos < len(stream):
        end = stream.index(b"\r\n\r\n", pos)
        line, *fields = stream[pos:end].decode("latin-1").split("\r\n")
        method, target, _ = line.split(" ", 2)
        headers = {}
        for field in fields:
            name, _, value = field.partition(":")
            headers[name.strip().lower()] = value.strip()
        pos = end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                eol = stream.index(b"\r\n", pos)
                size = int(stream[pos:eol].split(b";")[0], 16)
                pos = eol + 2
                if size == 0:
                    break
                pos += size + 2  # the chunk and its CRLF
            while not stream.startswith(b"\r\n", pos):  # trailer fields, then an empty line
                pos = stream.index(b"\r\n", pos) + 2
            pos += 2
        else:
            pos += int(headers.get("content-length", "0"))
        yield Request(method, target, headers)
