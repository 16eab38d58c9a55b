"""Executable docs: what README.md and docs/ show must exist and work.

- every YAML block that is a Kubernetes object is accepted by the real API server
  (`kubectl apply --dry-run=server`; e2e cluster), and every manifest under examples/;
- every `timesheet-backup ...` and `kubectl timesheet-backup ...` (the kubectl plugin)
  command line shown runs its subcommand's `--help` and names only flags that subcommand has;
- every dotted field path named in backticks (`spec.database.host`, `job.podSecurityContext`,
  `status.jobIdentity`) exists in a CRD's schema; Helm values (`defaults.job.resources`) in
  the chart's values.yaml;
- every metric and alert named exists in the operator's /metrics and the chart's rules;
- every test a doc cites as proof (`tests/...py`, `tests/...py::test_name`) exists;
- docs/api.md is what `make crds` generates (also a unit test; here it is part of the docs).

Modeled on how the Kubernetes website tests its examples.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cluster import REPO_ROOT, Cluster, create_namespace, delete_namespace
from tests.support.operator import run_tool
from timesheet_backup import metrics
from timesheet_backup.api import docs as api_docs

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]
CRDS = sorted((REPO_ROOT / "crds").glob("*.yaml"))
VALUES = REPO_ROOT / "charts" / "timesheet-backup-operator" / "values.yaml"
CLI = [sys.executable, "-m", "timesheet_backup"]
PLUGIN = [sys.executable, "-m", "timesheet_backup.plugin_cli"]  # kubectl-timesheet_backup

# Kinds whose API the test cluster does not serve, with why they are not dry-run here.
NOT_SERVED = {
    ("argoproj.io/v1alpha1", "Application"): "Argo CD's CRDs are not installed in the test "
    "cluster; the health scripts' testdata are real objects (tests/unit/test_argocd_health.py)",
}


def rel(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def blocks(lang: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """(where, body) of each fenced code block in one of `lang`."""
    fence = re.compile(r"^```([a-z]*)\n(.*?)^```", re.S | re.M)
    for doc in DOCS:
        text = doc.read_text()
        for m in fence.finditer(text):
            if m.group(1) in lang:
                yield f"{rel(doc)}:{text[:m.start()].count(chr(10)) + 1}", m.group(2)


def yaml_objects() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for where, body in blocks(("yaml", "yml")):
        for obj in yaml.safe_load_all(body):
            if isinstance(obj, dict) and obj.get("apiVersion") and obj.get("kind"):
                found.append((where, obj))
    for path in sorted((REPO_ROOT / "examples").rglob("*.yaml")):
        for obj in yaml.safe_load_all(path.read_text()):
            if isinstance(obj, dict):
                found.append((rel(path), obj))
    return found


def test_every_yaml_block_parses() -> None:
    for where, body in blocks(("yaml", "yml")):
        try:
            list(yaml.safe_load_all(body))
        except yaml.YAMLError as exc:
            pytest.fail(f"{where}: not YAML: {exc}")


@pytest.fixture(scope="module")
def space(cluster: Cluster) -> Iterator[str]:
    """The CRDs applied, and one namespace every object is dry-run into."""
    run_tool(cluster, "kubectl", "apply", "--server-side", "--force-conflicts", "-f", "crds/")
    run_tool(cluster, "kubectl", "wait", "--for=condition=Established", "--timeout=60s",
             "crd/backups.backup.northstar.io", "crd/backupschedules.backup.northstar.io",
             "crd/restores.backup.northstar.io")
    name = create_namespace(cluster, "docs")
    yield name
    delete_namespace(cluster, name, force_pods=True)


@pytest.mark.parametrize(("where", "obj"), yaml_objects(),
                         ids=lambda v: v if isinstance(v, str) else v.get("kind", "?"))
def test_objects_are_accepted_by_the_api_server(cluster: Cluster, space: str, where: str,
                                                obj: dict[str, Any]) -> None:
    key = (obj["apiVersion"], obj["kind"])
    if key in NOT_SERVED:
        served = run_tool(cluster, "kubectl", "api-resources", "--api-group",
                          obj["apiVersion"].split("/")[0], "-o", "name")
        assert not served.stdout.strip(), f"{key} is served now: dry-run it ({where})"
        return
    obj = {**obj, "metadata": {k: v for k, v in (obj.get("metadata") or {}).items()
                               if k != "namespace"}}
    scope = [] if obj["kind"] == "Namespace" else ["-n", space]
    result = run_tool(cluster, "kubectl", "apply", "--dry-run=server", *scope, "-f", "-",
                      stdin=yaml.safe_dump(obj), check=False)
    assert result.returncode == 0, f"{where}: {obj['kind']} refused:\n{result.stderr}"


def test_the_not_served_table_is_used() -> None:
    used = {(o["apiVersion"], o["kind"]) for _, o in yaml_objects()}
    assert set(NOT_SERVED) <= used, "NOT_SERVED names kinds no doc shows any more"


# --- commands ---------------------------------------------------------------------------

COMMAND = re.compile(r"^\s*(?:\$\s*)?((?:kubectl\s+)?timesheet-backup)\s+(.*)$")


def command_lines() -> list[tuple[str, str]]:
    found = []
    for where, body in blocks(("sh", "bash", "console", "shell", "")):
        joined = re.sub(r"\\\n\s*", " ", body)
        for line in joined.splitlines():
            m = COMMAND.match(line)
            if m:
                command = " ".join(m.group(1).split())
                found.append((where, f"{command} " + m.group(2).split("#")[0].strip()))
    return found


def test_docs_show_commands() -> None:
    assert len(command_lines()) >= 5, "no timesheet-backup command found in the docs"


@pytest.mark.parametrize(("where", "line"), command_lines(), ids=lambda v: v[:60])
def test_shown_commands_exist_with_their_flags(where: str, line: str) -> None:
    plugin = line.startswith("kubectl timesheet-backup")
    words = line.split()[2 if plugin else 1:]
    program, cli = ("kubectl timesheet-backup", PLUGIN) if plugin else ("timesheet-backup", CLI)
    path = []
    for word in words:
        if word.startswith("-") or "=" in word or "/" in word or "$" in word:
            break
        path.append(word)
    help_run = subprocess.run([*cli, *path, "--help"], capture_output=True, text=True,
                              check=False)
    assert help_run.returncode == 0, f"{where}: `{program} {' '.join(path)}`: " \
        f"{help_run.stderr.strip()}"
    flags = {w.split("=")[0] for w in words if w.startswith("--")}
    missing = sorted(f for f in flags if f not in help_run.stdout)
    assert not missing, f"{where}: `{program} {' '.join(path)}` has no {missing}"


# --- fields, values, metrics, alerts ------------------------------------------------------

SECTIONS = ("spec", "status", "database", "uploads", "storage", "job", "retention",
            "verification", "quiesce", "hooks", "verify", "decryption", "source", "template",
            "encryption", "compression", "defaults")
FIELD = re.compile(r"`((?:" + "|".join(SECTIONS) + r")(?:\.[a-z][A-Za-z0-9]*)+)`")
# `database.dump`, `uploads.tar`, `status.py`: file names, not fields.
FILE_SUFFIXES = {"py", "tar", "dump", "sql", "zst", "gz", "age", "json", "yaml", "md", "dir"}


def crd_paths() -> set[tuple[str, ...]]:
    """Every property path of the three kinds' schemas (from each level down)."""
    paths: set[tuple[str, ...]] = set()

    def walk(schema: dict[str, Any], prefix: tuple[str, ...]) -> None:
        for name, sub in (schema.get("properties") or {}).items():
            path = (*prefix, name)
            for i in range(len(path)):
                paths.add(path[i:])
            walk(sub, path)
        if "items" in schema:
            walk(schema["items"], prefix)
        if isinstance(schema.get("additionalProperties"), dict):
            walk(schema["additionalProperties"], prefix)

    for crd in CRDS:
        for version in yaml.safe_load(crd.read_text())["spec"]["versions"]:
            walk(version["schema"]["openAPIV3Schema"], ())
    return paths


