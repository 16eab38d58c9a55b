"""The three CustomResourceDefinitions, generated from the models.

`python -m timesheet_backup.api.crds DIR` (or `make crds`) writes them to `crds/`; a unit test
fails when the committed files differ from what this module generates."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from timesheet_backup import constants as c
from timesheet_backup.api import models
from timesheet_backup.api.fields import schema_for

CATEGORY = "timesheet-backup"

IMMUTABLE_SPEC = {
    "rule": "self == oldSelf",
    "message": "spec is immutable: create a new object instead",
}


def _column(name: str, path: str, type_: str = "string", priority: int = 0,
            description: str = "") -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": type_, "jsonPath": path}
    if priority:
        column["priority"] = priority
    if description:
        column["description"] = description
    return column


AGE = _column("Age", ".metadata.creationTimestamp", "date")


@dataclass(frozen=True)
class CrdDefinition:
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    spec: type[Any]
    status: type[Any]
    immutable: bool
    columns: tuple[dict[str, Any], ...]
    description: str


DEFINITIONS = (
    CrdDefinition(
        kind=c.KIND_BACKUP,
        plural=c.PLURAL_BACKUP,
        singular="backup",
        short_names=("tsbackup", "tsb"),
        spec=models.BackupSpec,
        status=models.BackupStatus,
        immutable=True,
        columns=(
            _column("Phase", ".status.phase"),
            _column("Components", ".status.components"),
            _column("Size", ".status.size"),
            _column("Schedule", ".status.schedule", priority=1),
            _column("Completed", ".status.completionTime", "date", priority=1),
            _column("Verified", ".status.verification.verifiedTime", "date", priority=1),
            AGE,
            _column("Message", ".status.message", priority=1),
        ),
        description="A backup of the Northstar Timesheet database and uploads to S3.",
    ),
    CrdDefinition(
        kind=c.KIND_SCHEDULE,
        plural=c.PLURAL_SCHEDULE,
        singular="backupschedule",
        short_names=("tsschedule", "tsbs"),
        spec=models.BackupScheduleSpec,
        status=models.BackupScheduleStatus,
        immutable=False,
        columns=(
            _column("Schedule", ".spec.schedule"),
            _column("Suspend", ".spec.suspend", "boolean"),
            _column("Ready", '.status.conditions[?(@.type=="Ready")].status'),
            _column("Last Success", ".status.lastSuccessfulTime", "date"),
            _column("Next", ".status.nextScheduleTime", priority=1),
            _column("Last Backup", ".status.lastBackup", priority=1),
            AGE,
        ),
        description="Backups on a cron schedule, with retention and automated restore tests.",
    ),
    CrdDefinition(
        kind=c.KIND_RESTORE,
        plural=c.PLURAL_RESTORE,
        singular="restore",
        short_names=("tsrestore", "tsr"),
        spec=models.RestoreSpec,
        status=models.RestoreStatus,
        immutable=True,
        columns=(
            _column("Phase", ".status.phase"),
            _column("Backup", ".spec.backupName"),
            _column("Step", ".status.currentStep"),
            AGE,
            _column("Message", ".status.message", priority=1),
        ),
        description="Restores a backup: quiesces the app, restores, runs hooks, verifies.",
    ),
)


def crd(definition: CrdDefinition) -> dict[str, Any]:
    spec_schema = schema_for(definition.spec)
    if definition.immutable:
        rules = spec_schema.setdefault("x-kubernetes-validations", [])
        rules.insert(0, dict(IMMUTABLE_SPEC))
    schema = {
        "type": "object",
        "description": definition.description,
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": schema_for(definition.status),
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{definition.plural}.{c.GROUP}",
            "labels": {"app.kubernetes.io/part-of": c.MANAGED_BY},
            # Uninstalling the chart must never delete the CRDs: that would delete every
            # Backup, Restore and BackupSchedule with them (and, through the Backups'
            # deletion policy, the objects in the bucket). Helm reads the first annotation;
            # Argo CD the second, when an Application that synced crds/ is deleted.
            "annotations": {"helm.sh/resource-policy": "keep",
                            "argocd.argoproj.io/sync-options": "Prune=false,Delete=false"},
        },
        "spec": {
            "group": c.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": definition.kind,
                "listKind": f"{definition.kind}List",
                "plural": definition.plural,
                "singular": definition.singular,
                "shortNames": list(definition.short_names),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": c.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": list(definition.columns),
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def render(definition: CrdDefinition) -> str:
    header = (
        "# Generated by `make crds` from operator/timesheet_backup/api/models.py; do not edit.\n"
    )
    return header + yaml.safe_dump(crd(definition), sort_keys=False, width=100)


def file_name(definition: CrdDefinition) -> str:
    return f"{c.GROUP}_{definition.plural}.yaml"


def write_all(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for definition in DEFINITIONS:
        path = directory / file_name(definition)
        path.write_text(render(definition))
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "crds")):
        print(p)
