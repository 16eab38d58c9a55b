"""Runs the Argo CD health scripts in `argocd/` the way Argo CD does: a fresh Lua 5.1 state
(Argo CD embeds gopher-lua, a Lua 5.1), the object as the global `obj` (a table converted
from the resource's JSON: maps become tables, arrays 1-based tables, null absent), and the
table the script returns read as `{status, message}`."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any

import yaml
from lupa import lua51

REPO_ROOT = Path(__file__).resolve().parents[2]
GROUP = "backup.northstar.io"
CUSTOMIZATIONS = REPO_ROOT / "argocd" / "resource_customizations" / GROUP
KINDS = ("Backup", "BackupSchedule", "Restore")


class _KubeYamlLoader(yaml.SafeLoader):
    """YAML as Kubernetes reads it: timestamps stay strings (JSON has no time type)."""


_KubeYamlLoader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()
}


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_KubeYamlLoader)  # a SafeLoader


def load_yaml(path: Path) -> Any:
    return parse_yaml(path.read_text())


def script(kind: str) -> str:
    return (CUSTOMIZATIONS / kind / "health.lua").read_text()


def _to_lua(runtime: Any, value: Any) -> Any:
    if isinstance(value, Mapping):
        table = runtime.table()
        for key, item in value.items():
            if item is not None:
                table[key] = _to_lua(runtime, item)
        return table
    if isinstance(value, list | tuple):
        table = runtime.table()
        for index, item in enumerate(value, start=1):
            table[index] = _to_lua(runtime, item)
        return table
    if isinstance(value, datetime | date):
        raise TypeError(f"{value!r}: load YAML with load_yaml (timestamps stay strings)")
    return value


def health(kind: str, obj: Mapping[str, Any], source: str | None = None) -> dict[str, str]:
    """`{status, message}` of `obj` by the kind's health.lua (or `source`)."""
    runtime = lua51.LuaRuntime(unpack_returned_tuples=False, register_eval=False,
                               register_builtins=False)
    runtime.globals().obj = _to_lua(runtime, obj)
    result = runtime.execute(source if source is not None else script(kind))
    if result is None:
        raise AssertionError(f"{kind} health.lua returned nothing")
    status, message = result["status"], result["message"]
    if status not in ("Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"):
        raise AssertionError(f"{kind} health.lua returned status {status!r}")
    return {"status": str(status), "message": "" if message is None else str(message)}