def value_paths(node: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    paths = {prefix} if prefix else set()
    if isinstance(node, dict):
        for key, sub in node.items():
            paths |= value_paths(sub, (*prefix, str(key)))
    return paths


def named_fields() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        if doc.name == "api.md":
            continue  # generated from the schema itself
        for m in FIELD.finditer(doc.read_text()):
            if not set(m.group(1).split(".")[1:]) & FILE_SUFFIXES:
                found.append((rel(doc), m.group(1)))
    return sorted(set(found))


def test_docs_name_fields() -> None:
    assert len(named_fields()) > 20


def test_every_named_field_exists() -> None:
    schema = crd_paths()
    values = value_paths(yaml.safe_load(VALUES.read_text()))
    # values.yaml documents some keys only in comments (e.g. defaults.database.host): the
    # schema of the defaults is the Backup spec's.
    missing = []
    for where, field in named_fields():
        parts = tuple(field.split("."))
        if parts[0] == "defaults":
            ok = parts in values or parts[1:] in schema
        else:
            ok = parts in schema or (parts[0] in ("spec", "status") and parts[1:] in schema)
        if not ok:
            missing.append(f"{where}: `{field}`")
    assert not missing, "fields named in the docs that no CRD (or values.yaml) has:\n" + \
        "\n".join(missing)


def metric_names() -> set[str]:
    names = set()
    for family in metrics.collect(metrics.Store()):
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
    return names


def test_every_named_metric_exists() -> None:
    known = metric_names()
    named = {m for doc in DOCS for m in re.findall(r"\btsb_[a-z_]+\b", doc.read_text())}
    assert named, "no metric named in the docs"
    assert named <= known, f"metrics named in the docs that /metrics lacks: {named - known}"


def test_every_named_alert_exists() -> None:
    rules = (REPO_ROOT / "charts" / "timesheet-backup-operator").rglob("*")
    defined = {m for p in rules if p.is_file()
               for m in re.findall(r"alert:\s*(Timesheet\w+)", p.read_text(errors="replace"))}
    named = {m for doc in DOCS for m in re.findall(r"\bTimesheet[A-Z]\w+", doc.read_text())}
    named -= {"TimesheetBackupOperator"}  # not an alert
    assert defined, "no alert rules found in the chart"
    assert named <= defined, f"alerts named in the docs that the chart lacks: {named - defined}"


# --- claims tied to tests -----------------------------------------------------------------

CITED = re.compile(r"(tests/[\w/]+\.py)(?:::(\w+))?")


def test_every_cited_test_exists() -> None:
    missing = []
    cited = 0
    for doc in DOCS:
        for m in CITED.finditer(doc.read_text()):
            cited += 1
            path = REPO_ROOT / m.group(1)
            if not path.is_file():
                missing.append(f"{rel(doc)}: {m.group(0)} (no such file)")
                continue
            if m.group(2):
                tree = ast.parse(path.read_text())
                names = {n.name for n in ast.walk(tree)
                         if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
                if m.group(2) not in names:
                    missing.append(f"{rel(doc)}: {m.group(0)} (no such test)")
    assert cited > 10, "the docs cite hardly any test"
    assert not missing, "docs cite tests that do not exist:\n" + "\n".join(missing)


# Guarantees the docs state; the paragraph (or table row) that states one must cite the test
# that proves it, and test_every_cited_test_exists keeps that test there.
GUARANTEES = {
    "the newest good/successful backup is never pruned":
        r"newest (?:good|successful) backup is never pruned",
    "the operator survives SIGKILL": r"survives a crash of the operator",
    "an agent killed mid-upload leaves nothing": r"killed mid-upload",
}


def paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n\s*\n|\n(?=\|)", text) if p.strip()]


@pytest.mark.parametrize("name", sorted(GUARANTEES))
def test_stated_guarantees_cite_their_tests(name: str) -> None:
    stated = uncited = 0
    for doc in DOCS:
        if doc.name == "api.md":
            continue
        for paragraph in paragraphs(doc.read_text()):
            if re.search(GUARANTEES[name], paragraph):
                stated += 1
                if not CITED.search(paragraph):
                    uncited += 1
                    print(f"{rel(doc)}: {paragraph[:200]!r}")
    assert stated, f"no doc states {name!r} any more: drop it from GUARANTEES"
    assert not uncited, f"{uncited} place(s) state {name!r} without citing a test"


def test_api_reference_is_generated() -> None:
    assert (REPO_ROOT / "docs" / "api.md").read_text() == api_docs.render(), \
        "docs/api.md is stale: run `make crds`"


def test_the_checks_can_fail() -> None:
    """A made-up flag, subcommand and field are caught (the checks are not vacuous)."""
    with pytest.raises(AssertionError, match="has no"):
        test_shown_commands_exist_with_their_flags("x", "timesheet-backup agent backup --nope")
    with pytest.raises(AssertionError):
        test_shown_commands_exist_with_their_flags("x", "timesheet-backup agent frobnicate")
    with pytest.raises(AssertionError, match="has no"):
        test_shown_commands_exist_with_their_flags(
            "x", "kubectl timesheet-backup restore latest --schedule s --tables t")
    with pytest.raises(AssertionError):
        test_shown_commands_exist_with_their_flags("x", "kubectl timesheet-backup frobnicate")
    assert ("database", "hostname") not in crd_paths() and ("database", "host") in crd_paths()
