"""The backups in a bucket, read from their manifests alone (for a cluster that has never
seen the Backup objects, e.g. disaster recovery)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from timesheet_backup.constants import MANIFEST_NAME
from timesheet_backup.errors import AgentError
from timesheet_backup.status import human_size
from timesheet_backup.storage import layout
from timesheet_backup.storage import manifest as mf
from timesheet_backup.storage.s3 import S3Store


@dataclass(frozen=True)
class Entry:
    key: str
    manifest: mf.Manifest | None
    error: str | None = None


def list_backups(store: S3Store, prefix: str, namespace: str | None = None) -> list[Entry]:
    """Every `manifest.json` under `prefix` (optionally one namespace), newest first;
    unreadable manifests are listed with their error instead of stopping the listing."""
    base = layout.listing_prefix(prefix)
    if namespace:
        base += namespace.strip("/") + "/"
    entries: list[Entry] = []
    for info in store.list_objects(base):
        if not info.key.endswith("/" + MANIFEST_NAME):
            continue
        try:
            manifest = mf.read(store, info.key)
        except AgentError as exc:
            entries.append(Entry(info.key, None, str(exc)))
            continue
        entries.append(Entry(info.key, manifest))
    return sort_entries(entries)


def sort_entries(entries: Sequence[Entry]) -> list[Entry]:
    def order(entry: Entry) -> tuple[int, float, str]:
        if entry.manifest is None:
            return (1, 0.0, entry.key)
        return (0, -entry.manifest.completion_time.timestamp(), entry.key)

    return sorted(entries, key=order)


def to_rows(entries: Sequence[Entry]) -> list[list[str]]:
    rows = [["NAMESPACE", "NAME", "COMPLETED", "COMPONENTS", "SIZE", "ENCRYPTED", "MANIFEST"]]
    for entry in entries:
        m = entry.manifest
        if m is None:
            rows.append(["?", "?", "-", "-", "-", "-", f"{entry.key} (invalid: {entry.error})"])
            continue
        rows.append(
            [
                m.namespace,
                m.name,
                mf.format_time(m.completion_time),
                ",".join(m.components),
                human_size(m.size_bytes, sep=""),  # one word per column: awk, cut
                "yes" if any(a.encrypted for a in m.artifacts) else "no",
                entry.key,
            ]
        )
    return rows


def format_table(entries: Sequence[Entry]) -> str:
    rows = to_rows(entries)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]))
    return "\n".join(lines)


def to_json(entries: Sequence[Entry]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for entry in entries:
        if entry.manifest is None:
            out.append({"manifestKey": entry.key, "error": entry.error})
        else:
            out.append({"manifestKey": entry.key, "manifest": mf.to_dict(entry.manifest)})
    return out
