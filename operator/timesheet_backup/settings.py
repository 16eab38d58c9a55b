"""Operator configuration: one validated object, read once at startup.

Sources, later ones winning:
1. the YAML file named by `TSB_CONFIG` (the Helm chart mounts its values there), parsed into
   `OperatorConfig` with the same strict parser as the custom resources;
2. a few `TSB_*` environment variables for what differs per deployment.

The `defaults` section (`api.defaults.Defaults`) fills what a Backup leaves unset, so a
minimal Backup is `spec: {}`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from timesheet_backup.api.defaults import Defaults
from timesheet_backup.api.fields import SpecError, field, parse
from timesheet_backup.api.models import JobSpec
from timesheet_backup.api.validation import (
    RESERVED_ENV_MESSAGE,
    RESERVED_LABEL_MESSAGE,
    reserved_env,
    reserved_label,
)

DEFAULT_IMAGE = "timesheet-backup-operator:dev"


@dataclass(kw_only=True)
class OperatorConfig:
    """Everything the operator can be told."""

    image: str = field("Image of the agent Jobs (the operator's own image).",
                       default=DEFAULT_IMAGE)
    image_pull_policy: str = field("Pull policy of the agent Jobs.", default="IfNotPresent")
    namespaces: list[str] = field(
        "Namespaces to watch; empty: all (needs the cluster-wide RBAC).", default_factory=list
    )
    defaults: Defaults = field("Defaults for Backups.", default_factory=Defaults)


# Replaced by `defaults.job.ttlSecondsAfterFinished` (one source for the Jobs' TTL); still
# read, and moved there, so a configuration file written for an older operator keeps working.
LEGACY_TTL_KEY = "jobTtlSecondsAfterFinished"


ENV_OVERRIDES = {
    "TSB_IMAGE": "image",
    "TSB_IMAGE_PULL_POLICY": "imagePullPolicy",
}


def load(environ: Mapping[str, str] | None = None) -> OperatorConfig:
    """Read the configuration; a bad file or value is a startup error naming the field."""
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    path = env.get("TSB_CONFIG")
    if path:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise SpecError(f"{path}: expected a mapping at the top")
        data.update(loaded)
    for variable, key in ENV_OVERRIDES.items():
        if env.get(variable):
            data[key] = env[variable]
    if env.get("TSB_NAMESPACES"):
        data["namespaces"] = [n.strip() for n in env["TSB_NAMESPACES"].split(",") if n.strip()]
    move_legacy_ttl(data)
    config = parse(OperatorConfig, data, path="config")
    check_job_defaults(config.defaults.job)
    return config


def move_legacy_ttl(data: dict[str, Any]) -> None:
    """`jobTtlSecondsAfterFinished` (older operators) becomes defaults.job's
    ttlSecondsAfterFinished; both set is a contradiction only when they differ."""
    if LEGACY_TTL_KEY not in data:
        return
    legacy = data.pop(LEGACY_TTL_KEY)
    defaults = data.get("defaults")
    if defaults is None:
        defaults = data["defaults"] = {}
    if not isinstance(defaults, dict):
        return  # parse() reports the bad defaults
    job = defaults.get("job")
    if job is None:
        job = defaults["job"] = {}
    if not isinstance(job, dict):
        return
    current = job.setdefault("ttlSecondsAfterFinished", legacy)
    if current != legacy:
        raise SpecError(f"config.{LEGACY_TTL_KEY} ({legacy}) and "
                        f"config.defaults.job.ttlSecondsAfterFinished ({current}) differ: "
                        f"{LEGACY_TTL_KEY} is replaced by the latter, set only that")


def check_job_defaults(job: JobSpec | None) -> None:
    """What the CRDs' CEL rules refuse in an object's `job`, refused in the defaults too:
    they reach every Job without passing the API server's validation."""
    if job is None:
        return
    for entry in job.env or []:
        if reserved_env(entry.name):
            raise SpecError(f"config.defaults.job.env: {entry.name}: {RESERVED_ENV_MESSAGE}")
    for key in job.pod_labels or {}:
        if reserved_label(key):
            raise SpecError(f"config.defaults.job.podLabels: {key}: {RESERVED_LABEL_MESSAGE}")


