"""Resolve a Backup spec against the operator's defaults (pure).

Merging works on the JSON form: what the user wrote wins field by field over the operator's
defaults, then the models' own defaults fill the rest. (Merging parsed dataclasses could not
tell an explicit `noOwner: false` from an unset one.)"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from timesheet_backup.api import models
from timesheet_backup.api.defaults import Defaults
from timesheet_backup.api.fields import dump, parse

MERGED_SECTIONS = ("database", "uploads", "storage", "compression", "encryption", "job")


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


def resolve_backup(spec: Mapping[str, Any] | None, defaults: Defaults) -> models.BackupSpec:
    """The complete settings of one backup, or ResolveError naming what is missing."""
    base = {k: v for k, v in dump(defaults).items() if k in MERGED_SECTIONS}
    resolved = parse(models.BackupSpec, deep_merge(base, spec or {}))
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
                    (("host", db.host), ("name", db.name), ("user", db.user),
                     ("passwordSecretRef", db.password_secret_ref)) if v is None]
    if "uploads" in spec.components and (spec.uploads is None or not spec.uploads.claim_name):
        missing.append("uploads.claimName")
    if spec.storage is None or not spec.storage.bucket:
        missing.append("storage.bucket")
    return missing
