"""Container environment as the kubelet builds it, and ``$(VAR)`` expansion.

Order (kubelet's makeEnvironmentVariables): service link variables, then
``envFrom`` sources in order, then ``env`` entries in order, each ``value``
expanded against what is defined so far. The image's own ENV sits underneath
all of that, as the runtime merges it.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

Obj = dict[str, Any]


class ConfigError(Exception):
    """The container cannot be configured: the kubelet's CreateContainerConfigError."""


def expand(text: str, mapping: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion (third_party/forked/golang/expansion).

    ``$(VAR)`` becomes the value when VAR is defined and stays literal otherwise;
    ``$$`` is an escaped ``$``; any other ``$`` is kept as is.
    """
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    n = len(text)
    while cursor < n:
        if text[cursor] == "$" and cursor + 1 < n:
            out.append(text[checkpoint:cursor])
            nxt = text[cursor + 1]
            if nxt == "$":
                out.append("$")
                advance = 1
            elif nxt == "(":
                close = text.find(")", cursor + 2)
                if close == -1:
                    out.append("$(")
                    advance = 1
                else:
                    name = text[cursor + 2:close]
                    out.append(mapping.get(name, f"$({name})"))
                    advance = close - cursor
            else:
                out.append("$" + nxt)
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


_SUFFIXES = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}


def parse_quantity(value: str | int | float) -> Decimal:
    """A resource.Quantity as a Decimal (enough for downward API resource fields)."""
    if isinstance(value, int | float):
        return Decimal(str(value))
    match = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)", value.strip())
    if not match or match.group(2) not in _SUFFIXES:
        raise ValueError(f"invalid quantity {value!r}")
    return Decimal(match.group(1)) * Decimal(_SUFFIXES[match.group(2)])


def resource_field(pod: Obj, container: Obj, ref: Obj, allocatable: Mapping[str, str]) -> str:
    """Value of a resourceFieldRef: limits fall back to node allocatable, like the kubelet."""
    resource = ref["resource"]
    kind, _, name = resource.partition(".")
    resources = container.get("resources") or {}
    raw = (resources.get(kind) or {}).get(name)
    if raw is None and kind == "requests" and name in ("cpu", "memory"):
        raw = (resources.get("limits") or {}).get(name)
    if raw is None:
        raw = allocatable.get(name, "0") if kind == "limits" else "0"
    divisor = parse_quantity(ref.get("divisor") or "1")
    if divisor == 0:
        divisor = Decimal(1)
    return str(math.ceil(parse_quantity(raw) / divisor))


def field_ref(pod: Obj, path: str) -> str:
    meta = pod.get("metadata", {})
    spec = pod.get("spec", {})
    status = pod.get("status", {})
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.*)'\]", path)
    if match:
        return (meta.get(match.group(1)) or {}).get(match.group(2), "")
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": status.get("hostIP", "127.0.0.1"),
        "status.hostIPs": ",".join(i["ip"] for i in status.get("hostIPs", [])) or "127.0.0.1",
        "status.podIP": status.get("podIP", "127.0.0.1"),
        "status.podIPs": ",".join(i["ip"] for i in status.get("podIPs", [])) or "127.0.0.1",
    }
    if path in simple:
        return str(simple[path])
    if path in ("metadata.labels", "metadata.annotations"):
        return format_map(meta.get(path.split(".")[1]) or {})
    raise ConfigError(f"unsupported fieldRef fieldPath {path!r}")


def format_map(values: Mapping[str, str]) -> str:
    """The downward API's labels/annotations file format."""
    return "\n".join(f'{k}="{_escape(v)}"' for k, v in sorted(values.items()))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


Fetch = Callable[[str, str], Obj | None]  # (kind: "secrets"/"configmaps", name) -> object


def object_data(kind: str, obj: Obj) -> dict[str, bytes]:
    """Decoded key -> bytes of a Secret or ConfigMap."""
    out: dict[str, bytes] = {}
    if kind == "secrets":
        for key, value in (obj.get("data") or {}).items():
            out[key] = base64.b64decode(value)
        for key, value in (obj.get("stringData") or {}).items():
            out[key] = value.encode()
    else:
        for key, value in (obj.get("data") or {}).items():
            out[key] = value.encode()
        for key, value in (obj.get("binaryData") or {}).items():
            out[key] = base64.b64decode(value)
    return out


_KIND_WORD = {"secrets": "secret", "configmaps": "configmap"}
_KIND_TITLE = {"secrets": "Secret", "configmaps": "ConfigMap"}


def build_env(
    pod: Obj,
    container: Obj,
    base: Mapping[str, str],
    fetch: Fetch,
    allocatable: Mapping[str, str],
) -> dict[str, str]:
    """The container's variables (without the image ENV), or ConfigError."""
    ns = pod["metadata"]["namespace"]
    env: dict[str, str] = dict(base)
    cache: dict[tuple[str, str], Obj | None] = {}

    def get(kind: str, name: str) -> Obj | None:
        if (kind, name) not in cache:
            cache[(kind, name)] = fetch(kind, name)
        return cache[(kind, name)]

    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, field in (("configmaps", "configMapRef"), ("secrets", "secretRef")):
            ref = source.get(field)
            if ref is None:
                continue
            obj = get(kind, ref["name"])
            if obj is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'{_KIND_WORD[kind]} "{ref["name"]}" not found')
            for key, value in object_data(kind, obj).items():
                env[prefix + key] = value.decode(errors="replace")

    for item in container.get("env") or []:
        name = item["name"]
        if "valueFrom" not in item:
            env[name] = expand(item.get("value", ""), env)
            continue
        source = item["valueFrom"]
        if "fieldRef" in source:
            env[name] = field_ref(pod, source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            target = container
            wanted = source["resourceFieldRef"].get("containerName")
            if wanted:
                all_containers = (pod["spec"].get("containers", [])
                                  + pod["spec"].get("initContainers", []))
                target = next((c for c in all_containers if c["name"] == wanted), container)
            env[name] = resource_field(pod, target, source["resourceFieldRef"], allocatable)
        else:
            for kind, field in (("secrets", "secretKeyRef"), ("configmaps", "configMapKeyRef")):
                ref = source.get(field)
                if ref is None:
                    continue
                obj = get(kind, ref["name"])
                optional = bool(ref.get("optional"))
                if obj is None:
                    if optional:
                        break
                    raise ConfigError(f'{_KIND_WORD[kind]} "{ref["name"]}" not found')
                data = object_data(kind, obj)
                if ref["key"] not in data:
                    if optional:
                        break
                    raise ConfigError(
                        f"couldn't find key {ref['key']} in {_KIND_TITLE[kind]} "
                        f"{ns}/{ref['name']}"
                    )
                env[name] = data[ref["key"]].decode(errors="replace")
                break
    return env
