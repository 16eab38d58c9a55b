"""The admission decisions (decisions/admission.py) branch by branch, the webhook's settings,
its certificates, and its HTTPS answer on a local socket (no cluster: the requests here need
no Secret lookup)."""

from __future__ import annotations

import datetime as dt
import json
import ssl
import threading
import urllib.request
from typing import Any

import pytest
from cryptography import x509

from timesheet_backup import settings, webhook
from timesheet_backup.api.defaults import Defaults
from timesheet_backup.api.fields import SpecError, parse
from timesheet_backup.decisions import admission as a

pytestmark = pytest.mark.unit

DB = {"host": "db", "name": "timesheet_db", "user": "timesheet",
      "passwordSecretRef": {"name": "db", "key": "password"}}
STORAGE = {"bucket": "bkt", "credentialsSecretRef": {"name": "s3"}}
BACKUP = {"components": ["database"], "database": DB, "storage": STORAGE}
NOW = dt.datetime(2026, 12, 2, 12, tzinfo=dt.UTC)


def request(operation: str = "CREATE", spec: Any = None, old_spec: Any = None,
            deleting: bool = False) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": "x"}, "spec": spec}
    if deleting:
        obj["metadata"]["deletionTimestamp"] = "2026-12-02T00:00:00Z"
    return {"uid": "u1", "operation": operation, "namespace": "ns",
            "kind": {"kind": "BackupSchedule"}, "object": obj,
            "oldObject": {"spec": old_spec} if operation == "UPDATE" else None}


@pytest.mark.parametrize(("req", "expected"), [
    (request("CREATE", {"schedule": "@daily"}), True),
    (request("UPDATE", {"schedule": "@daily"}, {"schedule": "@hourly"}), True),
    # The operator's own writes (finalizers, annotations) leave the spec alone.
    (request("UPDATE", {"schedule": "0 2 30 2 *"}, {"schedule": "0 2 30 2 *"}), False),
    (request("UPDATE", {"schedule": "@daily"}, {"schedule": "@hourly"}, deleting=True), False),
    (request("DELETE"), False),
    (request("CONNECT"), False),
])
def test_only_a_new_spec_is_judged(req: dict[str, Any], expected: bool) -> None:
    assert a.needs_review(req) is expected


@pytest.mark.parametrize(("kind", "spec", "piece"), [
    ("BackupSchedule", {"schedule": "0 2 30 2 *"}, "would never fire"),
    ("BackupSchedule", {"schedule": "0 2 * * *", "timeZone": "Mars/Olympus_Mons"},
     "unknown time zone 'Mars/Olympus_Mons'"),
    ("BackupSchedule", {"schedule": "@daily", "verification": {"schedule": "0 5 31 4 *"}},
     "'0 5 31 4 *': no month it names has that day"),
    ("BackupSchedule", {"schedule": "@daily", "verification": {"schedule": "@weekly",
                                                               "database": "template1"}},
     "spec.verification.database: 'template1' is a PostgreSQL template database"),
    ("Restore", {"backupName": "b", "database": {"name": "template0"}},
     "spec.database.name: 'template0'"),
    ("Backup", {"databse": {}}, "databse"),  # what the parser refuses, the webhook refuses
])
def test_what_can_never_run_is_refused(kind: str, spec: dict[str, Any], piece: str) -> None:
    message = a.refusal(kind, spec)
    assert message is not None and piece in message, message


@pytest.mark.parametrize(("kind", "spec"), [
    ("BackupSchedule", {"schedule": "0 2 29 2 *"}),  # fires in leap years
    ("BackupSchedule", {"schedule": "@daily", "timeZone": "Europe/Berlin",
                        "verification": {"schedule": "@weekly", "database": "scratch"}}),
    ("BackupSchedule", {"schedule": "@daily", "verification": {"schedule": "@weekly"}}),
    ("Restore", {"backupName": "b", "database": {"name": "postgres_copy"}}),
    ("Restore", {"backupName": "b"}),
    ("Backup", {}),
])
def test_what_can_run_passes(kind: str, spec: dict[str, Any]) -> None:
    assert a.refusal(kind, spec) is None


def test_every_kind_the_webhook_sees_has_a_spec_model() -> None:
    assert set(a.SPECS) == {"Backup", "BackupSchedule", "Restore"}


def test_a_backup_names_the_secrets_its_job_reads() -> None:
    refs, warnings = a.secrets_needed("Backup", BACKUP, Defaults())
    assert refs == [("db", "password"), ("s3", "AWS_ACCESS_KEY_ID"),
                    ("s3", "AWS_SECRET_ACCESS_KEY")]
    assert warnings == []


def test_a_backup_the_defaults_leave_incomplete_is_warned_about() -> None:
    refs, warnings = a.secrets_needed("Backup", {"components": ["database"]}, Defaults())
    assert refs == []
    assert warnings == ["with the operator's current defaults this Backup would fail: "
                        "incomplete backup settings, set them in the Backup or the operator "
                        "defaults: database.host, database.name, database.user, "
                        "database.passwordSecretRef (or clientCertSecretRef), storage.bucket"]


