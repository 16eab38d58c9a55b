"""The one place that shapes status (pure).

Handlers never write status fields by hand: they call `transition(...)`, which returns the
status patch for a phase change with matching conditions, and put it into kopf's patch.
(kopf would store handler return values under `status.<handler>`, which the strict schema
prunes silently, so nothing is returned from handlers.)

Conditions (a small fixed set, as `metav1.Condition`):
- `Ready`: True when the object did what it is for (Backup/Restore Succeeded, schedule active);
- `Progressing`: True while work is under way;
- `Failed`: True when it ended in failure; the reason and message say why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

READY = "Ready"
PROGRESSING = "Progressing"
FAILED = "Failed"

# phase -> (Ready, Progressing, Failed)
_PHASE_CONDITIONS: dict[str, tuple[str, str, str]] = {
    "Pending": ("False", "True", "False"),
    "Waiting": ("False", "True", "False"),
    "Running": ("False", "True", "False"),
    "Deleting": ("False", "True", "False"),
    "Succeeded": ("True", "False", "False"),
    "Failed": ("False", "False", "True"),
}
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


def timestamp(now: datetime) -> str:
    """RFC 3339 in UTC with a Z, as Kubernetes writes times."""
    return now.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def merge_conditions(
    existing: Sequence[Mapping[str, Any]] | None,
    updates: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Replace conditions by type, keeping `lastTransitionTime` when the status did not
    change (so the time says when it last flipped, not when we last looked)."""
    by_type = {c["type"]: dict(c) for c in existing or []}
    for update in updates:
        old = by_type.get(update["type"])
        new = dict(update)
        if old and old.get("status") == new["status"]:
            new["lastTransitionTime"] = old.get("lastTransitionTime", new["lastTransitionTime"])
        by_type[new["type"]] = new
    order = [READY, PROGRESSING, FAILED]
    return sorted(by_type.values(), key=lambda c: (order.index(c["type"])
                                                   if c["type"] in order else 99, c["type"]))


def condition(type_: str, status: str, reason: str, message: str, now: datetime,
              generation: int | None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": timestamp(now),
    }
    if generation is not None:
        result["observedGeneration"] = generation
    return result


def transition(
    body: Mapping[str, Any],
    phase: str,
    reason: str,
    message: str,
    now: datetime,
    **fields: Any,
) -> dict[str, Any]:
    """The status patch for entering `phase`: phase, message, observedGeneration, the three
    conditions and any extra status fields given (None values are left out)."""
    generation = body.get("metadata", {}).get("generation")
    ready, progressing, failed = _PHASE_CONDITIONS[phase]
    current = body.get("status") or {}
    updates = [
        condition(READY, ready, reason, message, now, generation),
        condition(PROGRESSING, progressing, reason, message, now, generation),
        condition(FAILED, failed, reason, message, now, generation),
    ]
    patch: dict[str, Any] = {
        "phase": phase,
        "message": message,
        "observedGeneration": generation,
        "conditions": merge_conditions(current.get("conditions"), updates),
    }
    if phase in TERMINAL_PHASES and not current.get("completionTime"):
        patch["completionTime"] = timestamp(now)
    patch.update({k: v for k, v in fields.items() if v is not None})
    return patch


def human_size(size: int, sep: str = " ") -> str:
    """`1536` -> `1.5 KiB` (binary units), the one size formatter: the Backup printer column
    and Events use the default; the catalog table passes `sep=""` (`1.5KiB`) so each of
    its whitespace-separated columns stays one word."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)}{sep}{unit}" if unit == "B" else f"{value:.1f}{sep}{unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
