"""What a BackupSchedule creates (pure): the Backup of a run and the Restore of a restore
test, built from the schedule as handlers/schedules.py observed it."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from timesheet_backup import constants as c
from timesheet_backup.api import models
from timesheet_backup.api.fields import dump
from timesheet_backup.jobs.pod import owner_reference

# Argo CD's tracking label (its default `application.instanceLabelKey`) and annotations. A
# Backup created by a schedule must not carry them (e.g. copied into the template from a
# chart's common labels): Argo CD would count it as part of the app, report it as extraneous
# and, with auto-prune, delete it -- and through its deletion policy its objects in the bucket.
ARGOCD_INSTANCE_LABEL = "app.kubernetes.io/instance"
ARGOCD_ANNOTATION_PREFIX = "argocd.argoproj.io/"


def _labels(schedule: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {**(extra or {}), c.LABEL_MANAGED_BY: c.MANAGED_BY, c.LABEL_SCHEDULE: schedule}


def untracked_metadata(labels: Mapping[str, str] | None,
                       annotations: Mapping[str, str] | None
                       ) -> tuple[dict[str, str], dict[str, str]]:
    """Template labels and annotations without Argo CD's tracking keys."""
    return ({k: v for k, v in (labels or {}).items() if k != ARGOCD_INSTANCE_LABEL},
            {k: v for k, v in (annotations or {}).items()
             if not k.startswith(ARGOCD_ANNOTATION_PREFIX)})


def backup_body(schedule: Mapping[str, Any], spec: models.BackupScheduleSpec,
                name: str) -> dict[str, Any]:
    meta = schedule["metadata"]
    template = spec.template
    tmeta = template.metadata or models.TemplateMetadata()
    labels, annotations = untracked_metadata(tmeta.labels, tmeta.annotations)
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": meta["namespace"],
        "labels": _labels(meta["name"], labels),
    }
    if annotations:
        metadata["annotations"] = annotations
    if spec.backup_owner_reference == "schedule":
        ref = owner_reference(schedule)
        ref["controller"] = False
        metadata["ownerReferences"] = [ref]
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND_BACKUP,
        "metadata": metadata,
        "spec": copy.deepcopy((schedule.get("spec") or {}).get("template", {}).get("spec", {})),
    }


def verification_body(schedule: Mapping[str, Any], verification: models.VerificationSpec,
                      backup: Mapping[str, Any], run_at_name: str) -> dict[str, Any]:
    """The Restore of a restore test: `backup` into a scratch database, checked, dropped.
    The decryption key goes along: an encrypted backup cannot be tested without it."""
    meta = schedule["metadata"]
    resolved_db = ((backup.get("status") or {}).get("resolved") or {}).get("database") or {}
    scratch = verification.database or f"{resolved_db.get('name', 'timesheet')}_verify"[:63]
    spec: dict[str, Any] = {
        "backupName": backup["metadata"]["name"],
        "components": ["database"],
        "database": {"name": scratch, "createDatabase": True, "clean": True,
                     "dropAfter": True},
        "verify": {"sqlChecks": list(verification.checks)},
    }
    if verification.decryption:
        spec["decryption"] = dump(verification.decryption)
    # The restore test's Jobs run where the backups' do: the same pull secrets, proxies and
    # identity, unless the verification names its own.
    template_job = (((schedule.get("spec") or {}).get("template") or {}).get("spec")
                    or {}).get("job")
    job = dump(verification.job) if verification.job else template_job
    if job:
        spec["job"] = copy.deepcopy(job)
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND_RESTORE,
        "metadata": {
            "name": run_at_name,
            "namespace": meta["namespace"],
            "labels": {**_labels(meta["name"]), c.LABEL_VERIFICATION: "true"},
            "ownerReferences": [owner_reference(schedule)],
        },
        "spec": spec,
    }
