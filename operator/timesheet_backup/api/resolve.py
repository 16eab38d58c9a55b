"""Resolve a Backup spec against the operator's defaults (pure).

Merging works on the JSON form: what the user wrote wins field by field over the operator's
defaults, then the models' own defaults fill the rest. (Merging parsed dataclasses could not
tell an explicit `noOwner: false` from an unset one.)"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from timesheet_backup.api import models
from timesheet_backup.api.defaults import Defaults
from timesheet_backup.api.fields import dump, parse

MERGED_SECTIONS = ("database", "uploads", "storage", "compression", "encryption")

# How `job` settings merge over the operator's `defaults.job` (docs/security.md, "Jobs in
# locked-down namespaces"): maps key by key, named lists entry by entry (the object's entry
# wins, the defaults' others stay), and everything else -- scalars and whole Kubernetes
# objects (resources, affinity, tolerations, podSecurityContext) -- is replaced by the
# object's value. A field-by-field merge of e.g. resources could pair a default limit with a
# larger own request: an invalid pod.
JOB_MAPS = ("nodeSelector", "podLabels", "podAnnotations")
JOB_NAMED_LISTS: dict[str, Callable[[Any], str]] = {
    "env": lambda entry: str(entry["name"]),
    "imagePullSecrets": str,
}


class ResolveError(ValueError):
    """A spec that is incomplete even with the operator's defaults; the message lists every
    missing field."""


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` wins; mappings merge recursively; lists and scalars replace."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def merge_job(defaults: models.JobSpec | None, own: models.JobSpec | None) -> models.JobSpec:
    """The Job settings of one object: its own `job` over the operator's `defaults.job`.
    Idempotent (merging the result over the same defaults again changes nothing), so a
    Backup's settings, merged once for status.resolved, can pass through `pod.agent_job`."""
    base, mine = dump(defaults) if defaults else {}, dump(own) if own else {}
    merged = {**base, **mine}
    for key in JOB_MAPS:
        if key in base and key in mine:
            merged[key] = {**base[key], **mine[key]}
    for key, name_of in JOB_NAMED_LISTS.items():
        if key in base and key in mine:
            names = {name_of(entry) for entry in mine[key]}
            merged[key] = [e for e in base[key] if name_of(e) not in names] + mine[key]
    return parse(models.JobSpec, merged, "job")


def resolve_backup(spec: Mapping[str, Any] | None, defaults: Defaults) -> models.BackupSpec:
    """The complete settings of one backup, or ResolveError naming what is missing."""
    base = {k: v for k, v in dump(defaults).items() if k in MERGED_SECTIONS}
    merged = deep_merge(base, spec or {})
    own_job = parse(models.JobSpec, merged["job"], "spec.job") if "job" in merged else None
    job = merge_job(defaults.job, own_job)
    merged.pop("job", None)
    if job != models.JobSpec():
        merged["job"] = dump(job)
    resolved = parse(models.BackupSpec, merged)
    missing = missing_fields(resolved)
    if missing:
        raise ResolveError(
            "incomplete backup settings, set them in the Backup or the operator defaults: "
            + ", ".join(missing)
        )
    return resolved


def missing_fields(spec: models.BackupSpec) -> list[str]:
    missing: list[str] = []
    if "database" in spec.components:
        db = spec.database or models.DatabaseSpec()
        missing += [f"database.{n}" for n, v in
                    (("host", db.host), ("name", db.name), ("user", db.user)) if v is None]
        # Certificate authentication (pg_hba `cert`) needs no password.
        if db.password_secret_ref is None and db.client_cert_secret_ref is None:
            missing.append("database.passwordSecretRef (or clientCertSecretRef)")
    if "uploads" in spec.components and (spec.uploads is None or not spec.uploads.claim_name):
        missing.append("uploads.claimName")
    if spec.storage is None or not spec.storage.bucket:
        missing.append("storage.bucket")
    return missing
