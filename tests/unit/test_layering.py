"""The package's layering, from the imports each module runs (read with ast, nothing imported).

- The pure core (models, Job builders, cron and retention, decisions, status, errors, ...)
  reaches no Kubernetes or kopf, no cloud or database client, no subprocess and no handler,
  agent or cluster client: not directly, not through another module, not in a function.
- storage does not reach the agent (the errors both raise live in timesheet_backup.errors).
- The agent (what Job pods run, with no ServiceAccount token) reaches no handler, kopf or
  Kubernetes client.
- The handlers do not import the agent: what they share with it is in the core and storage.
- The act layer (actions: Kubernetes and S3 calls, status writes, the database lock) runs
  what the decisions decide; handlers import it, it imports no handler and no agent. The
  decisions (part of the core) import neither.
- The kubectl plugin (plugin_cli; its pure part, plugin, is core) reaches neither the
  operator's machinery nor the agent.

Imports under `if TYPE_CHECKING:` are left out: they never run. Every top-level module is
placed in a layer, so a new one cannot stay outside the rules."""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = "timesheet_backup"
ROOT = Path(__file__).resolve().parents[2] / "operator" / PACKAGE

# Each top-level module or subpackage of timesheet_backup, by layer.
LAYERS: dict[str, frozenset[str]] = {
    # Plain data in, plain data out. settings is here too: it reads its file and environment
    # only when load() is called, at startup, and imports no client.
    "core": frozenset({"api", "constants", "decisions", "errors", "jobs", "leader", "metrics",
                       "plugin", "schedule", "settings", "status"}),
    "storage": frozenset({"storage"}),  # S3 (boto3), manifests, key layout
    "agent": frozenset({"agent"}),  # inside Job pods: pg_dump, tar, streams, restore
    "cluster": frozenset({"handlers", "actions", "kube", "election", "operator_cli",
                          "crds_cli", "webhook", "plugin_cli"}),
    "entry": frozenset({"__init__", "__main__", "cli"}),  # dispatches to the others
}

CLUSTER_CLIENTS = ("kopf", "kubernetes", "timesheet_backup.handlers", "timesheet_backup.actions",
                   "timesheet_backup.kube", "timesheet_backup.election",
                   "timesheet_backup.operator_cli", "timesheet_backup.plugin_cli")
RULES: dict[str, tuple[str, ...]] = {
    "core": (*CLUSTER_CLIENTS, "timesheet_backup.agent", "boto3", "botocore", "psycopg",
             "subprocess"),
    "storage": (*CLUSTER_CLIENTS, "timesheet_backup.agent"),
    "agent": CLUSTER_CLIENTS,
    "handlers": ("timesheet_backup.agent",),  # a part of the cluster layer
    # The act layer executes decisions (with decisions, kube, storage, jobs); it never calls
    # back into the kopf entry points that call it.
    "actions": ("timesheet_backup.agent", "timesheet_backup.handlers"),
    # The kubectl plugin acts as the user, with the user's kubeconfig: none of the operator's
    # machinery (kopf, its handlers and client) or the agent's.
    "plugin_cli": ("kopf", "timesheet_backup.handlers", "timesheet_backup.actions",
                   "timesheet_backup.kube",
                   "timesheet_backup.agent"),
}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


