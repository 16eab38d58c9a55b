"""One source of truth for the API: dataclasses whose fields carry their OpenAPI facts.

The CRD schemas are generated from these classes (`schema_for`) and custom resources are parsed
into them (`parse`), so the models and `crds/` cannot disagree on a field: a unit test fails
when the committed CRDs are stale.

Conventions:
- Python names are snake_case; the JSON name is the camelCase form unless `json=` overrides it.
- `X | None` fields are optional; every other field without a default is required.
- Defaults live in the dataclasses, never in the CRD schema: API-server defaulting would
  rewrite users' specs and show as drift in GitOps tools. The resolved values go to status.
- `Any` means a Kubernetes type passed through unchanged (resources, affinity, ...):
  the schema preserves unknown fields there and the API server validates it when the Job is
  created.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

T = TypeVar("T")

# The API server estimates the cost of every CEL rule from the schema's bounds; unbounded
# strings and lists make rules that use them too expensive to be accepted.
DEFAULT_MAX_LENGTH = 253
DEFAULT_MAX_ITEMS = 64


class SpecError(ValueError):
    """A custom resource does not fit its model; the message names the field."""


def field(
    description: str,
    *,
    default: Any = dataclasses.MISSING,
    default_factory: Any = dataclasses.MISSING,
    json: Any = None,  # typed Any so `**{"x-kubernetes-...": ...}` splats type-check
    **openapi: Any,
) -> Any:
    """A dataclass field with its description and extra OpenAPI keywords
    (minimum, maximum, pattern, maxLength, maxItems, x-kubernetes-validations, ...);
    `items_<keyword>` applies to a list's items, `values_<keyword>` to a map's values."""
    metadata = {"description": description, "json": json, "openapi": openapi}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def json_name(f: dataclasses.Field[Any]) -> str:
    explicit = f.metadata.get("json")
    if explicit:
        return str(explicit)
    head, *rest = f.name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
        raise TypeError(f"unsupported union {tp}")
    return tp, False


def _is_required(f: dataclasses.Field[Any], tp: Any) -> bool:
    _, optional = _unwrap_optional(tp)
    no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    return no_default and not optional


def _schema_for_type(tp: Any) -> dict[str, Any]:
    tp, _ = _unwrap_optional(tp)
    origin = get_origin(tp)
    if tp is Any:
        return {"x-kubernetes-preserve-unknown-fields": True}
    if tp is str:
        return {"type": "string", "maxLength": DEFAULT_MAX_LENGTH}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer", "format": "int64"}
    if origin is Literal:
        return {"type": "string", "enum": list(get_args(tp))}
    if origin is list:
        (item,) = get_args(tp)
        return {"type": "array", "items": _schema_for_type(item), "maxItems": DEFAULT_MAX_ITEMS}
    if origin is dict:
        key, value = get_args(tp)
        if key is not str:
            raise TypeError(f"map keys must be strings: {tp}")
        return {
            "type": "object",
            "additionalProperties": _schema_for_type(value),
            "maxProperties": DEFAULT_MAX_ITEMS,
        }
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return schema_for(tp)
    raise TypeError(f"no schema for {tp!r}")


def schema_for(cls: type[Any]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a model class."""
    hints = get_type_hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        schema = _schema_for_type(hints[f.name])
        openapi = dict(f.metadata.get("openapi", {}))
        # Item-level keywords belong to the array's items, not the array; value-level ones
        # to a map's values.
        item_keys = {k: openapi.pop(k) for k in list(openapi) if k.startswith("items_")}
        for key, value in item_keys.items():
            schema["items"][key.removeprefix("items_")] = value
        value_keys = {k: openapi.pop(k) for k in list(openapi) if k.startswith("values_")}
        for key, value in value_keys.items():
            schema["additionalProperties"][key.removeprefix("values_")] = value
        schema.update(openapi)
        schema["description"] = f.metadata.get("description", "")
        name = json_name(f)
        properties[name] = schema
        if _is_required(f, hints[f.name]):
            required.append(name)
    result: dict[str, Any] = {"type": "object", "properties": properties}
    doc = (cls.__doc__ or "").strip()
    if doc:
        result["description"] = " ".join(doc.split())
    if required:
        result["required"] = required
    rules = getattr(cls, "__cel__", None)
    if rules:
        result["x-kubernetes-validations"] = [dict(rule) for rule in rules]
    return result


def _parse_value(tp: Any, value: Any, path: str) -> Any:
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise SpecError(f"{path}: a value is required")
    origin = get_origin(tp)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise SpecError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise SpecError(f"{path}: expected a string, got {value!r}")
        return value
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise SpecError(f"{path}: {value!r} is not one of {', '.join(map(str, allowed))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise SpecError(f"{path}: expected a list")
        (item,) = get_args(tp)
        return [_parse_value(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise SpecError(f"{path}: expected a mapping")
        _, vt = get_args(tp)
        return {str(k): _parse_value(vt, v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return parse(tp, value, path)
    raise TypeError(f"cannot parse {tp!r}")


def parse(cls: type[T], data: Any, path: str = "spec") -> T:
    """Build a model from a custom resource's dict, refusing unknown fields and wrong types.

    The API server has already validated the schema; this repeats the structural part so pure
    code (and objects read from a bucket or written by hand) get the same guarantees."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise SpecError(f"{path}: expected a mapping")
    hints = get_type_hints(cls)
    fields = {json_name(f): f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SpecError(f"{path}: unknown field(s) {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            kwargs[f.name] = _parse_value(hints[f.name], data[name], f"{path}.{name}")
        elif _is_required(f, hints[f.name]):
            raise SpecError(f"{path}.{name}: a value is required")
    return cls(**kwargs)


def dump(obj: Any) -> Any:
    """The JSON form of a model: camelCase keys, `None` fields left out."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value is not None:
                out[json_name(f)] = dump(value)
        return out
    if isinstance(obj, list):
        return [dump(v) for v in obj]
    if isinstance(obj, dict):
        return {k: dump(v) for k, v in obj.items()}
    return obj
