"""The validating admission webhook: every replica, leader or candidate, answers the API
server's AdmissionReviews over HTTPS with the verdicts of decisions/admission.py.

Certificates are the operator's own, so neither cert-manager nor Helm's `genCA` (a new CA
at every render: an endless diff under Argo CD) is needed. The first replica to start makes
a CA and a serving certificate for the webhook Service's DNS names and keeps them in a
Secret of the release namespace; the others read that Secret. Each replica puts the CA into
the chart's ValidatingWebhookConfiguration (`caBundle`) at start and every few minutes, so
a configuration re-applied by Helm or Argo CD gets it back. A certificate is replaced when it
names other hosts or is within RENEW_BEFORE of its end; replicas pick up the new one when they
restart (the replica that renews does so at start)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import ssl
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from timesheet_backup import kube
from timesheet_backup.actions.common import missing_secrets
from timesheet_backup.api.defaults import Defaults
from timesheet_backup.decisions import admission
from timesheet_backup.settings import WebhookSettings

log = logging.getLogger(__name__)

VALIDITY = dt.timedelta(days=5 * 365)
RENEW_BEFORE = dt.timedelta(days=30)
REASSERT_SECONDS = 300.0
RETRY_SECONDS = 15.0
MAX_BODY = 3 * 1024 * 1024  # the API server's own request limit


@dataclass(frozen=True)
class Material:
    """PEM texts: the CA (the caBundle) and the serving certificate with its key."""

    ca: bytes
    cert: bytes
    key: bytes

    def secret_data(self) -> dict[str, str]:
        return {k: base64.b64encode(v).decode() for k, v in
                (("ca.crt", self.ca), ("tls.crt", self.cert), ("tls.key", self.key))}

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str]) -> Material:
        return cls(*(base64.b64decode(data[k]) for k in ("ca.crt", "tls.crt", "tls.key")))


def dns_names(service: str, namespace: str) -> list[str]:
    """The names the API server may use for the Service (it uses `<svc>.<ns>.svc`)."""
    return [f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]


def issue(names: list[str], now: dt.datetime) -> Material:
    """A new CA and a serving certificate for `names`, signed by it (ECDSA P-256)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                            "timesheet-backup-operator webhook CA")])
    start, end = now - dt.timedelta(hours=1), now + VALIDITY
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return Material(
        ca=ca.public_bytes(pem), cert=cert.public_bytes(pem),
        key=key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def still_good(material: Material, names: list[str], now: dt.datetime) -> bool:
    """True when the serving certificate names every host and is far from its end."""
    try:
        cert = x509.load_pem_x509_certificate(material.cert)
        x509.load_pem_x509_certificate(material.ca)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    return (set(names) <= set(san.get_values_for_type(x509.DNSName))
            and cert.not_valid_after_utc - now > RENEW_BEFORE)


def ensure_material(cfg: WebhookSettings, now: dt.datetime) -> Material:
    """The Secret's certificate, made (or renewed) here when missing or no longer good.
    Optimistic concurrency: replicas starting together agree on the first one written."""
    names = dns_names(cfg.service, cfg.namespace)
    for _attempt in range(5):
        found = kube.get_secret_data(cfg.namespace, cfg.secret)
        if found is not None:
            data, _version = found
            try:
                material = Material.from_secret_data(data)
            except (KeyError, ValueError):
                material = None
            if material is not None and still_good(material, names, now):
                return material
            log.info("renewing the webhook certificate in Secret %s/%s", cfg.namespace,
                     cfg.secret)
        fresh = issue(names, now)
        if kube.write_tls_secret(cfg.namespace, cfg.secret, fresh.secret_data(),
                                 None if found is None else found[1]):
            return fresh
    raise RuntimeError(f"could not settle the webhook certificate in Secret "
                       f"{cfg.namespace}/{cfg.secret}: it kept changing")


def answer(review: Mapping[str, Any], defaults: Defaults) -> dict[str, Any]:
    """The AdmissionReview response to one request (reads Secrets, nothing else)."""
    request = review.get("request") or {}
    response: dict[str, Any] = {"uid": request.get("uid", ""), "allowed": True}
    kind = (request.get("kind") or {}).get("kind", "")
    if kind in admission.SPECS and admission.needs_review(request):
        spec = (request.get("object") or {}).get("spec")
        refused = admission.refusal(kind, spec)
        missing: list[str] = []
        missing_for_deletes: list[str] = []
        warnings: list[str] = []
        if refused is None:
            namespace = request.get("namespace", "")
            refs, warnings = admission.secrets_needed(kind, spec, defaults)
            missing = missing_secrets(namespace, refs)
            missing_for_deletes = missing_secrets(
                namespace, admission.deletion_secrets_needed(kind, spec, defaults))
        result = admission.verdict(refused, missing, warnings, missing_for_deletes)
        response["allowed"] = result.allowed
        if not result.allowed:
            response["status"] = {"code": 422, "reason": "Invalid", "message": result.message}
        if result.warnings:
            response["warnings"] = list(result.warnings)
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": response}


def _handler(defaults: Defaults) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # seconds a client may take for the handshake, the request, the reply

        def setup(self) -> None:
            super().setup()
            # Here, in the request's thread: a client that never finishes its handshake
            # holds up nobody else (the listening socket does not handshake on accept).
            self.connection.do_handshake()

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if self.path.split("?")[0] != "/validate" or not 0 < length <= MAX_BODY:
                self.send_error(404 if length else 400)
                return
            try:
                review = json.loads(self.rfile.read(length))
                body = json.dumps(answer(review, defaults)).encode()
            except Exception:  # one bad request must not stop the server; logged with why
                log.exception("admission review failed; the API server ignores the webhook")
                self.send_error(500)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("webhook: " + format, *args)

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away or spoke no TLS: not worth a traceback on stderr.
        log.debug("webhook connection from %s failed", client_address, exc_info=True)


def _server_context(material: Material) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # load_cert_chain reads files only: a private scratch file (TMPDIR, the chart's
    # emptyDir; the root filesystem is read-only), removed as soon as it is loaded.
    fd, path = tempfile.mkstemp(prefix="webhook-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(material.key + material.cert)
        context.load_cert_chain(path)
    finally:
        os.unlink(path)
    return context


def serve(cfg: WebhookSettings, defaults: Defaults) -> None:
    """Serve from a background thread; setting up is retried until it works. Backups come
    first: while the webhook cannot start (API server unreachable, RBAC), the operator runs
    without it and reports bad objects in their status, as it always does."""
    def start() -> None:
        while True:
            try:
                _start(cfg, defaults)
                return
            except Exception as exc:
                log.error("the admission webhook is not served yet (%s); retrying in %ss",
                          exc, RETRY_SECONDS)
                threading.Event().wait(RETRY_SECONDS)

    threading.Thread(target=start, name="webhook-start", daemon=True).start()


def _start(cfg: WebhookSettings, defaults: Defaults) -> None:
    material = ensure_material(cfg, dt.datetime.now(dt.UTC))
    ca_bundle = base64.b64encode(material.ca).decode()
    server = _Server((cfg.host or "0.0.0.0", cfg.port),  # noqa: S104
                     _handler(defaults))
    server.socket = _server_context(material).wrap_socket(
        server.socket, server_side=True, do_handshake_on_connect=False)
    threading.Thread(target=server.serve_forever, name="webhook", daemon=True).start()
    log.info("serving the admission webhook on %s (Service %s/%s)", cfg.address,
             cfg.namespace, cfg.service)
    threading.Thread(target=_keep_ca_bundle, args=(cfg.configuration, ca_bundle),
                     name="webhook-ca", daemon=True).start()


def _keep_ca_bundle(configuration: str, ca_bundle: str) -> None:
    stop = threading.Event()
    while True:
        try:
            if kube.set_webhook_ca_bundle(configuration, ca_bundle):
                log.info("put the webhook CA into ValidatingWebhookConfiguration %s",
                         configuration)
        except Exception as exc:  # the API server or RBAC: say so, try again later
            log.warning("cannot set the caBundle of ValidatingWebhookConfiguration %s: %s",
                        configuration, exc)
        stop.wait(REASSERT_SECONDS)