def test_the_operator_defaults_complete_a_backup() -> None:
    defaults = parse(Defaults, {"database": DB, "storage": STORAGE})
    refs, warnings = a.secrets_needed("Backup", {"components": ["database"]}, defaults)
    assert ("db", "password") in refs and warnings == []


def test_a_schedule_names_its_template_and_decryption_secrets() -> None:
    spec = {"schedule": "@daily", "template": {"spec": BACKUP},
            "verification": {"schedule": "@weekly",
                             "decryption": {"secretRef": {"name": "age", "key": "identity"}}}}
    refs, warnings = a.secrets_needed("BackupSchedule", spec, Defaults())
    assert ("db", "password") in refs and refs[-1] == ("age", "identity")
    assert warnings == []


def test_an_incomplete_schedule_template_is_a_warning_with_its_decryption_key() -> None:
    spec = {"schedule": "@daily", "verification": {
        "schedule": "@weekly", "decryption": {"secretRef": {"name": "age", "key": "k"}}}}
    refs, warnings = a.secrets_needed("BackupSchedule", spec, Defaults())
    assert refs == [("age", "k")]
    assert warnings[0].startswith("with the operator's current defaults each Backup of this "
                                  "schedule would fail")


def test_a_schedule_without_verification_or_template() -> None:
    refs, warnings = a.secrets_needed("BackupSchedule", {"schedule": "@daily"}, Defaults())
    assert refs == [] and len(warnings) == 1


def test_a_restore_names_only_the_secrets_in_its_own_spec() -> None:
    spec = {"source": {"storage": STORAGE, "manifestKey": "a/manifest.json"},
            "database": {"passwordSecretRef": {"name": "target", "key": "pw"}},
            "decryption": {"secretRef": {"name": "age", "key": "identity"}}}
    refs, warnings = a.secrets_needed("Restore", spec, Defaults())
    assert refs == [("target", "pw"), ("s3", "AWS_ACCESS_KEY_ID"),
                    ("s3", "AWS_SECRET_ACCESS_KEY"), ("age", "identity")]
    assert warnings == []
    assert a.secrets_needed("Restore", {"backupName": "b"}, Defaults()) == ([], [])
    assert a.secrets_needed("Restore", {"backupName": "b", "database": {"name": "n"}},
                            Defaults()) == ([], [])


def test_verdicts() -> None:
    assert a.verdict("no", ["Secret ns/db not found"], ["w"]) == a.Verdict(False, "no")
    assert a.verdict(None, [], []) == a.ALLOW
    assert a.verdict(None, ["Secret ns/db not found"], ["w"]).warnings == (
        "Secret ns/db not found: the Jobs cannot start until it exists", "w")

    assert a.verdict(None, [], [], ["Secret ns/deleter not found"]).warnings == (
        a.deletion_secret_warning("Secret ns/deleter not found"),)


DELETER = {"name": "deleter", "accessKeyIdKey": "id", "secretAccessKeyKey": "secret"}
WRITE_ONLY = {**STORAGE, "deleteCredentialsSecretRef": DELETER}


def test_the_delete_secret_is_the_operators_not_the_jobs() -> None:
    """storage.deleteCredentialsSecretRef: never among the Job's Secrets (a missing one does
    not stop a backup), but named for the operator's deletes, from the same resolution."""
    backup = {**BACKUP, "storage": WRITE_ONLY}
    refs, warnings = a.secrets_needed("Backup", backup, Defaults())
    assert ("deleter", "id") not in refs and ("s3", "AWS_ACCESS_KEY_ID") in refs
    assert warnings == []
    assert a.deletion_secrets_needed("Backup", backup, Defaults()) == [
        ("deleter", "id"), ("deleter", "secret")]
    schedule = {"schedule": "@daily", "template": {"spec": backup}}
    assert a.deletion_secrets_needed("BackupSchedule", schedule, Defaults()) == [
        ("deleter", "id"), ("deleter", "secret")]
    # from the operator's defaults too
    defaults = parse(Defaults, {"storage": {"deleteCredentialsSecretRef": {"name": "d"}}})
    assert a.deletion_secrets_needed("Backup", BACKUP, defaults) == [
        ("d", "AWS_ACCESS_KEY_ID"), ("d", "AWS_SECRET_ACCESS_KEY")]
    # none set, a Restore (it deletes nothing), an incomplete spec (warned about elsewhere)
    assert a.deletion_secrets_needed("Backup", BACKUP, Defaults()) == []
    restore = {"source": {"storage": WRITE_ONLY, "manifestKey": "a/manifest.json"}}
    assert a.deletion_secrets_needed("Restore", restore, Defaults()) == []
    assert ("deleter", "id") not in a.secrets_needed("Restore", restore, Defaults())[0]
    assert a.deletion_secrets_needed("Backup", {"components": ["database"]}, Defaults()) == []