def package_sources(root: Path = ROOT) -> dict[str, str]:
    return {module_name(p, root): p.read_text() for p in sorted(root.rglob("*.py"))}


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runs(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run (anywhere, functions included), except those
    under `if TYPE_CHECKING:`."""
    if isinstance(node, ast.If) and _type_checking(node.test):
        children: list[ast.AST] = list(node.orelse)
    else:
        children = list(ast.iter_child_nodes(node))
    for child in children:
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        yield from _runs(child)


def imports_of(module: str, source: str, modules: Mapping[str, str]) -> set[str]:
    """The modules `module` imports: each dotted name and the packages around it (importing
    a.b.c runs a and a.b too); `from p import n` is p.n when that is a module."""
    is_package = any(m.startswith(module + ".") for m in modules)
    found: set[str] = set()
    for node in _runs(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level
                                             + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            names = [base, *(f"{base}.{a.name}" for a in node.names
                             if f"{base}.{a.name}" in modules)]
        for name in names:
            parts = name.split(".")
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return found - {module}


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def forbidden_for(module: str) -> tuple[str, ...]:
    top = module.split(".")[1] if "." in module else "__init__"
    rules = [name for name, members in LAYERS.items() if top in members and name in RULES]
    return tuple(f for rule in [*rules, top] if rule in RULES for f in RULES[rule])


def violations(sources: Mapping[str, str]) -> list[str]:
    """Each forbidden import, with the chain of imports that reaches it, reported once: at
    the module nearest to it that the rule binds (importing a module that breaks the rules
    itself is that module's violation)."""
    graph = {m: imports_of(m, src, sources) for m, src in sources.items()}
    found: dict[tuple[str, ...], str] = {}
    for start in sorted(sources):
        forbidden = forbidden_for(start)
        # Breadth first through the package: the shortest chain to each module it runs.
        chains = {start: [start]}
        queue = [start]
        while queue:
            current = queue.pop(0)
            for target in sorted(graph.get(current, ())):
                bad = next((f for f in forbidden if under(target, f)), None)
                if bad is None:
                    if target in graph and target not in chains:
                        chains[target] = [*chains[current], target]
                        queue.append(target)
                elif not any(bad in forbidden_for(m) for m in chains[current][1:]):
                    # `from p.q import x` runs p and p.q: name the deepest.
                    key = (*chains[current], bad)
                    found[key] = max(found.get(key, ""), target, key=len)
    return sorted(f"{' -> '.join(key[:-1])} -> {target} (no {key[-1]} here)"
                  for key, target in found.items())


def test_every_module_is_in_a_layer() -> None:
    tops = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()
            if (p.suffix == ".py" or (p / "__init__.py").is_file())}
    placed = set().union(*LAYERS.values())
    assert tops - placed == set(), "place each new module in LAYERS"
    assert placed - tops == set(), "LAYERS names modules that do not exist"


def test_no_import_runs_against_the_layering() -> None:
    assert violations(package_sources()) == []


def test_the_check_sees_direct_lazy_relative_and_transitive_imports() -> None:
    """The rules catch what they should, in each form an import can take, and name each
    violation once, where it is."""
    sources = {
        "timesheet_backup": "",
        "timesheet_backup.kube": "",
        "timesheet_backup.crds_cli": "def apply():\n    import kubernetes\n",
        "timesheet_backup.jobs": "",
        "timesheet_backup.jobs.pod": "import kopf\n",
        "timesheet_backup.jobs.lazy": "def f():\n    from kubernetes import client\n",
        "timesheet_backup.jobs.relative": "from .. import kube\n",
        "timesheet_backup.jobs.through": "from timesheet_backup import crds_cli\n",
        "timesheet_backup.jobs.again": "from . import through\n",  # through's violation
        "timesheet_backup.jobs.typing_only": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import kopf\n"),
        "timesheet_backup.storage": "",
        "timesheet_backup.storage.s3": "from timesheet_backup.agent.errors import X\n",
        "timesheet_backup.agent": "",
        "timesheet_backup.agent.errors": "",
        "timesheet_backup.agent.cli": "import timesheet_backup.handlers.backups\n",
        "timesheet_backup.handlers": "",
        "timesheet_backup.handlers.backups": "from timesheet_backup.agent import errors\n",
        "timesheet_backup.actions": "",
        "timesheet_backup.actions.run": "from timesheet_backup.handlers import backups\n",
        "timesheet_backup.jobs.act": "from timesheet_backup.actions import run\n",
    }
    assert violations(sources) == [
        "timesheet_backup.actions.run -> timesheet_backup.handlers.backups "
        "(no timesheet_backup.handlers here)",
        "timesheet_backup.agent.cli -> timesheet_backup.handlers.backups "
        "(no timesheet_backup.handlers here)",
        "timesheet_backup.handlers.backups -> timesheet_backup.agent.errors "
        "(no timesheet_backup.agent here)",
        "timesheet_backup.jobs.act -> timesheet_backup.actions.run "
        "(no timesheet_backup.actions here)",
        "timesheet_backup.jobs.lazy -> kubernetes (no kubernetes here)",
        "timesheet_backup.jobs.pod -> kopf (no kopf here)",
        "timesheet_backup.jobs.relative -> timesheet_backup.kube (no timesheet_backup.kube here)",
        "timesheet_backup.jobs.through -> timesheet_backup.crds_cli -> kubernetes "
        "(no kubernetes here)",
        "timesheet_backup.storage.s3 -> timesheet_backup.agent.errors "
        "(no timesheet_backup.agent here)",
    ]
