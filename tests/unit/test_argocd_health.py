"""The Argo CD health scripts (argocd/resource_customizations/backup.northstar.io/<Kind>/)
run by a real Lua 5.1 interpreter (lupa) against every case of their health_test.yaml, as
Argo CD's own test harness does; the testdata are objects the e2e tests captured from the
operator (tests/e2e/test_argocd_health.py with TSB_CAPTURE_DIR). docs/gitops.md shows the
same scripts as argocd-cm keys, byte for byte."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.argocd import CUSTOMIZATIONS, GROUP, KINDS, health, load_yaml, script

pytestmark = pytest.mark.unit

GITOPS_DOC = CUSTOMIZATIONS.parents[2] / "docs" / "gitops.md"


def cases() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for kind in KINDS:
        tests = yaml.safe_load((CUSTOMIZATIONS / kind / "health_test.yaml").read_text())
        found += [(kind, case) for case in tests["tests"]]
    return found


def test_every_kind_has_a_script_and_tests() -> None:
    assert sorted(p.name for p in CUSTOMIZATIONS.iterdir() if p.is_dir()) == sorted(KINDS)
    for kind in KINDS:
        assert (CUSTOMIZATIONS / kind / "health.lua").is_file(), kind
        assert (CUSTOMIZATIONS / kind / "health_test.yaml").is_file(), kind


def test_every_testdata_file_is_used() -> None:
    for kind in KINDS:
        directory = CUSTOMIZATIONS / kind
        used = {(directory / c["inputPath"]).resolve() for k, c in cases() if k == kind}
        files = {p.resolve() for p in (directory / "testdata").glob("*.yaml")}
        assert files, f"{kind} has no testdata"
        assert files <= used, f"{kind}: testdata no test uses: {sorted(files - used)}"
        assert used <= files, f"{kind}: tests name missing files: {sorted(used - files)}"


def test_every_outcome_is_covered() -> None:
    statuses = {(kind, c["healthStatus"]["status"]) for kind, c in cases()}
    for kind in ("Backup", "Restore"):
        assert {(kind, s) for s in ("Progressing", "Healthy", "Degraded")} <= statuses
    assert {("BackupSchedule", s) for s in ("Progressing", "Healthy", "Degraded",
                                            "Suspended")} <= statuses


@pytest.mark.parametrize(("kind", "case"), cases(),
                         ids=[f"{k}-{Path(c['inputPath']).stem}" for k, c in cases()])
def test_health(kind: str, case: dict[str, Any]) -> None:
    obj = load_yaml(CUSTOMIZATIONS / kind / case["inputPath"])
    assert obj["kind"] == kind and obj["apiVersion"].startswith(f"{GROUP}/")
    assert health(kind, obj) == {"status": case["healthStatus"]["status"],
                                 "message": case["healthStatus"].get("message", "")}


def test_no_status_at_all() -> None:
    """What Argo CD sees right after it created the object."""
    for kind in KINDS:
        obj = {"apiVersion": f"{GROUP}/v1alpha1", "kind": kind,
               "metadata": {"name": "x", "generation": 1}, "spec": {}}
        assert health(kind, obj) == {"status": "Progressing",
                                     "message": "Waiting for the operator"}


def test_the_docs_show_the_same_scripts() -> None:
    """docs/gitops.md's argocd-cm block carries each health.lua verbatim."""
    text = GITOPS_DOC.read_text()
    blocks = [doc for block in re.findall(r"```yaml\n(.*?)```", text, re.S)
              for doc in yaml.safe_load_all(block)]
    config_maps = [b for b in blocks if isinstance(b, dict) and b.get("kind") == "ConfigMap"
                   and b["metadata"]["name"] == "argocd-cm"]
    assert len(config_maps) == 1
    data = config_maps[0]["data"]
    for kind in KINDS:
        assert data[f"resource.customizations.health.{GROUP}_{kind}"] == script(kind), kind