@dataclass(frozen=True)
class LeaderElection:
    """Leader election over a Lease (see election.py), from the environment the chart sets:
    `TSB_LEADER_ELECTION` (true/false), the Lease's namespace `POD_NAMESPACE` (downward API)
    and name `TSB_LEADER_ELECTION_LEASE`, this replica's identity `POD_NAME` (else the host
    name), and `TSB_LEASE_DURATION`/`TSB_RENEW_DEADLINE`/`TSB_RETRY_PERIOD` in seconds."""

    enabled: bool
    namespace: str
    lease_name: str
    identity: str
    lease_duration: float
    renew_deadline: float
    retry_period: float


DEFAULT_LEASE_NAME = "timesheet-backup-operator"


def leader_election(environ: Mapping[str, str] | None = None,
                    enabled: bool | None = None) -> LeaderElection:
    """`enabled` (the command line) wins over TSB_LEADER_ELECTION; off by default, so a
    local `timesheet-backup operator` run needs no Lease. Raises SpecError for bad values."""
    env = os.environ if environ is None else environ
    if enabled is None:
        flag = env.get("TSB_LEADER_ELECTION", "false").strip().lower()
        if flag not in ("true", "false", "1", "0", ""):
            raise SpecError(f"TSB_LEADER_ELECTION must be true or false, not {flag!r}")
        enabled = flag in ("true", "1")
    namespace = env.get("POD_NAMESPACE", "")
    if enabled and not namespace:
        raise SpecError("leader election needs the Lease's namespace in POD_NAMESPACE")

    def seconds(variable: str, default: float) -> float:
        try:
            return float(env.get(variable) or default)
        except ValueError:
            raise SpecError(f"{variable} must be a number of seconds") from None

    return LeaderElection(
        enabled=enabled,
        namespace=namespace,
        lease_name=env.get("TSB_LEADER_ELECTION_LEASE") or DEFAULT_LEASE_NAME,
        identity=env.get("POD_NAME") or socket.gethostname(),
        lease_duration=seconds("TSB_LEASE_DURATION", 15.0),
        renew_deadline=seconds("TSB_RENEW_DEADLINE", 10.0),
        retry_period=seconds("TSB_RETRY_PERIOD", 2.0),
    )


@dataclass(frozen=True)
class WebhookSettings:
    """The validating admission webhook (webhook.py), from the environment the chart sets:
    `TSB_WEBHOOK_ADDRESS` (host:port to serve HTTPS on; empty or unset: no webhook),
    `TSB_WEBHOOK_SERVICE` (the Service the API server calls), `TSB_WEBHOOK_CONFIGURATION`
    (the ValidatingWebhookConfiguration that gets the CA), `TSB_WEBHOOK_SECRET` (where the
    certificate is kept) and `POD_NAMESPACE` (the Service's and the Secret's namespace)."""

    address: str
    namespace: str
    service: str
    configuration: str
    secret: str
    host: str = ""  # parsed from `address` once, here: "" listens on every interface
    port: int = 0


def webhook(environ: Mapping[str, str] | None = None) -> WebhookSettings | None:
    """None when no webhook is asked for; SpecError when it is, but half-configured."""
    env = os.environ if environ is None else environ
    address = env.get("TSB_WEBHOOK_ADDRESS", "").strip()
    if not address:
        return None
    values = {name: env.get(name, "").strip() for name in (
        "POD_NAMESPACE", "TSB_WEBHOOK_SERVICE", "TSB_WEBHOOK_CONFIGURATION",
        "TSB_WEBHOOK_SECRET")}
    unset = [name for name, value in values.items() if not value]
    if unset:
        raise SpecError(f"TSB_WEBHOOK_ADDRESS is set, so these must be too: {', '.join(unset)}")
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise SpecError(f"TSB_WEBHOOK_ADDRESS must be host:port, not {address!r}")
    return WebhookSettings(address=address, host=host.strip("[]"), port=int(port),
                           namespace=values["POD_NAMESPACE"],
                           service=values["TSB_WEBHOOK_SERVICE"],
                           configuration=values["TSB_WEBHOOK_CONFIGURATION"],
                           secret=values["TSB_WEBHOOK_SECRET"])
