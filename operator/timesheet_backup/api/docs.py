"""docs/api.md, generated from the same models as the CRDs (`make crds` writes both), so the
reference lists every field with its type, default and validation and cannot go stale."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, get_type_hints

from timesheet_backup.api import crds
from timesheet_backup.api.fields import _schema_for_type, _unwrap_optional, json_name

INTRO = """# API reference: backup.northstar.io/v1alpha1

Generated from `operator/timesheet_backup/api/models.py` by `make crds`; do not edit.
Defaults are applied by the operator (and recorded in `status.resolved`), not written into
your objects, so GitOps tools see no drift. Validation happens in the API server at
`kubectl apply` time (OpenAPI schema and CEL rules); what only the operator can check
(Secrets, the bucket, time zone names) ends in a `Failed` phase with a condition and an Event.
"""


def _type_name(tp: Any) -> str:
    tp, _ = _unwrap_optional(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return f"[{tp.__name__}](#{tp.__name__.lower()})"
    schema = _schema_for_type(tp)
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if schema.get("type") == "array":
        (item,) = tp.__args__
        return f"list of {_type_name(item)}"
    if schema.get("type") == "object":
        return "map of string"
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return "Kubernetes object"
    return str(schema.get("type"))


def _rules(f: dataclasses.Field[Any]) -> str:
    openapi = f.metadata.get("openapi", {})
    parts = []
    for key in ("minimum", "maximum", "minItems", "maxItems", "maxLength"):
        if key in openapi:
            parts.append(f"{key} {openapi[key]}")
    if "pattern" in openapi:
        parts.append(f"pattern `{openapi['pattern']}`")
    if "items_pattern" in openapi:
        parts.append(f"items match `{openapi['items_pattern']}`")
    if "values_pattern" in openapi:
        parts.append(f"values match `{openapi['values_pattern']}`")
    for rule in openapi.get("x-kubernetes-validations", []):
        parts.append(rule["message"])
    return "; ".join(parts)


def _default(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING and f.default is not None:
        return f"`{f.default}`"
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        if value and not dataclasses.is_dataclass(value):
            return f"`{value}`"
    return ""


def _section(cls: type[Any], seen: set[type[Any]], out: list[str]) -> None:
    if cls in seen:
        return
    seen.add(cls)
    hints = get_type_hints(cls)
    out.append(f"\n### {cls.__name__}\n")
    out.append(" ".join((cls.__doc__ or "").split()) + "\n")
    for rule in getattr(cls, "__cel__", ()):
        out.append(f"\n- Rule: {rule['message']}")
    out.append("\n| field | type | default | validation | description |")
    out.append("| --- | --- | --- | --- | --- |")
    nested: list[type[Any]] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner, _ = _unwrap_optional(tp)
        for candidate in (inner, *getattr(inner, "__args__", ())):
            if dataclasses.is_dataclass(candidate):
                nested.append(candidate)  # type: ignore[arg-type]
        rules = _rules(f).replace("|", "\\|")
        out.append(f"| `{json_name(f)}` | {_type_name(tp)} | {_default(f)} | {rules} | "
                   f"{f.metadata.get('description', '')} |")
    for child in nested:
        _section(child, seen, out)


def render() -> str:
    out = [INTRO]
    seen: set[type[Any]] = set()
    for definition in crds.DEFINITIONS:
        out.append(f"\n## {definition.kind}\n")
        out.append(f"{definition.description} Short names: "
                   f"{', '.join(definition.short_names)}; category `{crds.CATEGORY}`."
                   + (" The spec is immutable once created." if definition.immutable else ""))
        _section(definition.spec, seen, out)
        _section(definition.status, seen, out)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    Path(sys.argv[1] if len(sys.argv) > 1 else "docs/api.md").write_text(render())