def test_a_missing_delete_secret_is_a_warning_that_backups_still_run() -> None:
    text = a.deletion_secret_warning("Secret ns/deleter not found")
    assert text.startswith("Secret ns/deleter not found (storage.deleteCredentialsSecretRef)")
    assert "backups run" in text and "cannot delete" in text


# --- settings -------------------------------------------------------------------------------

FULL_ENV = {"TSB_WEBHOOK_ADDRESS": "0.0.0.0:9443", "POD_NAMESPACE": "tsb",
            "TSB_WEBHOOK_SERVICE": "svc", "TSB_WEBHOOK_CONFIGURATION": "cfg",
            "TSB_WEBHOOK_SECRET": "tls"}


def test_webhook_settings() -> None:
    assert settings.webhook({}) is None
    assert settings.webhook({"TSB_WEBHOOK_ADDRESS": " "}) is None
    assert settings.webhook(FULL_ENV) == settings.WebhookSettings(
        address="0.0.0.0:9443", namespace="tsb", service="svc", configuration="cfg",
        secret="tls", host="0.0.0.0", port=9443)
    assert settings.webhook({**FULL_ENV, "TSB_WEBHOOK_ADDRESS": "[::1]:8443"}) == \
        settings.WebhookSettings(address="[::1]:8443", namespace="tsb", service="svc",
                                 configuration="cfg", secret="tls", host="::1", port=8443)
    every_interface = settings.webhook({**FULL_ENV, "TSB_WEBHOOK_ADDRESS": ":9443"})
    assert every_interface is not None and (every_interface.host, every_interface.port) == (
        "", 9443)
    with pytest.raises(SpecError, match="TSB_WEBHOOK_SERVICE, TSB_WEBHOOK_SECRET"):
        settings.webhook({**FULL_ENV, "TSB_WEBHOOK_SERVICE": "", "TSB_WEBHOOK_SECRET": ""})
    for bad in ("9443", "host:http", "host:0", "host:70000"):
        with pytest.raises(SpecError, match="host:port"):
            settings.webhook({**FULL_ENV, "TSB_WEBHOOK_ADDRESS": bad})


# --- certificates ---------------------------------------------------------------------------

NAMES = webhook.dns_names("tsb-webhook", "tsb-system")


def test_issued_certificate_names_the_service_and_chains_to_the_ca() -> None:
    material = webhook.issue(NAMES, NOW)
    cert = x509.load_pem_x509_certificate(material.cert)
    ca = x509.load_pem_x509_certificate(material.ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [
        "tsb-webhook.tsb-system.svc", "tsb-webhook.tsb-system.svc.cluster.local"]
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert webhook.still_good(material, NAMES, NOW)
    assert webhook.Material.from_secret_data(material.secret_data()) == material


def test_a_certificate_is_renewed_when_it_is_wrong_or_ending() -> None:
    material = webhook.issue(NAMES, NOW)
    assert not webhook.still_good(material, webhook.dns_names("other", "tsb-system"), NOW)
    assert not webhook.still_good(material, NAMES, NOW + webhook.VALIDITY
                                  - webhook.RENEW_BEFORE + dt.timedelta(hours=1))
    assert not webhook.still_good(webhook.Material(b"junk", material.cert, material.key),
                                  NAMES, NOW)


def test_the_webhook_answers_over_tls() -> None:
    """A real HTTPS round trip on localhost with a certificate issued for localhost: the
    AdmissionReview shape the API server expects, and 404 for other paths."""
    material = webhook.issue(["localhost"], dt.datetime.now(dt.UTC))
    server = webhook._Server(("127.0.0.1", 0), webhook._handler(Defaults()))
    server.socket = webhook._server_context(material).wrap_socket(
        server.socket, server_side=True, do_handshake_on_connect=False)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = ssl.create_default_context(cadata=material.ca.decode())
        url = f"https://localhost:{server.server_address[1]}"
        review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                  "request": {**request("CREATE", {"schedule": "0 2 30 2 *"}),
                              "uid": "abc"}}
        reply = json.load(urllib.request.urlopen(urllib.request.Request(
            f"{url}/validate", data=json.dumps(review).encode(), method="POST",
            headers={"Content-Type": "application/json"}), context=client, timeout=10))
        assert reply["apiVersion"] == "admission.k8s.io/v1"
        assert reply["response"]["uid"] == "abc"
        assert reply["response"]["allowed"] is False
        assert "would never fire" in reply["response"]["status"]["message"]
        # A kind the webhook does not judge passes untouched.
        other = {"request": {**request("CREATE", {}), "kind": {"kind": "ConfigMap"}}}
        reply = json.load(urllib.request.urlopen(urllib.request.Request(
            f"{url}/validate", data=json.dumps(other).encode(), method="POST"),
            context=client, timeout=10))
        assert reply["response"] == {"uid": "u1", "allowed": True}
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(urllib.request.Request(
                f"{url}/other", data=b"{}", method="POST"), context=client, timeout=10)
    finally:
        server.shutdown()
